"""``lossproof store ...``: schema migrations, retention, and the check of every stored row.

Registered in ``lossproof.cli``, which adds ``store bench`` from :mod:`lossproof.bench.store`. Errors
are one line on stderr and a non-zero exit, like every other command.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import click

from lossproof import config as config_mod
from lossproof.config import Config, ConfigError
from lossproof.store.base import CHECK_BATCH, CHECKED_TABLES, Store, StoreError

# store check: the progress line's period, and the damaged rows listed by name
PROGRESS_EVERY_S = 5.0
LIST_AT_MOST = 50


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
    """Manage the store (schema migrations, retention, benchmark)."""  # bench: lossproof.cli


@store_group.command("migrate")
@_data_dir
def migrate_cmd(data_dir: Path) -> None:
    """Bring the store's schema to the version this lossproof needs (idempotent)."""
    cfg = _load(data_dir)
    if cfg.store.backend != "postgres":
        from lossproof.store.sqlite import SqliteStore

        try:
            store = SqliteStore(cfg.store_path)  # creates or checks the file
            try:
                size = cfg.store_path.stat().st_size
                click.echo(
                    f"embedded store {cfg.store_path}: checking that compaction can give free space back"
                )
                if store.enable_reclaim():
                    click.echo(
                        f"  rewrote the file ({size / 2**20:.1f} MiB before) with incremental auto-vacuum"
                    )
            finally:
                store.close()
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


class _CannotCheck(click.ClickException):
    """A one-line error with exit status 2: 1 is ``store check``'s "damage found"."""

    exit_code = 2


@store_group.command("check")
@_data_dir
@click.option(
    "--set-aside",
    is_flag=True,
    help="Move the damaged rows into the damaged_chunks table, as the worker does (a transaction a"
    " batch: it may run beside a live worker). Without it the check only reads.",
)
def check_cmd(data_dir: Path, set_aside: bool) -> None:
    """Check every stored chunk and part as reads do; list the damaged ones. Exit status: 0 none
    damaged, 1 some were (set aside with --set-aside), 2 the store could not be checked, 130
    interrupted."""
    from lossproof.obs.logging import setup
    from lossproof.store.factory import open_store

    setup("store")  # on stderr: the rows set aside are logged as the worker logs them
    try:
        cfg = config_mod.load(data_dir)
    except ConfigError as e:
        raise _CannotCheck(str(e)) from None
    if cfg.store.backend == "postgres":
        from lossproof.store.postgres import describe_dsn

        where = f'PostgreSQL {describe_dsn(cfg.store.dsn)} schema "{cfg.store.pg_schema}"'
    else:
        where = f"embedded store {cfg.store_path}"
        if not cfg.store_path.is_file():  # (a readonly open would create an empty store)
            raise _CannotCheck(f"{where}: no such store file")
    writer: Store | None = None  # opened only once there is something to move
    checked = {t: 0 for t in CHECKED_TABLES}
    listed: list[str] = []
    damaged = moved = 0
    try:
        reader = open_store(cfg, readonly=True)
        try:
            next_progress = time.monotonic() + PROGRESS_EVERY_S
            for table in CHECKED_TABLES:
                after: int | None = None
                while True:
                    got = reader.check_rows(table, after, CHECK_BATCH[table])
                    if got.last_id is None:
                        break
                    after = got.last_id
                    checked[table] += got.checked
                    damaged += len(got.damaged)
                    for d in got.damaged[: max(0, LIST_AT_MOST - len(listed))]:
                        series = "" if d.series_id is None else f" series {d.series_id}"
                        listed.append(f"  {d.table} id {d.id}{series}: {d.reason}")
                    if set_aside and got.damaged:
                        if writer is None:
                            writer = open_store(cfg)
                        moved += len(writer.set_aside_rows(got.damaged, by="check"))
                    if time.monotonic() >= next_progress:
                        next_progress = time.monotonic() + PROGRESS_EVERY_S
                        click.echo(f"checked {_counts(checked)} so far, {damaged} damaged", err=True)
        finally:
            reader.close()
            if writer is not None:
                writer.close()
    except StoreError as e:
        raise _CannotCheck(str(e)) from None
    except KeyboardInterrupt:
        # not click's "Aborted!" and exit 1, which is "damage found" here
        click.echo(f"interrupted: checked {_counts(checked)}, {damaged} damaged so far", err=True)
        click.get_current_context().exit(130)
    click.echo(f"{where}: checked {_counts(checked)}")
    if not damaged:
        click.echo("no damaged rows")
        return
    click.echo(f"{damaged} damaged:")
    for line in listed:
        click.echo(line)
    if damaged > len(listed):
        click.echo(f"  and {damaged - len(listed)} more")
    if set_aside:
        click.echo(
            f"set aside {moved} of them into damaged_chunks (queries of their metrics work again; their"
            " points are no longer stored: a replay from the log or the agents stores them again)"
        )
        if moved < damaged:
            # (a worker set them aside, packed or deleted them between the check and the move)
            click.echo(f"  {damaged - moved} of them were no longer there, or no longer damaged")
    else:
        click.echo(
            "queries of their metrics fail until they are set aside: run again with --set-aside to move"
            " them into damaged_chunks"
        )
    click.get_current_context().exit(1)


def _counts(checked: dict[str, int]) -> str:
    return " and ".join(f"{n} {table.removesuffix('s')} rows" for table, n in checked.items())
