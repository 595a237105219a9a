"""``lossproof store ...``: schema migrations and retention.

Registered in ``lossproof.cli``, which adds ``store bench`` from :mod:`lossproof.bench.store`. Errors
are one line on stderr and a non-zero exit, like every other command.
"""

from __future__ import annotations

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
