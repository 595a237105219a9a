"""Real third-party clients through a real `lossproof agent` process's relay into a real `lossproof up`,
on loopback, through outages of the pipeline and kill -9 of the agent: what the relay answered 2xx
for is stored, exactly once.

- the OpenTelemetry Python SDK (configured by its environment variable) exporting every second while
  the pipeline is down for 20 s: every export succeeds, every exported point is stored once, and the
  ledger shows the sender's backlog delayed (since the outage) and then stored;
- influxdb-client (v2 API, synchronous and batching) and the influx 1.x CLI `-import` while the
  pipeline is down: every point stored; importing again stores nothing twice;
- Prometheus in agent mode and vmagent remote-writing their scrapes through an outage: no gap in `up`;
- kill -9 of the agent while a client streams remote write: every sample answered 204 is stored.
"""

from __future__ import annotations

import itertools
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import urllib3

from lossproof.faults import write_faults
from lptest import require
from lptest.agent import AgentProc, base_config, free_port, wait_for, write_config
from lptest.pipeline import Pipeline
from lptest.proto import query, rw_body

pytestmark = pytest.mark.process

AGENT = "relay-agent"
OUTAGE = 20.0
HTTP = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=30), retries=False)


def start_agent(tmp: Path, p: Pipeline, **over: Any) -> tuple[AgentProc, str]:
    relay_port = free_port()
    cfg = base_config(
        tmp,
        p.url,
        p.key,
        agent_id=AGENT,
        collect_host=False,
        interval_seconds=1.0,
        relay={"listen": f"127.0.0.1:{relay_port}"},
        **over,
    )
    agent = AgentProc(write_config(tmp / "agent.toml", **cfg), cfg)
    agent.start()
    agent.wait_started()
    wait_for(lambda: '"relay.started"' in agent.run_log(), 10, "the relay")
    return agent, f"http://127.0.0.1:{relay_port}"


@pytest.fixture
def stop_agents() -> Iterator[list[AgentProc]]:
    agents: list[AgentProc] = []
    yield agents
    for a in agents:
        if a.alive():
            a.kill9()


def values(p: Pipeline, metric: str) -> list[tuple[int, float]]:
    return sorted((int(t), v) for s in query(p, metric) for t, v in s["points"])


def wait_values(p: Pipeline, metric: str, n: int, timeout: float = 60) -> list[tuple[int, float]]:
    def enough() -> list[tuple[int, float]] | None:
        got = values(p, metric)
        return got if len(got) >= n else None

    got: list[tuple[int, float]] = wait_for(enough, timeout, f"{n} points of {metric}")
    return got


def sender_ledger(p: Pipeline, sender: str) -> dict[str, Any]:
    return p.ledger(quote(f"{AGENT}/{sender}", safe=""))


def all_stored(p: Pipeline, sender: str, last: int | None = None) -> dict[str, Any]:
    """The sender's ledger once every seq it created (``last`` of them, if given) is stored: nothing
    missing, delayed or lost."""

    def done() -> dict[str, Any] | None:
        ledger = sender_ledger(p, sender)
        top = (ledger["spool"] or {}).get("last_seq", 0)
        ok = ledger["stored"] == [[1, top]] and not ledger["missing"] and not ledger["delayed"]
        return ledger if ok and not ledger["lost"] and last in (None, top) else None

    ledger: dict[str, Any] = wait_for(done, 60, f"{sender}: every seq stored")
    return ledger


def pending(agent: AgentProc, sender: str) -> float:
    key = f'lossproof_agent_relay_spool_reports{{sender="{AGENT}/{sender}",state="pending"}}'
    return agent.metrics().get(key, 0.0)


