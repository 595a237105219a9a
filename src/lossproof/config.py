"""One typed configuration, loaded from ``DIR/lossproof.toml`` plus ``LOSSPROOF_*`` environment variables.

Every component gets the :class:`Config` object passed down explicitly; nothing reads globals.
Environment variables override the file: ``LOSSPROOF_<SECTION>_<FIELD>`` (e.g.
``LOSSPROOF_SERVER_PORT=9000``), and ``LOSSPROOF_API_KEY`` sets the default tenant's key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import tomllib
import typing
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lossproof.durable import make_dirs, write_atomic
from lossproof.urls import check_base_url

CONFIG_NAME = "lossproof.toml"
MiB = 2**20


# How long a PostgreSQL write waits for a lock before it fails and is retried (store/pg/core.py).
PG_WRITE_LOCK_TIMEOUT_S = 10
# The Kafka reader's waits between two of the worker's beats (log/kafka/reader.py): joining the
# consumer group, and one request to the brokers.
KAFKA_JOIN_WAIT_S = 30.0
KAFKA_REQUEST_WAIT_S = 10.0
# server.startup_timeout_seconds when unset (Config.startup_timeout): long enough for a cold start
# (a large log's recovery and a store upgrade beat as they go).
STARTUP_TIMEOUT_S = 300.0


class ConfigError(Exception):
    """A configuration problem, with a one-line message naming the key and the file."""


# Durations are bounded so every derived value (milliseconds, deadlines) stays a sane int64.
MAX_SECONDS = 10 * 365 * 86400


def check_path(value: object) -> object:
    """A path setting as written in the file: refused here, naming the setting, rather than as a
    ``ValueError`` from the first ``open``/``mkdir`` (the OS takes no NUL byte in a path), and never
    empty (``Path("")`` is ``.``: the data would silently go into the config's own directory)."""
    if isinstance(value, str | PurePath):
        text = str(value) if isinstance(value, PurePath) else value
        if "\x00" in text:
            raise ValueError(f"{text!r} contains a NUL byte: not a usable path")
        if not text.strip():
            raise ValueError("must not be empty (use '.' for the directory itself)")
    return value  # anything else: the field's type refuses it with its own message


# A str or Path setting that names a file or directory (checked by check_path before its type).
PathSetting = BeforeValidator(check_path)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ServerConfig(_Section):
    """``[server]``: the HTTP process (ingest API, query API, dashboard, ``/metrics``)."""

    host: str = Field(default="127.0.0.1", min_length=1, max_length=253, description="Address to listen on.")
    port: int = Field(default=8080, ge=0, le=65535, description="HTTP port (0: any free port).")
    # Checked against Content-Length before reading.
    max_body_bytes: int = Field(
        default=16 * MiB,
        ge=1024,
        description="Compressed request body limit: larger is a 413 before it is read.",
    )
    # So a zip bomb is refused after at most this much work.
    max_decoded_bytes: int = Field(
        default=64 * MiB, ge=1024, description="Body limit after decompression (a zip bomb stops here)."
    )
    append_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=MAX_SECONDS,
        description="How long a request may wait for the log's durable confirmation before a 503.",
    )
    retry_after_seconds: int = Field(
        default=1,
        ge=1,
        le=3600,
        description="Retry-After of a 503/429 (native protocol; third-party protocols: docs/protocols.md).",
    )
    # A stalled client must not hold a connection (and its buffers) forever. Nothing was
    # acknowledged, so the client still owns the data.
    body_idle_seconds: float = Field(
        default=30.0,
        gt=0,
        le=MAX_SECONDS,
        description="A body that stalls this long without a byte gets a 408 and the connection closed "
        "(every body: ingest, and the Prometheus API's form POSTs).",
    )
    body_read_max_seconds: float = Field(
        default=300.0,
        gt=0,
        le=MAX_SECONDS,
        description="... and so does one that takes longer than this in all.",
    )
    # A client trickling header lines must not hold a socket and a handler forever.
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=MAX_SECONDS,
        description="A request's headers must arrive within this of its first byte (or of the connection "
        "opening); else the connection is closed. The worker's /metrics and /healthz server too (of its "
        "opening).",
    )
    keepalive_timeout_seconds: float = Field(
        default=75.0, gt=0, le=MAX_SECONDS, description="An idle keep-alive connection is closed after this."
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        description="Open connections in all; one more gets 503 + Retry-After and is closed.",
    )
    max_connections_per_ip: int = Field(default=256, ge=1, description="... and from one address.")
    # The kernel spreads connections over them (SO_REUSEPORT).
    ingest_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="`lossproof up` starts this many ingest processes, all on `port`. The embedded log "
        "needs log.partitions >= this (one writer per partition); on Kafka they share the topic.",
    )
    liveness_timeout_seconds: float = Field(
        default=60.0,
        ge=0,
        le=MAX_SECONDS,
        description="`lossproof up` kills (SIGKILL) and restarts a child whose work loop has not beaten "
        "for this long: stuck, not dead (0: a child that has started is restarted only when it exits). "
        "Ingest does not beat while appends have waited this long on a log that answers none of them "
        "(an fsync that never returns). At least the longest wait of the log and store in use (Kafka: "
        "50 s and 3 x its session timeout; PostgreSQL: 20 s plus store.connect_timeout_seconds).",
    )
    # A start-up step that can legitimately take long (a store upgrade, a log recovery) beats as it
    # makes progress, so the default need not cover the worst case, only one step and the imports.
    startup_timeout_seconds: float | None = Field(
        default=None,
        ge=0,
        le=MAX_SECONDS,
        description="`lossproof up` kills (SIGKILL) and restarts a child that has not beaten for the first "
        "time this long after it started: hung while starting (blocked opening its log or store, on a "
        "lock, a hung mount). A long start-up step (a store upgrade, a log recovery) beats as it goes. "
        "0: a starting child is never judged. Unset: 300 s, or the longest wait of the log and store in "
        "use if longer (as for liveness_timeout_seconds), and off when liveness_timeout_seconds is 0. "
        "Set, it must be 0 or at least those waits.",
    )
    max_series_per_tenant: int = Field(
        default=0,
        ge=0,
        description="The most series a tenant may have (0: no limit; tenants.NAME.max_series overrides "
        "it): a request that would add more is refused with 400 (docs/store.md, Cardinality).",
    )
    series_limit_refresh_seconds: float = Field(
        default=10.0,
        gt=0,
        le=MAX_SECONDS,
        description="How often ingest reads the series stored since, for the series limit.",
    )

    @field_validator("host")
    @classmethod
    def _host(cls, host: str) -> str:
        try:
            host.encode("idna")
        except UnicodeError:
            raise ValueError(f"{host!r} is not a host name or IP address") from None
        return host


class KafkaLogConfig(_Section):
    """``[log.kafka]``: the Kafka backend (see docs/kafka.md)."""

    bootstrap_servers: str = Field(default="127.0.0.1:19092", description="Kafka brokers, host:port,...")
    topic: str = Field(
        default="lossproof-reports", pattern=r"^[A-Za-z0-9._-]{1,200}$", description="The topic."
    )
    partitions: int = Field(
        default=6, ge=1, description="Used by `lossproof kafka init` when it creates the topic."
    )
    replication_factor: int = Field(
        default=3, ge=1, description="Created with, and checked by the writer at start."
    )
    min_insync_replicas: int = Field(
        default=2, ge=1, description="Created with, and checked by the writer at start."
    )
    # Acknowledged then means less.
    unsafe: bool = Field(
        default=False,
        description="Accept a topic weaker than RF 3 / min.insync.replicas 2 / no unclean election / "
        "no time- or size-based deletion (e.g. a 1-node dev cluster).",
    )
    # So a request gets the delivery report's verdict, never just a timeout.
    delivery_timeout_seconds: float = Field(
        default=0.0,
        ge=0,
        le=MAX_SECONDS,
        description="How long the producer may try to deliver a record; below server.append_timeout_seconds "
        "(0: 80% of it).",
    )
    max_message_bytes: int = Field(
        default=20 * MiB, ge=1024, description="Largest record the producer sends."
    )
    session_timeout_seconds: float = Field(
        default=10.0,
        ge=1,
        le=MAX_SECONDS,
        description="Consumer group session: how soon a dead worker's partitions move to another worker.",
    )
    # Each check asks the brokers for every group's committed offsets: not a thing to do in a loop.
    retention_check_seconds: float = Field(
        default=60.0,
        ge=1,
        le=MAX_SECONDS,
        description="How often the writer deletes records every lossproof consumer group has committed past.",
    )
    # Settings lossproof's guarantees rest on are refused (see log/kafka/common.py).
    client: dict[str, str] = Field(
        default_factory=dict,
        description="Passed to librdkafka (producer, consumer, admin): security.protocol, sasl.*, ssl.*, "
        "linger.ms, ... Settings the guarantees rest on (acks, enable.idempotence, auto commit, offset "
        "reset, ...) are refused.",
    )


class LogConfig(_Section):
    """``[log]``: the durable log every acknowledged request is in."""

    backend: Literal["embedded", "kafka"] = Field(
        default="embedded",
        description="`embedded` (segment files here) or `kafka` ([log.kafka], docs/kafka.md).",
    )
    dir: Annotated[str, PathSetting] = Field(
        default="log", description="embedded: the log directory (relative: in the data dir)."
    )
    segment_bytes: int = Field(default=64 * MiB, ge=4096, description="embedded: size of a segment file.")
    retention_seconds: float = Field(
        default=3600.0,
        ge=0,
        le=MAX_SECONDS,
        description="embedded: segments are deleted only once consumed AND older than this.",
    )
    # One writer per partition; worker processes share the partitions (see docs/log.md).
    partitions: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="embedded: partitions of the log directory = how many ingest processes can write it "
        "at once.",
    )
    kafka: KafkaLogConfig = Field(default_factory=KafkaLogConfig)


class StoreConfig(_Section):
    """``[store]``: where points and the ledger are stored (docs/store.md, docs/postgres.md)."""

    backend: Literal["embedded", "postgres"] = Field(
        default="embedded", description="`embedded` (SQLite in the data dir) or `postgres` (needs `dsn`)."
    )
    path: Annotated[str, PathSetting] = Field(
        default="store.db", description="embedded: the SQLite file (WAL, synchronous=FULL)."
    )
    dsn: str = Field(
        default="",
        description="postgres: a libpq connection string or URI, e.g. "
        '"postgresql://lossproof:secret@db.example:5432/lossproof" (or LOSSPROOF_STORE_DSN).',
    )
    pg_schema: str = Field(
        default="lossproof",
        min_length=1,
        max_length=63,
        description="postgres: the schema lossproof's tables are in.",
    )
    pool_size: int = Field(default=4, ge=1, le=100, description="postgres: connections per process.")
    retention_days: float = Field(
        default=0.0,
        ge=0,
        le=MAX_SECONDS / 86400,
        description="postgres: points older than this many days are deleted (whole chunks); "
        "0 keeps everything.",
    )
    connect_timeout_seconds: float = Field(
        default=10.0, gt=0, le=MAX_SECONDS, description="postgres: how long a connection attempt may take."
    )
    compact_interval_seconds: float = Field(
        default=2.0,
        ge=0,
        le=MAX_SECONDS,
        description="How often each worker packs the store's small chunks; 0 turns it off (docs/store.md).",
    )
    scrub_interval_seconds: float = Field(
        default=86400.0,
        ge=0,
        le=MAX_SECONDS,
        description="Each worker's compactor checks every stored chunk and part again (checksum and "
        "structure, as `lossproof store check`) and sets the damaged ones aside, starting a pass this "
        "long after the last one began, the first one 10 minutes after it starts; when it has no "
        "compaction to do, at most ~0.1 s of checking a round. 0 turns it off (docs/store.md, "
        "\"A damaged chunk\"). Needs compaction on (compact_interval_seconds > 0).",
    )

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> StoreConfig:
        if self.backend == "postgres" and not self.dsn.strip():
            raise ValueError("store.dsn (or LOSSPROOF_STORE_DSN) is required with backend = 'postgres'")
        return self


class WorkerConfig(_Section):
    """``[worker]``: log → store. What bounds a worker's memory per batch is in worker/loop.py."""

    batch_records: int = Field(default=512, ge=1, description="Log records per store transaction, at most.")
    batch_wait_seconds: float = Field(
        default=0.05, ge=0, le=MAX_SECONDS, description="How long a batch waits for more records."
    )
    batch_bytes: int = Field(
        default=16 * MiB,
        ge=1024,
        description="Records gathered per batch, as they are in the log (compressed).",
    )
    # A big request is decoded a part at a time and may span several store transactions (a native
    # report never does: it is stored whole with its ledger update).
    batch_points: int = Field(
        default=131_072, ge=1, description="A store transaction is written once it holds this many points ..."
    )
    batch_decoded_bytes: int = Field(
        default=16 * MiB,
        ge=1024,
        description="... or this many decoded bytes: the worker's memory per batch.",
    )
    http_host: str = Field(default="127.0.0.1", description="Address of the worker's /metrics and /healthz.")
    http_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of /metrics and /healthz; 0 picks a free one (written to DIR/run/worker.addr "
        "for `up`).",
    )


class LedgerConfig(_Section):
    """``[ledger]``: per-agent accounting of reports."""

    # So reports that are merely reordered in flight are not requested twice.
    replay_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        le=MAX_SECONDS,
        description="A hole must have been seen this long before agents are asked to replay it.",
    )


class KeyHolder(_Section):
    key_hashes: list[str] = Field(
        default_factory=list, description="SHA-256 hashes of the keys (`lossproof keys create`; never a key)."
    )
    # Keys from before this field have none.
    key_created: dict[str, str] = Field(
        default_factory=dict,
        description="When each key was added (key hash -> ISO 8601 UTC), for `keys list`.",
    )

    def add_key(self, key_hash: str, created: str) -> None:
        self.key_hashes.append(key_hash)
        self.key_created[key_hash] = created

    def remove_key(self, key_hash: str) -> None:
        self.key_hashes = [h for h in self.key_hashes if h != key_hash]
        self.key_created.pop(key_hash, None)


class TenantConfig(KeyHolder):
    """``[tenants.NAME]``: a tenant's API keys (read and write its own data only)."""

    max_series: int | None = Field(
        default=None,
        ge=0,
        description="This tenant's series limit (0: none); unset: server.max_series_per_tenant.",
    )


class ReplayConfig(KeyHolder):
    """``[replay]``: service keys that write on behalf of any tenant (header X-Lossproof-Tenant), used by
    `lossproof replay` to drain a fallback receiver. They cannot read."""


class OperatorConfig(KeyHolder):
    """``[operator]``: keys that see all of /metrics (per-tenant and per-agent series) and the dashboard's
    pipeline-wide numbers. They cannot write or read any tenant's data."""


class HealthConfig(_Section):
    """``[health]``: what the dashboard's pipeline health page scrapes besides the pipeline itself."""

    # Like Prometheus static targets.
    fallback_urls: list[str] = Field(
        default_factory=list,
        description="Base URLs of the fallback receivers (`lossproof fallback`), e.g. "
        '["http://10.0.0.5:8081"]: their <url>/metrics is scraped for the backlog.',
    )

    @field_validator("fallback_urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        return [check_base_url(u) for u in urls]


class QueryConfig(_Section):
    """``[query]``: what one PromQL query may cost (``/api/v1/query``, ``/api/v1/query_range``), and
    whose window boundaries it has. Past a limit the query ends with a 422 naming it, never an
    out-of-memory or a stuck read thread."""

    max_samples: int = Field(
        default=50_000_000,
        ge=1,
        description="Points one query may read from the store plus the points its subqueries make, "
        "and, apart, the points of its answer (Prometheus' query.max-samples).",
    )
    max_values: int = Field(
        default=100_000_000,
        ge=1,
        description="Values (series x steps, 9 bytes each) one array of a query's evaluation may hold, "
        "present or not, checked before the array is made: what bounds a query's memory where "
        "max_samples, which counts points, cannot (a subquery with a tiny step, count_values).",
    )
    max_series: int = Field(default=500_000, ge=1, description="Series one selector may read.")
    # checked cooperatively: a numpy call in progress is not interrupted, max_samples bounds it
    timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        le=MAX_SECONDS,
        description="How long one query may evaluate (Prometheus' query.timeout): checked between the "
        "steps of the evaluation, inside its long loops and after each store read; 422 with errorType "
        "timeout.",
    )
    # For alert rules and dashboards written against 2.x: a sample exactly on a window's start
    # counts there, so their thresholds see the values they were tuned on.
    windows: Literal["prometheus3", "prometheus2"] = Field(
        default="prometheus3",
        description="Window boundaries: `prometheus3` (a range [d] at T is (T-d, T], the lookback "
        "(T-5m, T], a subquery's first step after T-range) or `prometheus2` (closed: [T-d, T], "
        "[T-5m, T], a subquery's first step at or after T-range, and 2.x's extrapolation of rate, "
        "increase and delta), as docs/dashboard.md describes.",
    )


class Config(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    operator: OperatorConfig = Field(default_factory=OperatorConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    query: QueryConfig = Field(default_factory=QueryConfig)

    # Not in the file: where it was loaded from.
    data_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _a_partition_per_ingest_process(self) -> Config:
        n = self.server.ingest_processes
        if self.log.backend == "embedded" and n > self.log.partitions:
            raise ValueError(
                f"server.ingest_processes = {n} needs log.partitions >= {n} with the embedded log "
                "(one ingest process writes each partition)"
            )
        return self

    @model_validator(mode="after")
    def _liveness_outlasts_a_wait(self) -> Config:
        """A worker that waits as long as it may on the brokers or the database between two beats,
        or before its first (the same waits: a group join, a lock), must not be killed as stuck
        (docs/reliability.md: the table of waits). The start-up deadline is checked only when set:
        unset, it is made long enough (:meth:`startup_timeout`)."""
        live = self.server.liveness_timeout_seconds
        startup = self.server.startup_timeout_seconds
        for least, what in self._waits():
            for name, value in (("liveness_timeout_seconds", live), ("startup_timeout_seconds", startup)):
                if value is not None and 0 < value < least:
                    raise ValueError(
                        f"server.{name} = {value:g} must be 0 or at least {what}: a "
                        "worker waiting that long would be killed as stuck"
                    )
        return self

    def _waits(self) -> list[tuple[float, str]]:
        """The longest a worker of this log and store may wait between two beats, and what for."""
        waits: list[tuple[float, str]] = []
        if self.log.backend == "kafka":
            # a commit waits up to the session timeout with no broker answering; joining the group
            # up to KAFKA_JOIN_WAIT_S, then one request (KAFKA_REQUEST_WAIT_S) before the next beat
            session = self.log.kafka.session_timeout_seconds
            waits.append((3 * session, f"3 x log.kafka.session_timeout_seconds ({3 * session:g})"))
            join = KAFKA_JOIN_WAIT_S + 2 * KAFKA_REQUEST_WAIT_S
            waits.append((join, f"a Kafka group join and its first requests ({join:g} s)"))
        if self.store.backend == "postgres":
            lock = 2 * PG_WRITE_LOCK_TIMEOUT_S + self.store.connect_timeout_seconds
            waits.append((lock, f"a PostgreSQL lock wait, twice, and a connect ({lock:g} s)"))
        return waits

    def startup_timeout(self) -> float:
        """``server.startup_timeout_seconds`` as ``up`` applies it (0: off): unset, it is
        :data:`STARTUP_TIMEOUT_S` or the longest wait if longer, and off with liveness off (a config
        that turned kills off before the deadline existed keeps them off)."""
        set_to = self.server.startup_timeout_seconds
        if set_to is not None:
            return set_to
        if self.server.liveness_timeout_seconds == 0:
            return 0.0
        return max([STARTUP_TIMEOUT_S] + [least for least, _ in self._waits()])

    def path(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.data_dir / p

    @property
    def log_dir(self) -> Path:
        return self.path(self.log.dir)

    @property
    def store_path(self) -> Path:
        return self.path(self.store.path)

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    def series_limit(self, tenant: str) -> int:
        """The most series ``tenant`` may have; 0 for no limit."""
        t = self.tenants.get(tenant)
        if t is not None and t.max_series is not None:
            return t.max_series
        return self.server.max_series_per_tenant

    def tenant_for_key(self, key: str) -> str | None:
        h = hash_key(key)
        for name, t in self.tenants.items():
            if any(secrets.compare_digest(h, k) for k in t.key_hashes):
                return name
        return None

    def key_index(self) -> dict[str, str]:
        """key hash -> tenant, for O(1) lookups on the hot path."""
        return {h: name for name, t in self.tenants.items() for h in t.key_hashes}


def hash_key(key: str) -> str:
    # API keys are 256-bit random tokens, so a plain SHA-256 is enough (no password stretching).
    # surrogatepass: a header that is not UTF-8 arrives with lone surrogates; it hashes to
    # something no key matches (a 401), never an encoding error.
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> str:
    return "lp_" + secrets.token_urlsafe(32)


def key_id(key_hash: str) -> str:
    """A short, stable name for a stored key: the start of its hash (which is in the file anyway),
    never anything of the secret itself."""
    return key_hash.removeprefix("sha256:")[:12]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _env_overrides(
    env: Mapping[str, str], model: type[BaseModel] = Config, prefix: str = "LOSSPROOF"
) -> dict[str, Any]:
    """``LOSSPROOF_<SECTION>_<FIELD>`` (and ``LOSSPROOF_LOG_KAFKA_<FIELD>`` for nested tables).

    A list field takes a JSON list (``["a", "b"]``) or comma-separated values (``a,b``; empty: ``[]``).
    """
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        ann = info.annotation
        var = f"{prefix}_{name}".upper()
        if isinstance(ann, type) and issubclass(ann, _Section):
            nested = _env_overrides(env, ann, var)
            if nested:
                out[name] = nested
        elif model is not Config and var in env:
            out[name] = _env_list(var, env[var]) if typing.get_origin(ann) is list else env[var]
    return out


def _env_list(var: str, value: str) -> list[Any]:
    if value.strip().startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError as e:
            raise ConfigError(f"{var}: not a JSON list: {e}") from None
        if not isinstance(parsed, list):
            raise ConfigError(f"{var}: not a JSON list")
        return parsed
    return [v.strip() for v in value.split(",") if v.strip()]


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def _describe(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    # a validator's own message says what is wrong; pydantic's "Value error, " adds nothing
    msg = first["msg"].removeprefix("Value error, ")
    return f"{source}: {where}: {msg}" if where else f"{source}: {msg}"


def load(data_dir: Path, env: Mapping[str, str] | None = None) -> Config:
    """Load ``data_dir/lossproof.toml`` (which must exist) with environment overrides applied."""
    env = os.environ if env is None else env
    path = data_dir / CONFIG_NAME
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        msg = f"{path}: not found (run `lossproof up --data-dir {data_dir}` once to create it)"
        raise ConfigError(msg) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from e
    raw = _merge(raw, _env_overrides(env))
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e, str(path))) from e
    cfg.data_dir = data_dir
    env_key = env.get("LOSSPROOF_API_KEY")
    if env_key:
        default = cfg.tenants.setdefault("default", TenantConfig())
        if hash_key(env_key) not in default.key_hashes:
            default.key_hashes.append(hash_key(env_key))
    return cfg


def save(cfg: Config) -> None:
    """Write the config back atomically (used when creating it and by `keys create`); writers that
    read it first hold :func:`editing`."""
    path = cfg.data_dir / CONFIG_NAME
    text = "# lossproof configuration. Keys are stored as SHA-256 hashes only.\n"
    # TOML has no null: an unset optional (None) is left out, and reads back as its default
    text += tomli_w.dumps(cfg.model_dump(mode="json", exclude={"data_dir"}, exclude_none=True))
    write_atomic(path, text.encode(), tmp=path.with_name(f"{CONFIG_NAME}.{os.getpid()}.tmp"))


@contextlib.contextmanager
def editing(data_dir: Path) -> Iterator[Config]:
    """The config as in the file (no environment overrides), saved on exit; concurrent editors (two
    `keys create` at once) wait for each other, so neither's change is lost."""
    load(data_dir, env={})  # a missing or bad config is refused before anything is created
    fd = os.open(data_dir / f"{CONFIG_NAME}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        cfg = load(data_dir, env={})  # again: another editor may have saved while we waited
        yield cfg
        save(cfg)
    finally:
        os.close(fd)


def planned(data_dir: Path, env: Mapping[str, str] | None = None) -> Config:
    """The config ``up`` will run with, without creating anything: the file's if there is one,
    else the defaults (with environment overrides), so the port can be checked first."""
    if (data_dir / CONFIG_NAME).exists():
        return load(data_dir, env)
    env = os.environ if env is None else env
    try:
        cfg = Config.model_validate(_env_overrides(env))
    except ValidationError as e:
        raise ConfigError(_describe(e, "environment")) from e
    cfg.data_dir = data_dir
    return cfg


def init_data_dir(data_dir: Path, api_key: str | None, port: int | None = None) -> tuple[Config, str | None]:
    """Create the data dir and its config on first start. Returns the config and a new key, if any."""
    make_dirs(data_dir)
    if (data_dir / CONFIG_NAME).exists():
        return load(data_dir), None
    key = api_key or new_key()
    default = TenantConfig()
    default.add_key(hash_key(key), now_iso())
    cfg = Config(tenants={"default": default})
    if port is not None:
        cfg.server.port = port
    cfg.data_dir = data_dir
    save(cfg)
    # Only report a key we generated; a key the user gave is theirs already.
    return load(data_dir), (None if api_key else key)
