"""The ``lossproof`` command. Errors are one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from lossproof import aio
from lossproof import config as config_mod
from lossproof.cliutil import finite_float
from lossproof.config import Config, ConfigError

F = TypeVar("F", bound=Callable[..., Any])


def data_dir_option(f: F) -> F:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("lossproof-data"),
        show_default=True,
        envvar="LOSSPROOF_DATA_DIR",
        help="Directory holding lossproof.toml, the log and the store.",
    )(f)


def log_format_option(f: F) -> F:
    return click.option(
        "--log-format",
        type=click.Choice(["auto", "json", "text"]),
        default="auto",
        show_default=True,
        envvar="LOSSPROOF_LOG_FORMAT",
        help="Log lines on stderr: readable text at a terminal, JSON otherwise (auto), or as given.",
    )(f)


def _load(data_dir: Path) -> Config:
    try:
        return config_mod.load(data_dir)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


class LazyGroup(click.Group):
    """Subcommands that live with their component are imported only when used, so that
    ``lossproof send`` does not pay for loading the Kafka client (click's documented pattern)."""

    LAZY = {
        "agent": "lossproof.agent.main:agent_command",
        "fallback": "lossproof.fallback.main:fallback_command",
        "replay": "lossproof.fallback.main:replay_command",
        "store": "lossproof.cli:store_commands",
        "kafka": "lossproof.log.kafka.cli:kafka_group",
        "dev": "lossproof.dev.kafka:dev_group",
        "chaos": "lossproof.chaos.cli:chaos_group",
        "audit": "lossproof.chaos.cli:audit_command",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY:
            import importlib

            module, attr = self.LAZY[cmd_name].split(":")
            cmd = getattr(importlib.import_module(module), attr)
            if not isinstance(cmd, click.Command):
                cmd = cmd()  # a function that assembles the command
            assert isinstance(cmd, click.Command)
            return cmd
        return super().get_command(ctx, cmd_name)


def store_commands() -> click.Group:
    """``lossproof store``: the store's commands, and ``store bench`` (benchmarks live in bench/)."""
    from lossproof.bench.store import bench_cmd
    from lossproof.store.cli import store_group

    if "bench" not in store_group.commands:
        store_group.add_command(bench_cmd, "bench")
    return store_group


@click.group(cls=LazyGroup)
@click.version_option(package_name="lossproof")
def cli() -> None:
    """lossproof: a telemetry pipeline that never loses a point, and proves it."""


@cli.command()
@data_dir_option
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="HTTP port (default from config, 8080)."
)
@click.option("--api-key", envvar="LOSSPROOF_API_KEY", default=None, help="Key for the default tenant.")
@log_format_option
def up(data_dir: Path, port: int | None, api_key: str | None, log_format: str) -> None:
    """Run the whole pipeline (ingest + query API, log, worker, store) on embedded defaults."""
    from lossproof import up as up_mod
    from lossproof.obs import logging as logs

    fmt = logs.resolve(log_format)
    os.environ[logs.ENV] = fmt  # the children write to the same stream: the same format
    logs.setup("up", fmt=fmt)
    # Everything that can refuse the start is checked before anything is created, so a failed first
    # start leaves no config whose generated key nobody saw.
    try:
        cfg = config_mod.planned(data_dir)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    if port is not None:
        cfg.server.port = port
    if cfg.server.port == 0 and cfg.server.ingest_processes > 1:
        raise click.ClickException("server.ingest_processes > 1 needs a fixed port (they share it), not 0")
    try:
        up_mod.check_port_free(cfg.server.host, cfg.server.port)
    except up_mod.PortInUse as e:
        raise click.ClickException(str(e)) from None
    try:
        cfg, new_key = config_mod.init_data_dir(data_dir, api_key, port)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    if port is not None:
        cfg.server.port = port
    if new_key:
        click.echo(f"created {data_dir / config_mod.CONFIG_NAME}; API key for tenant 'default': {new_key}")
        click.echo("(stored hashed; not shown again — `lossproof keys rotate --tenant default` replaces it)")
    banner = up_mod.Banner(data_dir, new_key) if sys.stdout.isatty() and fmt == "text" else None
    sys.exit(up_mod.run(cfg, data_dir, banner))


@cli.command()
@data_dir_option
@click.option("--port", type=click.IntRange(0, 65535), default=None)
@click.option("--host", default=None)
@log_format_option
def ingest(data_dir: Path, port: int | None, host: str | None, log_format: str) -> None:
    """Run the ingest + query HTTP API alone."""
    run_ingest(data_dir, port, host, log_format)


def run_ingest(
    data_dir: Path, port: int | None, host: str | None, log_format: str, wrap_writer: Any = None
) -> None:
    """``lossproof ingest``; ``wrap_writer`` wraps the log writer (a chaos harness hands one in)."""
    from lossproof.log.base import LogError
    from lossproof.obs.logging import setup
    from lossproof.server import serve
    from lossproof.store.base import StoreError

    setup("ingest", fmt=log_format)
    cfg = _load(data_dir)
    if port is not None:
        cfg.server.port = port
    if host is not None:
        cfg.server.host = host
    try:
        aio.run(serve(cfg, wrap_writer))
    except LogError as e:
        raise click.ClickException(f"log: {e}") from None
    except StoreError as e:
        raise click.ClickException(f"store: {e}") from None
    except OSError as e:
        raise click.ClickException(f"cannot serve on {cfg.server.host}:{cfg.server.port}: {e}") from None


@cli.command()
@data_dir_option
@click.option(
    "--http-port", type=click.IntRange(0, 65535), default=None, help="Port of /metrics and /healthz."
)
@log_format_option
def worker(data_dir: Path, http_port: int | None, log_format: str) -> None:
    """Run a worker alone: log → store."""
    from lossproof.log.base import LogError
    from lossproof.obs.logging import setup
    from lossproof.store.base import StoreError
    from lossproof.worker.main import run

    setup("worker", fmt=log_format)
    os.environ["LOSSPROOF_LOG_FORMAT"] = log_format  # its compactor process logs as it does
    cfg = _load(data_dir)
    if http_port is not None:
        cfg.worker.http_port = http_port
    try:
        run(cfg)
    except LogError as e:
        raise click.ClickException(f"log: {e}") from None
    except StoreError as e:
        raise click.ClickException(f"store: {e}") from None


@cli.command(hidden=True)
@data_dir_option
@click.option("--parent-pid", type=click.IntRange(1), required=True, help="The worker's pid.")
@log_format_option
def compactor(data_dir: Path, parent_pid: int, log_format: str) -> None:
    """The worker's compactor process (the worker starts it): store compaction, each step a JSON
    line on stdout for the worker's metrics. Its store settings come on stdin's first line, as JSON
    (the worker's own ``[store]`` section); the lines after it say when the worker is behind."""
    from pydantic import ValidationError

    from lossproof.config import StoreConfig
    from lossproof.obs.logging import setup
    from lossproof.worker.compactor import WorkerLines, run_process

    setup("compactor", fmt=log_format)
    lines = WorkerLines(sys.stdin.fileno())
    try:
        store = StoreConfig.model_validate_json(lines.readline())
    except ValidationError as e:
        raise click.ClickException(f"store settings on stdin: {e.errors()[0]['msg']}") from None
    run_process(Config(store=store, data_dir=data_dir), parent_pid, lines)


@cli.command()
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, envvar="LOSSPROOF_URL")
@click.option("--api-key", envvar="LOSSPROOF_API_KEY", required=True, help="API key (or LOSSPROOF_API_KEY).")
@click.option("--agent", default=f"send-{socket.gethostname()}", show_default=True)
@click.option("--points-per-report", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option(
    "--encoding", type=click.Choice(["identity", "gzip", "zstd"]), default="zstd", show_default=True
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path.home() / ".local/state/lossproof",
    show_default=True,
    help="Where the agent's last used seq is kept, so seqs never repeat.",
)
@click.option(
    "--attempts",
    type=click.IntRange(1, 100),
    default=8,
    show_default=True,
    help="Tries per report (backoff 0.2 s doubling to 10 s) before it is given up and reported as lost.",
)
@click.option(
    "--wait-stored",
    is_flag=True,
    help="After the acknowledgement (durable in the log), wait until the worker has stored the points "
    "(queryable), up to --wait-timeout.",
)
@click.option("--wait-timeout", type=finite_float(0.1, 3600), default=30.0, show_default=True)
@click.argument("file", type=click.File("r", encoding="utf-8"), default="-")
def send(
    url: str,
    api_key: str,
    agent: str,
    points_per_report: int,
    encoding: str,
    state_dir: Path,
    attempts: int,
    wait_stored: bool,
    wait_timeout: float,
    file: Any,
) -> None:
    """Post points, one JSON object a line ({"metric","labels","t","v"}), from FILE or stdin."""
    import urllib3

    from lossproof import send as snd

    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=60))
    sent = reports = 0
    acked: dict[str, list[int]] = {}  # seqs acknowledged, per incarnation

    def progress(msg: str) -> None:
        click.echo(msg, err=True)

    try:
        url = snd.check_url(url)
        snd.check_agent(agent)
        for group in snd.chunks(snd.parse_lines(file), points_per_report):
            res = snd.reserve_seqs(state_dir, agent, 1)
            seq, dropped, incarnation = res.seq, res.dropped, (res.incarnation, res.first_seq)
            for conflicts in range(3):
                body = snd.request_body(agent, seq, group, dropped, incarnation, snd.report_time(group))
                try:
                    snd.post(http, url, api_key, body, encoding, attempts=attempts, progress=progress)
                    break
                except snd.SeqConflict as e:
                    if conflicts == 2:
                        snd.give_up(state_dir, agent, seq, seq, f"lossproof send gave up: {e}")
                        raise
                    # the seq is stored with other content (a copied or reused state): a new
                    # incarnation from this seq on, and the same report again
                    incarnation = snd.new_incarnation(state_dir, agent, incarnation[0], seq)
                    click.echo(f"warning: {e}; sending again as a new incarnation {incarnation[0]}", err=True)
                except snd.SendError as e:
                    # the next run tells the server this seq was given up on, and why
                    snd.give_up(state_dir, agent, seq, seq, f"lossproof send gave up: {e}")
                    raise
            snd.reported(state_dir, agent, dropped)
            sent += len(group)
            reports += 1
            acked.setdefault(incarnation[0], []).append(seq)
            if sys.stderr.isatty() and reports % 10 == 0:
                click.echo(f"\r{sent} points acknowledged", nl=False, err=True)
        if wait_stored:
            for inc, seqs in acked.items():
                snd.wait_stored(http, url, api_key, agent, inc, seqs, wait_timeout, progress)
    except snd.SendError as e:
        raise click.ClickException(f"{e} ({sent} points acknowledged before this)") from None
    stored = " and stored" if wait_stored else ""
    click.echo(f"{sent} points in {reports} reports acknowledged durable{stored} by {url}")


