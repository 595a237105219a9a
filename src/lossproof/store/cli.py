"""``lossproof store ...``: schema migrations, retention and a store benchmark.

Registered in ``lossproof.cli`` with ``cli.add_command(store_group)``. Errors are one line on stderr
and a non-zero exit, like every other command.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

import click

from lossproof import config as config_mod
from lossproof.config import Config, ConfigError
from lossproof.store.base import StoreError


def _load(data_dir: Path) -> Config:
    try:
        return config_mod.load(data_dir)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


_data_dir = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("lossproof-data"),
    show_default=True,
    envvar="LOSSPROOF_DATA_DIR",
    help="Directory holding lossproof.toml.",
)


@click.group("store")
def store_group() -> None:
    """Manage the store (schema migrations, retention, benchmark)."""


@store_group.command("migrate")
@_data_dir
def migrate_cmd(data_dir: Path) -> None:
    """Bring the store's schema to the version this lossproof needs (idempotent)."""
    cfg = _load(data_dir)
    if cfg.store.backend != "postgres":
        from lossproof.store.sqlite import SqliteStore

        try:
            SqliteStore(cfg.store_path).close()  # creates or checks the file
        except StoreError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"embedded store {cfg.store_path}: up to date (it migrates itself when opened)")
        return
    from lossproof.store import postgres as pg

    try:
        before, after = pg.migrate(cfg.store.dsn, cfg.store.pg_schema, cfg.store.connect_timeout_seconds)
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    where = f'PostgreSQL {pg.describe_dsn(cfg.store.dsn)} schema "{cfg.store.pg_schema}"'
    if before == after:
        click.echo(f"{where}: already at version {after}")
    else:
        click.echo(f"{where}: migrated from version {before} to {after}")


@store_group.command("maintain")
@_data_dir
def maintain_cmd(data_dir: Path) -> None:
    """Delete the points past store.retention_days (whole chunks whose newest point is older);
    workers also do this every few minutes."""
    cfg = _load(data_dir)
    if cfg.store.backend != "postgres":
        raise click.ClickException("store maintain is for store.backend = 'postgres'")
    from lossproof.store.factory import open_store
    from lossproof.store.postgres import PostgresStore

    try:
        store = open_store(cfg)
        assert isinstance(store, PostgresStore)
        try:
            done = store.maintain()
        finally:
            store.close()
    except StoreError as e:
        raise click.ClickException(str(e)) from None
    if done.before_ms is None:
        click.echo("retention: off (store.retention_days = 0), nothing deleted")
        return
    before = datetime.fromtimestamp(done.before_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    click.echo(f"retention: deleted {done.points} points in {done.chunks} chunks older than {before}")


def _writer_counts(writers: str) -> list[int]:
    counts = []
    for w in writers.split(","):
        try:
            n = int(w.strip())
        except ValueError:
            n = 0
        if not 1 <= n <= 64:
            raise click.ClickException(
                f"--writers {writers!r}: expected writer process counts 1-64, comma-separated (e.g. 1,2)"
            )
        counts.append(n)
    return counts


@store_group.command("bench")
@click.option("--dsn", envvar="LOSSPROOF_STORE_DSN", default=None, help="PostgreSQL to measure (optional).")
@click.option("--points", type=click.IntRange(10_000), default=2_000_000, show_default=True)
@click.option("--points-per-report", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--agents", type=click.IntRange(1), default=32, show_default=True, help="Per writer.")
@click.option("--writers", default="1,2", show_default=True, help="Writer process counts to run.")
@click.option(
    "--series-per-agent",
    type=click.IntRange(1),
    default=None,
    help="Series each agent's reports cover (default: --points-per-report, one point per series per"
    " report; fewer gives each series several points per batch).",
)
def bench_cmd(
    dsn: str | None,
    points: int,
    points_per_report: int,
    agents: int,
    writers: str,
    series_per_agent: int | None,
) -> None:
    """Store write throughput: the embedded store, and PostgreSQL with 1 and 2 writer processes.

    Each writer writes --points / writers points in batches of --agents x --points-per-report; its
    first batch (creating its series) is not timed, so each needs at least two batches.
    Each PostgreSQL run writes into a fresh schema, dropped afterwards."""
    from lossproof.bench.store import BenchError, bench_store_processes

    counts = _writer_counts(writers)
    batch = agents * points_per_report
    if points // max(counts) < 2 * batch:
        raise click.ClickException(
            f"--points {points} over {max(counts)} writer(s) is {points // max(counts)} points each, less "
            f"than two batches of {batch} (--agents {agents} x --points-per-report {points_per_report}); "
            f"the first batch is not timed: give --points >= {2 * batch * max(counts)} or smaller batches"
        )
    if dsn:
        _check_dsn(dsn)
    lines = []
    try:
        with tempfile.TemporaryDirectory(prefix="lossproof-bench-") as tmp:
            for n in counts:
                r = bench_store_processes(
                    ("sqlite", str(Path(tmp) / f"s{n}.db")),
                    n,
                    points,
                    points_per_report,
                    agents,
                    series_per_agent=series_per_agent,
                )
                lines.append({"store": "embedded", **r})
                click.echo(json.dumps(lines[-1]), err=True)
        if dsn:
            for n in counts:
                schema = "bench_" + uuid.uuid4().hex[:8]
                try:
                    r = bench_store_processes(
                        ("postgres", dsn, schema),
                        n,
                        points,
                        points_per_report,
                        agents,
                        series_per_agent=series_per_agent,
                    )
                finally:
                    _drop_schema(dsn, schema)
                lines.append({"store": "postgres", **r})
                click.echo(json.dumps(lines[-1]), err=True)
    except BenchError as e:
        raise click.ClickException(f"store bench: {e}") from None
    click.echo(f"{'store':10} {'writers':>7} {'points':>10} {'seconds':>8} {'points/s':>10}")
    for r in lines:
        click.echo(
            f"{r['store']:10} {r['writers']:>7} {r['points']:>10} {r['seconds']:>8} {r['points_per_s']:>10}"
        )
    from lossproof.bench.load import load_line

    click.echo(load_line())
    if not all(r["points"] for r in lines):
        raise click.ClickException("store bench: a run stored no timed points")


def _check_dsn(dsn: str) -> None:
    """A one-line error unless PostgreSQL at ``dsn`` accepts a connection (before anything runs)."""
    import psycopg

    from lossproof.store import postgres as pg

    try:
        with psycopg.connect(dsn, connect_timeout=5):
            pass
    except (psycopg.Error, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise click.ClickException(f"PostgreSQL {pg.describe_dsn(dsn)}: {first}") from None


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    except psycopg.Error as e:
        click.echo(f"warning: could not drop the bench schema {schema!r}: {e}".splitlines()[0], err=True)
