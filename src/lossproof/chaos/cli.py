"""``lossproof chaos run|list`` and ``lossproof audit``."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from lossproof.cliutil import finite_float


@click.group("chaos")
def chaos_group() -> None:
    """Run the whole pipeline as real processes, inject faults, and audit that nothing was lost."""


@chaos_group.command("list")
def chaos_list() -> None:
    """List the scenarios."""
    from lossproof.chaos.scenarios import SCENARIOS

    for s in SCENARIOS:
        click.echo(f"{s.number:>2}. {s.name:<20} {s.title}")


@chaos_group.command("run")
@click.argument("scenario")
@click.option(
    "--log", "log_backend", type=click.Choice(["embedded", "kafka"]), default="embedded", show_default=True
)
@click.option(
    "--duration",
    type=finite_float(1, 86_400),
    default=20.0,
    show_default=True,
    help="Seconds of load + faults per scenario.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--agents", type=click.IntRange(1, 200), default=3, show_default=True)
@click.option("--keep", is_flag=True, help="Keep every scenario's directory (failed ones are always kept).")
@click.option(
    "--json",
    "as_json",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the results here.",
)
def chaos_run(
    scenario: str, log_backend: str, duration: float, seed: int, agents: int, keep: bool, as_json: Path | None
) -> None:
    """Run SCENARIO (a name or number from `lossproof chaos list`) or `all`."""
    from lossproof.chaos.runner import run_scenario, table
    from lossproof.chaos.scenarios import by_name
    from lossproof.chaos.topology import TopologySpec

    try:
        scenarios = by_name(scenario)
    except KeyError:
        raise click.ClickException(f"unknown scenario {scenario!r} (see `lossproof chaos list`)") from None
    if as_json is not None:
        _check_writable(as_json)

    def say(msg: str) -> None:
        click.echo(f"{time.strftime('%H:%M:%S')} {msg}", err=True)

    with _kafka_cluster(log_backend, len(scenarios), say) as kafka_dir:
        spec = TopologySpec(log=log_backend, kafka_dir=kafka_dir)
        results = [
            run_scenario(s, duration=duration, seed=seed, agents=agents, say=say, keep=keep, spec=spec)
            for s in scenarios
        ]
    click.echo("")
    for line in table(results):
        click.echo(line)
    if as_json is not None:
        as_json.write_text(
            json.dumps(
                [
                    {
                        "scenario": r.scenario.name,
                        "verdict": r.verdict,
                        "why": r.why,
                        "faults": r.faults,
                        "seconds": round(r.seconds, 1),
                        "totals": r.totals,
                        "lost_reasons": r.lost_reasons,
                        "peak_rss": r.peak_rss,
                        "rss_growth": r.rss_growth,
                    }
                    for r in results
                ],
                indent=2,
            )
        )
    sys.exit(0 if all(r.ok for r in results) else 1)


def _check_writable(path: Path) -> None:
    """A one-line error now, rather than after the scenarios ran, if ``path`` cannot be written."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise click.ClickException(f"--json {path}: directory {parent} does not exist")
    if path.is_dir():
        raise click.ClickException(f"--json {path}: is a directory")
    if not os.access(path if path.exists() else parent, os.W_OK):
        raise click.ClickException(f"--json {path}: not writable")


@contextlib.contextmanager
def _kafka_cluster(log_backend: str, scenarios: int, say: Callable[[str], None]) -> Iterator[str]:
    """For several Kafka scenarios, one 3-node cluster shared by all (a fresh topic each), so the run
    does not pay a cluster start per scenario. Yields its directory ("" when there is none)."""
    if log_backend != "kafka" or scenarios < 2:
        yield ""
        return
    from lossproof.chaos.brokers import HEAP, NODES
    from lossproof.dev.kafka import DevCluster, DevKafkaError

    with tempfile.TemporaryDirectory(prefix="lossproof-chaos-kafka-") as d:
        cluster = DevCluster(Path(d), detach=False)
        say(f"starting a {NODES}-node Kafka cluster for the run in {d}")
        try:
            cluster.up(NODES, port=0, heap=HEAP, timeout=180)
        except DevKafkaError as e:
            raise click.ClickException(f"cannot start the Kafka cluster: {e}") from None
        try:
            yield d
        finally:
            cluster.down()


@click.command("audit")
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, envvar="LOSSPROOF_URL")
@click.option("--api-key", envvar="LOSSPROOF_API_KEY", required=True, help="The agents' tenant key.")
@click.option(
    "--spool",
    "spools",
    multiple=True,
    required=True,
    help="An agent's spool dir: AGENT=DIR, or DIR (agent id from DIR.agent_id or the dir name).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
def audit_command(url: str, api_key: str, spools: tuple[str, ...], as_json: bool) -> None:
    """Compare what each agent created (its spool) with the ledger and the store: exit 0 only when
    nothing is duplicated and nothing is lost silently."""
    from lossproof.chaos.remote import PipelineClient, RemoteError, run_audit
    from lossproof.chaos.truth import TruthError, parse_spool_arg, read_truth

    try:
        truths = [read_truth(*parse_spool_arg(s)) for s in spools]
        report = run_audit(PipelineClient(url, api_key), truths)
    except (TruthError, RemoteError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
    else:
        for line in report.table():
            click.echo(line)
    sys.exit(0 if report.ok else 1)
