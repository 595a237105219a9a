"""``lossproof fallback`` and ``lossproof replay`` (registered in ``lossproof.cli``)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from lossproof import config as config_mod
from lossproof.cliutil import finite_float
from lossproof.config import MAX_SECONDS
from lossproof.fallback.pacing import DEFAULT_BATCH_POINTS, DEFAULT_CONCURRENCY

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
EXIT_SKIPPED_DAMAGE = 4  # `lossproof replay --skip-damaged` finished, damaged journal bytes were skipped


class Duration(click.ParamType):  # type: ignore[type-arg]
    """Seconds, or a number with a unit: 500ms, 30s, 10m, 6h, 7d."""

    name = "duration"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            value = f"{value}s"
        m = _DURATION.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a duration (e.g. 30s, 10m, 6h, 7d)", param, ctx)
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
        if seconds > MAX_SECONDS:
            self.fail(f"{value!r}: at most {MAX_SECONDS // 86400}d", param, ctx)
        return seconds


class ByteSize(click.ParamType):  # type: ignore[type-arg]
    """Bytes, or a number with a unit: 512K, 64M, 1G (powers of 1024)."""

    name = "size"

    def __init__(self, minimum: int = 1) -> None:
        self.minimum = minimum

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            n = value
        else:
            m = _SIZE.match(str(value))
            if not m:
                self.fail(f"{value!r} is not a size (e.g. 512K, 64M, 1G)", param, ctx)
            unit = (m.group(2) or "b")[0].lower()
            mult = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[unit]
            n = int(float(m.group(1)) * mult)
        if not self.minimum <= n <= 2**50:
            self.fail(f"{value!r}: must be between {self.minimum} bytes and 1P", param, ctx)
        return n


@click.command("fallback")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The fallback's own directory (put it on another disk than the pipeline's): "
    "lossproof.toml with the tenants' key hashes, and the journal.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8081, show_default=True)
@click.option("--host", default=None, help="Address to listen on (default: server.host, 127.0.0.1).")
@click.option(
    "--api-key",
    envvar="LOSSPROOF_API_KEY",
    default=None,
    help="Key for the default tenant when lossproof.toml is created (or LOSSPROOF_API_KEY).",
)
@click.option(
    "--segment-bytes",
    type=ByteSize(minimum=4096),
    default="64M",
    show_default=True,
    envvar="LOSSPROOF_FALLBACK_SEGMENT_BYTES",
    help="Start a new journal segment past this size.",
)
@click.option(
    "--retention",
    type=Duration(),
    default="24h",
    show_default=True,
    envvar="LOSSPROOF_FALLBACK_RETENTION",
    help="Keep segments this long after `lossproof replay` drained them, then delete them.",
)
@click.option(
    "--prune-interval",
    type=Duration(),
    default="60s",
    show_default=True,
    envvar="LOSSPROOF_FALLBACK_PRUNE_INTERVAL",
    help="How often to look for replayed segments past retention.",
)
def fallback_command(
    data_dir: Path,
    port: int,
    host: str | None,
    api_key: str | None,
    segment_bytes: int,
    retention: float,
    prune_interval: float,
) -> None:
    """Run the fallback receiver: the native protocol into a local journal, 200 only after fsync."""
    from lossproof import aio
    from lossproof.fallback import journal as jn
    from lossproof.fallback.receiver import ReceiverOptions, serve
    from lossproof.obs.logging import setup

    setup("fallback")
    try:
        cfg, new_key = config_mod.init_data_dir(data_dir, api_key)
    except (config_mod.ConfigError, OSError) as e:
        raise click.ClickException(str(e)) from None
    if new_key:
        click.echo(f"created {data_dir / config_mod.CONFIG_NAME}; API key for tenant 'default': {new_key}")
        click.echo("(stored hashed; copy the [tenants] key hashes of your pipeline here to share keys)")
    opts = ReceiverOptions(
        host=host or cfg.server.host,
        port=port,
        segment_bytes=segment_bytes,
        retention_seconds=retention,
        prune_interval_seconds=max(0.05, prune_interval),
    )

    def ready(url: str) -> None:
        click.echo(f"lossproof fallback is up: {url} (journal {jn.journal_dir(data_dir)}); Ctrl-C stops it")
        sys.stdout.flush()

    try:
        aio.run(serve(cfg, data_dir, opts, ready))
    except jn.JournalError as e:
        raise click.ClickException(
            f"{e} (refusing to start: move the damaged segment aside to accept data again)"
            if isinstance(e, jn.JournalCorrupt)
            else str(e)
        ) from None
    except OSError as e:
        raise click.ClickException(f"cannot serve on {opts.host}:{opts.port}: {e}") from None


@click.command("replay")
@click.option(
    "--from",
    "from_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The fallback's data dir (the receiver may still be running).",
)
@click.option("--to", "to_url", required=True, help="The main pipeline, e.g. http://127.0.0.1:8080.")
@click.option(
    "--api-key",
    envvar="LOSSPROOF_REPLAY_API_KEY",
    required=True,
    help="A replay key (`lossproof keys create --replay`) or LOSSPROOF_REPLAY_API_KEY.",
)
@click.option(
    "--rate",
    type=finite_float(0, min_open=True),
    default=None,
    help="At most this many requests/s (token bucket). Default: no limit but --concurrency.",
)
@click.option("--rate-bytes", type=ByteSize(), default=None, help="At most this many body bytes/s, e.g. 50M.")
@click.option("--concurrency", type=click.IntRange(1, 256), default=DEFAULT_CONCURRENCY, show_default=True)
@click.option(
    "--batch-points",
    type=click.IntRange(0, 10_000_000),
    default=DEFAULT_BATCH_POINTS,
    show_default=True,
    help="Merge one agent's records into requests of up to this many points (0: a request per record).",
)
@click.option("--follow", is_flag=True, help="Keep replaying what the receiver accepts until stopped.")
@click.option("--prune", is_flag=True, help="Afterwards delete replayed segments older than --retention.")
@click.option("--retention", type=Duration(), default="24h", show_default=True)
@click.option("--from-start", is_flag=True, help="Ignore saved progress and replay the whole journal.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep replay's progress and rejected.jsonl here instead of in DIR/replay (e.g. when the "
    "fallback's disk is full; the receiver then neither prunes nor counts what was replayed).",
)
@click.option(
    "--skip-damaged",
    is_flag=True,
    help="Go on past damaged journal bytes (each stretch logged and counted; their reports are not "
    "sent, the pipeline's ledger finds them missing) instead of stopping there. Exit status 4.",
)
def replay_command(
    from_dir: Path,
    to_url: str,
    api_key: str,
    rate: float | None,
    rate_bytes: int | None,
    concurrency: int,
    batch_points: int,
    follow: bool,
    prune: bool,
    retention: float,
    from_start: bool,
    state_dir: Path | None,
    skip_damaged: bool,
) -> None:
    """Drain a fallback receiver's journal into the main ingest, resumably, at a bounded rate.

    Exit status: 0 done, 1 error (nothing skipped; a damaged journal without --skip-damaged), 3 done
    but some requests were rejected with a 4xx (kept in DIR/replay/rejected.jsonl, or in
    --state-dir), 4 done but damaged journal bytes were skipped (--skip-damaged; before 3: the
    summary line tells of rejections too), 130 interrupted (run again to continue). A full disk
    under DIR does not stop it: progress is then not saved (logged), a rerun sends again what was
    sent since the last save.
    """
    from lossproof.fallback.replay import ReplayError, ReplayOptions, run_replay
    from lossproof.obs.logging import setup

    setup("replay")  # its events (a progress save the disk refused) as the receiver's: one a line

    opts = ReplayOptions(
        data_dir=from_dir,
        url=to_url,
        api_key=api_key,
        rate=rate,
        rate_bytes=float(rate_bytes) if rate_bytes else None,
        concurrency=concurrency,
        batch_points=batch_points,
        follow=follow,
        prune=prune,
        retention_seconds=retention,
        from_start=from_start,
        state_dir=state_dir,
        skip_damaged=skip_damaged,
    )
    try:
        summary = run_replay(opts)
    except ReplayError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"{from_dir}: {e}") from None
    click.echo(summary.line())
    if summary.error:
        raise click.ClickException(summary.error)
    if summary.interrupted:
        sys.exit(130)
    if summary.skipped:
        # done, but not everything the fallback acknowledged was sent: a status of its own, so that
        # neither an operator nor a script takes it for a clean run, nor for an error
        sys.exit(EXIT_SKIPPED_DAMAGE)
    if summary.rejected:
        sys.exit(3)