def test_otel_sdk_exports_through_an_outage_are_all_stored_once(
    pipeline: Pipeline, tmp_path: Path, stop_agents: list[AgentProc], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every export answered, every point stored once, and the ledger shows the backlog as the
    native agent's: delayed (held in the agent's spool since the outage began), then stored."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExportResult, PeriodicExportingMetricReader

    p = pipeline
    sender = "otlp/OTel-OTLP-Exporter-Python"
    # one report a request, one request at a time: the backlog drains over several requests, so
    # the ledger can be seen holding the rest as delayed (a single request would store it at once)
    agent, relay = start_agent(tmp_path, p, max_batch_reports=1, max_in_flight=1)
    stop_agents.append(agent)
    # as docs/agent.md tells users to point the SDK at the agent
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", relay + "/v1/metrics")
    results: list[MetricExportResult] = []

    class Exporter(OTLPMetricExporter):
        def export(self, *a: Any, **kw: Any) -> MetricExportResult:
            r = super().export(*a, **kw)
            results.append(r)
            return r

    n = 0

    def observe(options: CallbackOptions) -> list[Observation]:
        nonlocal n
        n += 1  # one point per collection, numbered: a lost one is a gap, a doubled one a duplicate
        return [Observation(n, {"run": "outage"})]

    provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(Exporter(), 1000)])
    provider.get_meter("relay-test").create_observable_gauge("relay.sdk.n", [observe])
    delayed: list[dict[str, Any]] = []
    try:
        time.sleep(3)
        before = all_stored(p, sender)["spool"]["last_seq"]  # what the sender made before the outage
        p.stop()
        down_ms = time.time() * 1000
        time.sleep(OUTAGE)
        assert pending(agent, sender) >= OUTAGE / 2  # the backlog is in the spool
        # slow the pipeline's log (each request acknowledged 0.3 s later) while the backlog drains
        write_faults(str(p.faults_file), {"log.fsync": {"mode": "delay", "seconds": 0.3}})
        p.start()
        up_ms = time.time() * 1000

        def backlog_delayed() -> list[dict[str, Any]] | None:
            return sender_ledger(p, sender)["delayed"] or None

        delayed = wait_for(backlog_delayed, 30, f"{sender}: the backlog delayed in the ledger")
        write_faults(str(p.faults_file), {})
        time.sleep(2)
    finally:
        write_faults(str(p.faults_file), {})
        provider.shutdown()  # a last export
    assert results and all(r is MetricExportResult.SUCCESS for r in results), results
    got = wait_values(p, "relay.sdk.n", n)
    assert [v for _, v in got] == [float(i) for i in range(1, n + 1)]
    assert len({t for t, _ in got}) == n
    # delayed: seqs the sender made during the outage, still in the agent's spool, waiting since
    # the outage (the oldest pending report was made while the pipeline was down)
    (first, last) = delayed[0]["range"]
    assert before < first <= last, (before, delayed)
    assert down_ms - 1500 <= delayed[0]["pending_since_ms"] <= up_ms, (down_ms, up_ms, delayed)
    # then stored: every seq, nothing missing, delayed or lost
    ledger = all_stored(p, sender)
    assert ledger["stored"][0][1] >= last


T0_MS = 1_767_225_600_000  # 2026-01-01


def test_influxdb_client_and_cli_while_the_pipeline_is_down_then_reimport(
    pipeline: Pipeline, tmp_path: Path, stop_agents: list[AgentProc]
) -> None:
    from influxdb_client import InfluxDBClient, WriteOptions, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    p = pipeline
    agent, relay = start_agent(tmp_path, p)
    stop_agents.append(agent)
    batches, per_batch = 20, 50
    lines = [
        [f"relay_client,host=h{k % 3} v={k}i {T0_MS + k}" for k in range(b * per_batch, (b + 1) * per_batch)]
        for b in range(batches)
    ]
    influx_cli = shutil.which("influx")
    cli_lines = [f"relay_cli,host=c v={i}.5 {T0_MS + i}" for i in range(300)]
    cli_file = tmp_path / "import.txt"
    cli_file.write_text("# DML\n# CONTEXT-DATABASE: relaydb\n" + "\n".join(cli_lines) + "\n")

    failures: list[str] = []
    batched = [f"relay_batched,host=b v={k} {T0_MS + k}" for k in range(500)]

    def write_all() -> None:
        with InfluxDBClient(url=relay, token="no-key-needed-locally", org="o") as client:
            api = client.write_api(write_options=SYNCHRONOUS)
            for batch in lines:
                api.write(bucket="relay-bucket", record=batch, write_precision=WritePrecision.MS)
            # the batching write API: failures only reach its callbacks (after its own retries)
            options = WriteOptions(batch_size=100, flush_interval=200, max_retries=0)
            with client.write_api(
                write_options=options, error_callback=lambda _c, _d, e: failures.append(repr(e))
            ) as batching:
                batching.write(bucket="relay-bucket", record=batched, write_precision=WritePrecision.MS)
        assert failures == []
        if influx_cli is not None:
            port = relay.rsplit(":", 1)[1]
            argv = [influx_cli, "-host", "127.0.0.1", "-port", port, "-import", "-path", str(cli_file)]
            out = subprocess.run([*argv, "-precision", "ms"], capture_output=True, text=True, timeout=60)
            text = out.stdout + out.stderr
            assert out.returncode == 0 and "Failed 0 inserts" in text, text

    p.stop()
    write_all()  # the synchronous client raises on anything but a 2xx: all of it is in the agent's spool
    assert pending(agent, "influx/influxdb-client-python") > 0
    p.start()
    want = sorted((T0_MS + k, float(k)) for k in range(batches * per_batch))
    assert wait_values(p, "relay_client_v", len(want)) == want
    all_stored(p, "influx/influxdb-client-python")
    write_all()  # the same points again: stored once
    # a report per request: per round the synchronous requests and the batching API's 5 of 100 lines
    all_stored(p, "influx/influxdb-client-python", last=2 * (batches + 5))
    assert values(p, "relay_client_v") == want
    assert values(p, "relay_batched_v") == sorted((T0_MS + k, float(k)) for k in range(500))
    require(influx_cli, "the influx CLI (Debian's influxdb-client)")
    all_stored(p, "influx/influxDB")  # the influx CLI says "User-Agent: influxDB"
    cli_want = sorted((T0_MS + i, i + 0.5) for i in range(300))
    assert values(p, "relay_cli_v") == cli_want


PROMETHEUS = shutil.which("prometheus")
VMAGENT = shutil.which("vmagent")
SCRAPE_CONFIG = """global: {{scrape_interval: 1s}}
scrape_configs:
  - job_name: relay-agent
    static_configs: [{{targets: ['127.0.0.1:{target}']}}]
"""


def _prometheus(tmp: Path, target: int, relay: str) -> list[str]:
    """Prometheus (2.x) in agent mode, as docs/agent.md configures its remote_write."""
    require(PROMETHEUS, "Prometheus (Debian's prometheus)")
    conf = tmp / "prometheus.yml"
    conf.write_text(
        SCRAPE_CONFIG.format(target=target) + "remote_write:\n"
        f"  - url: {relay}/api/v1/write\n"
        "    queue_config: {batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s}\n"
    )
    return [
        str(PROMETHEUS),
        "--enable-feature=agent",
        f"--config.file={conf}",
        f"--storage.agent.path={tmp / 'prom-wal'}",
        f"--web.listen-address=127.0.0.1:{free_port()}",
    ]


def _vmagent(tmp: Path, target: int, relay: str) -> list[str]:
    """vmagent, as docs/agent.md configures its -remoteWrite.url."""
    require(VMAGENT, "vmagent (Debian's victoria-metrics)")
    conf = tmp / "scrape.yml"
    conf.write_text(SCRAPE_CONFIG.format(target=target))
    return [
        str(VMAGENT),
        f"-promscrape.config={conf}",
        f"-remoteWrite.url={relay}/api/v1/write",
        f"-remoteWrite.tmpDataPath={tmp / 'vmagent-data'}",
        f"-httpListenAddr=127.0.0.1:{free_port()}",
    ]


@pytest.mark.parametrize(
    ("argv", "product"), [(_prometheus, "Prometheus"), (_vmagent, "vmagent")], ids=["prometheus", "vmagent"]
)
def test_a_scraper_remote_writes_through_an_outage_without_a_gap(
    pipeline: Pipeline,
    tmp_path: Path,
    stop_agents: list[AgentProc],
    argv: Callable[[Path, int, str], list[str]],
    product: str,
) -> None:
    p = pipeline
    agent, relay = start_agent(tmp_path, p)
    stop_agents.append(agent)
    with open(tmp_path / "scraper.log", "wb") as log:
        scraper = subprocess.Popen(
            argv(tmp_path, agent.cfg["metrics_port"], relay), stdout=log, stderr=subprocess.STDOUT
        )
    sender = f"prom-rw/{product}"
    try:
        wait_for(lambda: sender_ledger(p, sender), 30, f"{product}'s first samples stored")
        time.sleep(3)
        p.stop()
        outage_from = time.time() * 1000
        time.sleep(OUTAGE * 0.75)
        outage_to = time.time() * 1000
        p.start()
        time.sleep(4)
    finally:
        scraper.terminate()
        scraper.wait(30)
    ups = wait_for(lambda: [s for s in query(p, "up") if s["labels"].get("job") == "relay-agent"], 30, "up")
    assert len(ups) == 1, ups
    times = sorted(int(t) for t, _ in ups[0]["points"])
    assert times[0] < outage_from - 2000 and times[-1] > outage_to + 2000, (times[0], times[-1])
    gaps = [(a, b) for a, b in itertools.pairwise(times) if b - a > 2500]  # scraped every 1 s
    assert gaps == [], gaps
    assert all(v == 1.0 for _, v in ups[0]["points"])
    all_stored(p, sender)


def test_kill9_of_the_agent_loses_nothing_it_answered_2xx(
    pipeline: Pipeline, tmp_path: Path, stop_agents: list[AgentProc]
) -> None:
    p = pipeline
    agent, relay = start_agent(tmp_path, p)
    stop_agents.append(agent)
    acked: set[int] = set()
    sent = 0
    stop = threading.Event()

    def stream() -> None:
        nonlocal sent
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=5), retries=False)
        i = 0
        while not stop.is_set():
            i += 1
            series = [({"__name__": "relay_k9", "k": str(j)}, [(T0_MS + i, float(i))]) for j in range(5)]
            headers = {"Content-Encoding": "snappy", "User-Agent": "k9-client/1"}
            try:
                r = http.request("POST", relay + "/api/v1/write", body=rw_body(series), headers=headers)
            except urllib3.exceptions.HTTPError:
                time.sleep(0.05)  # the agent is down: retry later, as a client would (another sample)
                continue
            finally:
                sent = i
            if r.status == 204:
                acked.add(i)

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    rng = random.Random(17)
    try:
        for k in range(3):
            time.sleep(rng.uniform(0.5, 1.5))
            if k == 1:
                p.stop()  # the last kills come with reports pending in the spool
            agent.kill9()
            agent.start()
            agent.wait_started()
        time.sleep(1)
    finally:
        stop.set()
        t.join(10)
    if p.proc is not None and p.proc.poll() is not None:
        p.start()
    assert len(acked) > 20, (len(acked), sent)
    stored = wait_for(
        lambda: (got := {int(v) for _, v in values(p, "relay_k9")}) >= acked and got, 60, "every 204 stored"
    )
    assert stored <= set(range(1, sent + 1))
    assert len(query(p, "relay_k9")) == 5
    ledger = all_stored(p, "prom-rw/k9-client")
    assert ledger["lost"] == []
