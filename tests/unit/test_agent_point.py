"""The agent refuses a point the ingest would refuse, when it is recorded: never a whole report later."""

from __future__ import annotations

import pytest

from lossproof.agent.report import make_point
from lossproof.protocol import native


def test_a_time_in_seconds_is_refused_when_recorded() -> None:
    with pytest.raises(ValueError, match="in seconds"):
        make_point("m", 1.0, None, 1_767_225_600, {})
    assert make_point("m", 1.0, None, native.MIN_POINT_TIME_MS, {}).t == native.MIN_POINT_TIME_MS
