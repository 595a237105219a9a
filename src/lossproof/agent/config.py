"""The agent's typed configuration, loaded from a TOML file (``lossproof agent --config agent.toml``).

A bad file is a :class:`~lossproof.config.ConfigError` whose message is one line naming the file and
the key, e.g. ``agent.toml: max_in_flight: Input should be greater than or equal to 1``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lossproof.agent.backoff import MAX_RETRY_AFTER
from lossproof.config import ConfigError, PathSetting
from lossproof.urls import check_base_url

MiB = 2**20
GiB = 2**30
TiB = 2**40
HOUR = 3600.0
DAY = 24 * HOUR
YEAR = 365 * DAY

# Every duration and size has a floor and a ceiling (docs/agent.md, "Configuration"): a value far
# outside them is a typo, never a setting, and the agent must not spin on it (an interval of 1e-300 s)
# or wait on it forever (a drain of 1e308 s). NaN and ±inf are refused by allow_inf_nan=False.

# The shortest interval: a host collection takes ~1 ms and each report two fsyncs (segment and seq
# counter); at 10 ms the agent uses ~10% of a core, below it would do little but collect and fsync.
MIN_INTERVAL = 0.01
# Backoff and probes below 10 ms / 100 ms would retry or probe a failing server in a tight loop.
MIN_BACKOFF = 0.01
MIN_PROBE = 0.1
# A request waits for the server's fsync before its 200: a timeout below 0.1 s fails healthy requests.
MIN_REQUEST_TIMEOUT = 0.1
# Bytes read or built in memory (a request body, a batch) vs kept on disk (spools, the replay window).
MAX_MEMORY_BYTES = 1 * GiB
MAX_DISK_BYTES = 1 * TiB


def _check_url(url: str) -> str:
    return check_base_url(url)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class RelayConfig(BaseModel):
    """``[relay]``: the agent as a local endpoint for OTLP, remote write and Influx clients
    (docs/agent.md, "Relay")."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # "127.0.0.1:4318"; empty: no relay. Port 0 picks a free port (logged in agent.started).
    listen: str = ""
    # Local clients need no key unless one is set here (the agent's own api_key is used upstream).
    api_key: str | None = Field(default=None, min_length=1)
    api_key_env: str | None = Field(default=None, min_length=1)
    # Local senders (protocol + User-Agent product) with a spool and sender of their own; past it,
    # new ones share "<protocol>/other".
    max_senders: int = Field(default=16, ge=1, le=256)
    # Pending bytes per local sender's spool; past it the relay answers 503 (the client retries).
    max_spool_bytes: int = Field(default=256 * MiB, ge=4096, le=MAX_DISK_BYTES)
    # A body is held in memory while it is read and decoded.
    max_body_bytes: int = Field(default=16 * MiB, ge=1024, le=MAX_MEMORY_BYTES)
    max_decoded_bytes: int = Field(default=64 * MiB, ge=1024, le=MAX_MEMORY_BYTES)
    body_idle_seconds: float = Field(default=30.0, gt=0, le=HOUR)
    body_read_max_seconds: float = Field(default=300.0, gt=0, le=HOUR)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        v = v.strip()
        if not v:
            return ""
        host, sep, port = v.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"{v!r}: expected host:port, e.g. 127.0.0.1:4318 (port 0 picks one)")
        return v

    @model_validator(mode="after")
    def _key_source(self) -> RelayConfig:
        if self.api_key is not None and self.api_key_env is not None:
            # no "relay: " here: the message is located at relay already ("agent.toml: relay: ...")
            raise ValueError("set at most one of api_key and api_key_env")
        if self.listen and not _is_loopback(self.host) and self.api_key is None and self.api_key_env is None:
            raise ValueError(f"listen {self.listen!r} is not a loopback address: set api_key or api_key_env")
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    def key(self, env: Mapping[str, str] | None = None) -> str | None:
        """The key local clients must present, or None when they need none."""
        if self.api_key is not None:
            return self.api_key
        if self.api_key_env is None:
            return None
        value = (os.environ if env is None else env).get(self.api_key_env, "")
        if not value:
            raise ConfigError(f"relay.api_key_env: environment variable {self.api_key_env} is not set")
        return value


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    agent_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=256)
    # The key itself, or the name of an environment variable holding it (keeps secrets out of files).
    api_key: str | None = Field(default=None, min_length=1)
    api_key_env: str | None = Field(default=None, min_length=1)
    primary_url: str
    fallback_urls: list[str] = Field(default_factory=list)
    spool_dir: Annotated[Path, PathSetting] = Path("lossproof-agent-spool")

    interval_seconds: float = Field(default=10.0, ge=MIN_INTERVAL, le=HOUR)
    # Upper bound on a single report; a busier interval is cut into several reports.
    max_points_per_report: int = Field(default=10_000, ge=1, le=1_000_000)

    # Unacknowledged data kept on disk; beyond it the oldest unacked reports are dropped (and reported).
    max_spool_bytes: int = Field(default=256 * MiB, ge=4096, le=MAX_DISK_BYTES)
    # Acknowledged reports stay this long / this much for replays the server asks for.
    replay_window_seconds: float = Field(default=6 * HOUR, ge=0, le=YEAR)
    replay_window_bytes: int = Field(default=1 * GiB, ge=0, le=MAX_DISK_BYTES)
    # Files are deleted whole: a huge one would hold its acknowledged reports long past the window.
    spool_segment_bytes: int = Field(default=8 * MiB, ge=4096, le=1 * GiB)

    # A batch is built in memory (max_in_flight of them at once).
    max_batch_bytes: int = Field(default=4 * MiB, ge=1024, le=MAX_MEMORY_BYTES)
    max_batch_reports: int = Field(default=500, ge=1)
    max_in_flight: int = Field(default=2, ge=1, le=64)
    compression: Literal["zstd", "gzip", "identity"] = "zstd"
    request_timeout_seconds: float = Field(default=30.0, ge=MIN_REQUEST_TIMEOUT, le=HOUR)
    # The server's Retry-After is capped at MAX_RETRY_AFTER (1 h); the agent's own backoff too.
    backoff_initial_seconds: float = Field(default=0.5, ge=MIN_BACKOFF, le=MAX_RETRY_AFTER)
    backoff_max_seconds: float = Field(default=30.0, ge=MIN_BACKOFF, le=MAX_RETRY_AFTER)

    fallback_after_seconds: float = Field(default=30.0, ge=0, le=YEAR)
    probe_interval_seconds: float = Field(default=10.0, ge=MIN_PROBE, le=DAY)

    statsd_port: int = Field(default=8125, ge=0, le=65535)
    metrics_port: int = Field(default=9431, ge=0, le=65535)
    labels: dict[str, str] = Field(default_factory=lambda: {"host": socket.gethostname()})
    collect_host: bool = True
    # How long `stop()` keeps sending what is pending before it exits (it stays in the spool anyway).
    # Bounded so a stop always ends (systemd's default stop timeout is 90 s; the rest stays spooled).
    shutdown_drain_seconds: float = Field(default=5.0, ge=0, le=HOUR)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    relay: RelayConfig = Field(default_factory=RelayConfig)

    _primary = field_validator("primary_url")(_check_url)

    @field_validator("fallback_urls")
    @classmethod
    def _fallbacks(cls, v: list[str]) -> list[str]:
        return [_check_url(u) for u in v]

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 32:
            raise ValueError("at most 32 agent labels (a point may carry 64 in all)")
        for k, val in v.items():
            if not k or len(k) > 1024 or len(val) > 4096:
                raise ValueError(f"label {k!r}: name must be 1-1024 characters, value at most 4096")
        return v

    @model_validator(mode="after")
    def _key_source(self) -> AgentConfig:
        if (self.api_key is None) == (self.api_key_env is None):
            raise ValueError("set exactly one of api_key and api_key_env")
        # a local sender's agent id is "<agent_id>/<protocol>/<product>" (64 characters at most)
        if self.relay.listen and len(self.agent_id) > 180:
            raise ValueError("agent_id: at most 180 characters with a [relay] (its senders' ids add to it)")
        return self

    @model_validator(mode="after")
    def _backoff_order(self) -> AgentConfig:
        # The cap wins over an initial delay above it (min(max, initial * 2^n)): taken as the cap, as
        # it always was, rather than refused, so that a file that worked before still starts the
        # agent (an agent that does not start sends nothing of what it holds).
        self.backoff_initial_seconds = min(self.backoff_initial_seconds, self.backoff_max_seconds)
        return self

    def key(self, env: Mapping[str, str] | None = None) -> str:
        """The API key, from the file or the environment variable it names."""
        if self.api_key is not None:
            return self.api_key
        env = os.environ if env is None else env
        assert self.api_key_env is not None
        value = env.get(self.api_key_env, "")
        if not value:
            raise ConfigError(f"api_key_env: environment variable {self.api_key_env} is not set")
        return value


def _describe(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    msg = msg.removeprefix("Value error, ")
    # whole-file checks (e.g. "set exactly one of api_key and api_key_env") name their keys themselves
    return f"{source}: {where}: {msg}" if where else f"{source}: {msg}"


def load_config(path: Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Load and validate an agent config file; relative ``spool_dir`` is relative to the file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    try:
        cfg = AgentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e, str(path))) from None
    if not cfg.spool_dir.is_absolute():
        cfg.spool_dir = path.parent / cfg.spool_dir
    try:
        cfg.key(env)  # a missing key is a config error now, not a 401 loop later
        cfg.relay.key(env)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg
