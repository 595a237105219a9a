"""Which failures to connect at start-up the worker waits out (StoreUnavailable) and which are a
setup problem (StoreError): libpq gives the server's refusal as its FATAL message, no SQLSTATE."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from lossproof.store.base import StoreUnavailable
from lossproof.store.pg.common import connect_error

DSN = "postgresql://lossproof@127.0.0.1:5432/lossproof"
AT = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: '


@pytest.mark.parametrize(
    "why",
    [
        "Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?",
        "timeout expired",
        "FATAL:  the database system is starting up",
        "FATAL:  the database system is in recovery mode",
        "FATAL:  sorry, too many clients already",
        'FATAL:  too many connections for role "lossproof"',
        "could not translate host name \"db\" to address: Temporary failure in name resolution",
        "server closed the connection unexpectedly",
    ],
)
def test_waiting_helps(why: str) -> None:
    err = connect_error(DSN, psycopg.OperationalError(AT + why))
    assert isinstance(err, StoreUnavailable)
    assert "failed:" not in str(err) and why.split("\n")[0].replace("FATAL:  ", "") in str(err)


@pytest.mark.parametrize(
    "why",
    [
        'FATAL:  password authentication failed for user "lossproof"',
        'FATAL:  database "nope" does not exist',
        'FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "lossproof"',
        # libpq's own refusals, no FATAL: (the reviewer's list)
        "fe_sendauth: no password supplied",
        "server does not support SSL, but SSL was required",
        'invalid sslmode value: "foo"',
        "could not translate host name \"nope\" to address: Name or service not known",
    ],
)
def test_a_setup_problem_is_not_waited_for(why: str) -> None:
    err = connect_error(DSN, psycopg.OperationalError(AT + why))
    assert not isinstance(err, StoreUnavailable)
    assert "cannot connect to PostgreSQL" in str(err)


@pytest.mark.parametrize(
    ("section", "env", "least"),
    [
        ("kafka", {"log": {"backend": "kafka", "kafka": {"session_timeout_seconds": 30}}}, "90"),
        ("kafka join", {"log": {"backend": "kafka", "kafka": {"session_timeout_seconds": 1}}}, "50"),
        ("postgres", {"store": {"backend": "postgres", "dsn": "postgresql://h/db"}}, "30"),
    ],
)
def test_the_liveness_timeout_outlasts_the_longest_wait(
    section: str, env: dict[str, Any], least: str
) -> None:
    from lossproof.config import Config

    # the start-up deadline too: a worker may wait as long before its first beat
    for name, other in (
        ("liveness_timeout_seconds", "startup_timeout_seconds"),
        ("startup_timeout_seconds", "liveness_timeout_seconds"),
    ):
        with pytest.raises(ValueError, match=f"{name} = .* at least .*{least}"):
            Config.model_validate({**env, "server": {name: float(least) - 1, other: 0}})
        Config.model_validate({**env, "server": {name: float(least), other: 0}})
        Config.model_validate({**env, "server": {name: 0, other: 0}})


@pytest.mark.parametrize("liveness", [0.0, 400.0])
def test_a_config_valid_before_the_start_up_deadline_still_loads(liveness: float) -> None:
    from lossproof.config import Config

    # 3 x 120 s of Kafka waits: liveness off, or at 400 s, was valid; the deadline's default is not
    # the user's choice and must not make it invalid (found by review)
    cfg = Config.model_validate(
        {
            "log": {"backend": "kafka", "kafka": {"session_timeout_seconds": 120}},
            "server": {"liveness_timeout_seconds": liveness},
        }
    )
    # unset: as long as the longest wait, and off where the user turned the liveness kills off
    assert cfg.startup_timeout() == (0.0 if liveness == 0 else 360.0)


def test_the_start_up_deadline_unset_set_and_off() -> None:
    from lossproof.config import STARTUP_TIMEOUT_S, Config

    assert Config().startup_timeout() == STARTUP_TIMEOUT_S
    assert Config.model_validate({"server": {"startup_timeout_seconds": 8}}).startup_timeout() == 8
    assert Config.model_validate({"server": {"startup_timeout_seconds": 0}}).startup_timeout() == 0
    # set explicitly, it applies even with liveness off
    off = {"liveness_timeout_seconds": 0, "startup_timeout_seconds": 20}
    assert Config.model_validate({"server": off}).startup_timeout() == 20
