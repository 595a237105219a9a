"""``lossproof agent --config agent.toml``: run the agent until SIGTERM or SIGINT.

Errors (bad config, a spool in use by another agent, a port taken) are one line and a non-zero exit.
"""

from __future__ import annotations

import gc
import signal
import threading
from pathlib import Path

import click

from lossproof.config import ConfigError


@click.command("agent")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    envvar="LOSSPROOF_AGENT_CONFIG",
    help="The agent's TOML config (see docs/agent.md).",
)
def agent_command(config_path: Path) -> None:
    """Run the monitoring agent: collect, spool to disk, send, replay, fail over."""
    from lossproof.agent.agent import Agent
    from lossproof.agent.config import load_config
    from lossproof.agent.spool import SpoolError
    from lossproof.obs.logging import setup

    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    setup("agent", cfg.log_level)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    agent = Agent(cfg)
    try:
        agent.start()
    except (SpoolError, ConfigError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:  # almost always the spool: say which, and where it is configured
        raise click.ClickException(f"spool_dir {cfg.spool_dir} ({config_path}): {e}") from None
    # Everything loaded so far (modules, config, the relay's protocol descriptors) lives as long as
    # the process: out of the collector's sight, a full collection no longer walks it. The relay
    # makes a dict per series it decodes; without this, the collections those trigger were ~15% of
    # its CPU (docs/agent.md, "Relay").
    gc.freeze()
    relay = f", relay on {cfg.relay.host}:{agent.relay_port}" if agent.relay_port else ""
    click.echo(
        f"lossproof agent {cfg.agent_id}: spool {cfg.spool_dir}, sending to {cfg.primary_url}{relay}",
        err=True,
    )
    while not stop.wait(1.0):
        pass
    agent.stop()


if __name__ == "__main__":
    agent_command()
