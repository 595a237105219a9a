"""``lossproof kafka init``: create or validate the log topic so "acknowledged" stays honest."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from lossproof.cliutil import finite_float
from lossproof.config import CONFIG_NAME, ConfigError, KafkaLogConfig, _env_overrides, load


@click.group("kafka")
def kafka_group() -> None:
    """The Kafka log backend (log.backend = "kafka")."""


def _kafka_config(data_dir: Path) -> KafkaLogConfig:
    """[log.kafka] of lossproof.toml, or the defaults when there is none; LOSSPROOF_LOG_KAFKA_*
    environment overrides apply either way."""
    if not (data_dir / CONFIG_NAME).exists():
        try:
            env = _env_overrides(os.environ).get("log", {}).get("kafka", {})
        except ConfigError as e:
            raise click.ClickException(str(e)) from None
        return _validated({}, env, lambda f: f"LOSSPROOF_LOG_KAFKA_{f.upper()}")
    try:
        return load(data_dir).log.kafka
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _validated(base: dict[str, Any], updates: dict[str, Any], label: Callable[[str], str]) -> KafkaLogConfig:
    """``base`` with ``updates`` as a KafkaLogConfig, or a one-line error naming the bad setting
    (``label(field)`` when it came from ``updates``)."""
    try:
        return KafkaLogConfig.model_validate({**base, **updates})
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        where = label(field) if field in updates else f"log.kafka.{field}"
        raise click.ClickException(f"{where}: {first['msg']} (got {first.get('input')!r})") from None


@kafka_group.command("init")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("lossproof-data"),
    show_default=True,
    envvar="LOSSPROOF_DATA_DIR",
    help="Where lossproof.toml is ([log.kafka] is read from it when it exists).",
)
@click.option("--bootstrap-servers", default=None, help="Overrides log.kafka.bootstrap_servers.")
@click.option("--topic", default=None, help="Overrides log.kafka.topic.")
@click.option("--partitions", type=click.IntRange(1, 10_000), default=None)
@click.option("--replication-factor", type=click.IntRange(1, 100), default=None)
@click.option("--min-insync-replicas", type=click.IntRange(1, 100), default=None)
@click.option(
    "--unsafe",
    is_flag=True,
    help="Accept settings weaker than RF 3 / min.insync.replicas 2 / no unclean election / no "
    "Kafka-side deletion (e.g. a 1-node dev cluster). The writer then also needs log.kafka.unsafe = true.",
)
@click.option("--timeout", type=finite_float(1, 600), default=30.0, show_default=True)
def init_cmd(
    data_dir: Path,
    bootstrap_servers: str | None,
    topic: str | None,
    partitions: int | None,
    replication_factor: int | None,
    min_insync_replicas: int | None,
    unsafe: bool,
    timeout: float,
) -> None:
    """Create the log topic (RF 3, min.insync.replicas=2, unclean election off, no retention by
    Kafka) or check an existing one; refuse weaker settings unless --unsafe."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from lossproof.log.base import LogError, LogUnavailable
    from lossproof.log.kafka import admin as kadmin
    from lossproof.log.kafka.common import admin_conf

    base = _kafka_config(data_dir)
    updates: dict[str, object] = {}
    for key, value in (
        ("bootstrap_servers", bootstrap_servers),
        ("topic", topic),
        ("partitions", partitions),
        ("replication_factor", replication_factor),
        ("min_insync_replicas", min_insync_replicas),
    ):
        if value is not None:
            updates[key] = value
    cfg = _validated(base.model_dump(), updates, lambda f: "--" + f.replace("_", "-"))
    if not cfg.bootstrap_servers.strip():
        raise click.ClickException("--bootstrap-servers (or log.kafka.bootstrap_servers) is empty")
    if cfg.min_insync_replicas > cfg.replication_factor:
        raise click.ClickException(
            f"min.insync.replicas {cfg.min_insync_replicas} is above the replication factor "
            f"{cfg.replication_factor}: no append could ever be acknowledged"
        )
    wanted = kadmin.TopicInfo(
        cfg.topic, cfg.partitions, cfg.replication_factor, kadmin.topic_configs(cfg, cfg.min_insync_replicas)
    )
    # Checked against the safe minimum (not against the config, which is what we are about to create).
    floor = cfg.model_copy(update={"replication_factor": 1, "min_insync_replicas": 1})
    problems = kadmin.safety_problems(wanted, floor)
    if problems and not unsafe:
        raise click.ClickException(
            f"refusing to create topic {cfg.topic!r}: {'; '.join(problems)} (pass --unsafe to accept)"
        )
    try:
        admin = AdminClient(admin_conf(cfg))
        info = kadmin.describe_topic(admin, cfg.topic, timeout)
        if info is None:
            kadmin.create_topic(admin, cfg, timeout=timeout)
            click.echo(
                f"created topic {cfg.topic!r}: {cfg.partitions} partitions, replication factor "
                f"{cfg.replication_factor}, min.insync.replicas={cfg.min_insync_replicas}"
            )
            info = kadmin.describe_topic(admin, cfg.topic, timeout)
            if info is None:
                raise click.ClickException(f"topic {cfg.topic!r} was created but cannot be described")
        else:
            click.echo(
                f"topic {cfg.topic!r} exists: {info.partitions} partitions, replication factor "
                f"{info.replication_factor}, min.insync.replicas={info.min_insync_replicas}"
            )
    except (LogUnavailable, KafkaException) as e:
        msg = e.reason if isinstance(e, LogUnavailable) else e.args[0].str()
        raise click.ClickException(f"Kafka at {cfg.bootstrap_servers}: {msg}") from None
    except LogError as e:
        raise click.ClickException(str(e)) from None
    for w in kadmin.availability_warnings(info, cfg):
        click.echo(f"warning: {w}", err=True)
    problems = kadmin.safety_problems(info, floor)
    if problems:
        text = f"topic {cfg.topic!r} is not safe: {'; '.join(problems)}"
        if not unsafe:
            raise click.ClickException(text + " (pass --unsafe to accept, and set log.kafka.unsafe = true)")
        click.echo(f"warning: {text}; accepted (--unsafe): set log.kafka.unsafe = true", err=True)
    else:
        click.echo("ok: settings are safe")
