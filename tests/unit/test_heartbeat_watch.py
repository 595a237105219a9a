"""`up`'s side of the heartbeat (lossproof.heartbeat.Watch): the liveness timeout judges a child that
has beaten, the start-up deadline one that never has."""

from __future__ import annotations

import os
import time

import pytest

from lossproof.heartbeat import Silence, Watch


@pytest.fixture
def watch_factory():  # type: ignore[no-untyped-def]
    made: list[Watch] = []

    def make(timeout: float, startup: float) -> tuple[Watch, int]:
        w = Watch(timeout, startup)
        made.append(w)
        return w, w.renew()

    yield make
    for w in made:
        w.close()


def test_a_child_that_never_beats_is_judged_by_the_startup_deadline(watch_factory) -> None:  # type: ignore[no-untyped-def]
    w, fd = watch_factory(60, 0.3)
    assert w.stuck() is None
    time.sleep(0.4)
    silence = w.stuck()
    assert isinstance(silence, Silence) and silence.starting and silence.seconds >= 0.3
    os.close(fd)


def test_a_child_that_beat_once_is_judged_by_the_liveness_timeout_only(watch_factory) -> None:  # type: ignore[no-untyped-def]
    w, fd = watch_factory(0.5, 0.2)
    os.write(fd, b".")
    time.sleep(0.3)
    assert w.stuck() is None and w.beating  # past the start-up deadline, but it started
    time.sleep(0.6)
    silence = w.stuck()
    assert silence is not None and not silence.starting
    os.close(fd)


def test_either_timeout_at_zero_is_off(watch_factory) -> None:  # type: ignore[no-untyped-def]
    starting, fd1 = watch_factory(0.1, 0)
    started, fd2 = watch_factory(0, 0.1)
    os.write(fd2, b".")
    started.stuck()
    time.sleep(0.3)
    assert starting.stuck() is None and started.stuck() is None
    os.close(fd1)
    os.close(fd2)


def test_up_paused_restarts_the_startup_deadline(watch_factory) -> None:  # type: ignore[no-untyped-def]
    w, fd = watch_factory(60, 0.3)
    time.sleep(0.4)
    w.excuse()
    assert w.stuck() is None
    os.close(fd)