@cli.group()
def keys() -> None:
    """Manage tenant API keys."""


def _key_owner(tenant: str | None, replay: bool, operator: bool) -> None:
    import re

    if [tenant is not None, replay, operator].count(True) != 1:
        raise click.ClickException("give exactly one of --tenant NAME, --replay or --operator")
    if tenant is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", tenant):
        raise click.ClickException("tenant must be 1-64 characters of letters, digits, '_', '.', '-'")


def key_owner_options(f: F) -> F:
    f = click.option(
        "--operator", is_flag=True, help="An operator key: all of /metrics and the pipeline's health."
    )(f)
    f = click.option("--replay", is_flag=True, help="A replay key: writes for any tenant, reads nothing.")(f)
    return click.option("--tenant", default=None, help="The tenant the key belongs to.")(f)


# Running pipelines reload keys when lossproof.toml changes (and on SIGHUP): no restart needed.
RELOADED = "the running pipeline uses it at once"


@keys.command("create")
@data_dir_option
@key_owner_options
def keys_create(data_dir: Path, tenant: str | None, replay: bool, operator: bool) -> None:
    """Add a key (a new tenant is created). Prints the key once; only its hash is stored."""
    from lossproof import keys as keys_mod

    _key_owner(tenant, replay, operator)
    try:
        # As in the file, without environment overrides: they must not be written into it.
        with config_mod.editing(data_dir) as cfg:
            key = keys_mod.add(keys_mod.holder_for(cfg, tenant, replay, operator, create=True))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    click.echo(key)
    kind = "operator" if operator else "replay"
    what = f"key added for tenant {tenant!r}" if tenant is not None else f"{kind} key added"
    click.echo(f"{what}; {RELOADED}", err=True)


@keys.command("rotate")
@data_dir_option
@key_owner_options
@click.option(
    "--id", "old_id", default=None, help="The key to replace (from `keys list`); needed if there are several."
)
def keys_rotate(data_dir: Path, tenant: str | None, replay: bool, operator: bool, old_id: str | None) -> None:
    """Replace a key by a new one: prints the new key once; the old one stops working."""
    from lossproof import keys as keys_mod

    _key_owner(tenant, replay, operator)
    try:
        with config_mod.editing(data_dir) as cfg:
            holder = keys_mod.holder_for(cfg, tenant, replay, operator, create=False)
            key, old = keys_mod.rotate(holder, old_id)
    except (ConfigError, keys_mod.KeyAdminError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(key)
    click.echo(f"key {old} replaced by {config_mod.key_id(config_mod.hash_key(key))}; {RELOADED}", err=True)


@keys.command("list")
@data_dir_option
def keys_list(data_dir: Path) -> None:
    """The stored keys: id, kind, tenant, created (never the key: only its hash is stored)."""
    from lossproof import keys as keys_mod

    try:
        cfg = config_mod.load(data_dir, env={})  # the file's keys, not LOSSPROOF_API_KEY
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    rows = [("ID", "KIND", "TENANT", "CREATED")]
    rows += [(k.id, k.kind, k.tenant or "-", k.created or "unknown") for k in keys_mod.list_keys(cfg)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        click.echo("  ".join([*(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)), r[3]]))


class BenchGroup(LazyGroup):
    LAZY = {
        "kafka": "lossproof.bench.kafka:kafka_bench_cmd",
        "logs": "lossproof.bench.logs:logs_cmd",
        "replay": "lossproof.bench.replay:main",
        "agent": "lossproof.bench.agent:run_command",
        "relay": "lossproof.bench.relay:relay_cmd",
        "store": "lossproof.bench.store:bench_cmd",
        "dashboard": "lossproof.bench.dashboard:dashboard_bench_cmd",
        "fuzz": "lossproof.bench.fuzz:fuzz_cmd",
        "cardinality": "lossproof.bench.cardinality:cardinality_cmd",
        "compare": "lossproof.bench.compare:compare_cmd",
        "promql": "lossproof.bench.promql:promql_bench_cmd",
    }


@cli.group(cls=BenchGroup)
def bench() -> None:
    """Benchmarks that print numbers (the machine's load is printed with them)."""


@bench.command("ingest")
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, envvar="LOSSPROOF_URL")
@click.option("--api-key", envvar="LOSSPROOF_API_KEY", default=None, help="Required unless --spawn.")
@click.option("--agents", type=click.IntRange(1, 10_000), default=64, show_default=True)
@click.option("--points-per-report", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--duration", type=finite_float(1, 3600), default=20, show_default=True)
@click.option(
    "--encoding", type=click.Choice(["identity", "gzip", "zstd"]), default="zstd", show_default=True
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The pipeline's data dir: the disk speed is measured there (default: a temp dir).",
)
@click.option("--spawn", is_flag=True, help="Start a fresh `lossproof up` in a temp dir and benchmark it.")
@click.option(
    "--protocol",
    type=click.Choice(["native", "prom-rw", "otlp", "influx"]),
    default="native",
    show_default=True,
    help="Endpoint to drive; third-party protocols use --agents clients of --points-per-report samples.",
)
@click.option(
    "--log",
    "log_backend",
    type=click.Choice(["embedded", "kafka"]),
    default="embedded",
    show_default=True,
    help="kafka: also measure the raw librdkafka producer with the pipeline's settings (from --data-dir).",
)
def bench_ingest(
    url: str,
    api_key: str | None,
    agents: int,
    points_per_report: int,
    duration: float,
    encoding: str,
    data_dir: Path | None,
    spawn: bool,
    protocol: str,
    log_backend: str,
) -> None:
    """Acked points/s, ack latency, worker points/s, end-to-end delay, vs the disk's own speed."""
    import tempfile

    from lossproof.bench.ingest import BenchFailed, run_bench, run_protocol_bench
    from lossproof.bench.spawn import check_pipeline, process_memory, spawned_pipeline

    # Every argument is checked before anything runs.
    kafka_cfg = None
    if log_backend == "kafka":
        if protocol != "native":
            raise click.ClickException("--log kafka measures the native endpoint: drop --protocol")
        if data_dir is None:
            raise click.ClickException(
                "--log kafka needs --data-dir of the pipeline (for its Kafka settings)"
            )
        kafka_cfg = _load(data_dir).log.kafka
    if not spawn:
        url = check_pipeline(url, api_key)

    def progress(msg: str) -> None:
        click.echo(f"  {msg}", err=True)

    def go(url: str, key: str, disk_dir: Path) -> list[str]:
        if protocol != "native":
            return run_protocol_bench(url, key, protocol, agents, points_per_report, duration, progress)
        lines = run_bench(url, key, agents, points_per_report, duration, encoding, disk_dir, progress)
        if kafka_cfg is not None:
            lines += _kafka_ratio(kafka_cfg, agents, duration, progress)
        return lines

    with tempfile.TemporaryDirectory(prefix="lossproof-bench-") as tmp:
        try:
            if spawn:
                pids: list[int] = []
                with spawned_pipeline(Path(tmp) / "data", pids=pids) as (url, api_key):
                    lines = go(url, api_key, Path(tmp) / "data")
                    lines += process_memory(pids[0])
            else:
                assert api_key is not None
                try:
                    lines = go(url, api_key, data_dir or Path(tmp))
                    lines.append("peak RSS: with --spawn only (the pipeline's processes are not ours)")
                except OSError as e:
                    raise click.ClickException(f"cannot reach the pipeline at {url}: {e}") from None
        except BenchFailed as e:
            raise click.ClickException(str(e)) from None
    from lossproof.bench.load import load_line

    for line in [*lines, load_line()]:
        click.echo(line)


def _kafka_ratio(
    cfg: config_mod.KafkaLogConfig, agents: int, duration: float, progress: Callable[[str], None]
) -> list[str]:
    """The raw librdkafka producer with the pipeline's own Kafka settings, beside the ingest numbers."""
    from lossproof.bench.ingest import LAST_RUN
    from lossproof.bench.kafka import quiet_librdkafka, raw_producer

    record_bytes = max(1, int(LAST_RUN.get("bytes_per_request", 50_000)))
    progress(f"raw librdkafka producer, {agents} in flight, {record_bytes} B records …")
    with quiet_librdkafka():
        raw = raw_producer(cfg, record_bytes=record_bytes, seconds=duration, concurrency=agents)
    ingest_rps = LAST_RUN.get("requests_per_s", 0.0)
    ratio = ingest_rps / raw.records_per_s if raw.records_per_s else float("nan")
    return [raw.line(), f"ingest acked requests/s vs raw producer records/s: {ratio:.2f} (target >= 0.8)"]


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
    except (OSError, UnicodeError) as e:
        # The environment refused something (a path, a permission, a name): one line, as for any
        # other bad input. LOSSPROOF_DEBUG=1 shows where.
        if os.environ.get("LOSSPROOF_DEBUG"):
            raise
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
