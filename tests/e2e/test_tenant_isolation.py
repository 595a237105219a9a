"""One tenant's names, agents, senders and traffic never reach another tenant, nor the unauthenticated
world: every route the app registers is walked (from its router, so a new route cannot be forgotten),
``/metrics`` is folded into totals without a key, and the health page is scoped to the key's tenant.

On the real app, embedded log, worker and store, in this process (:class:`lptest.inproc.InProcess`)."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from lptest.inproc import InProcess
from lptest.pipeline import HTTP
from lptest.proto import rw_body

# Everything of tenant "secretco" that must stay its own: its tenant name, agent, metric, label
# value and remote-write sender.
SECRET_TENANT = "secretco"
SECRET_AGENT = "agent-secretco-7f3a"
SECRET_METRIC = "secretco_revenue"
SECRET_VALUE = "vault-9c1e"
SECRET_SENDER = "SecretcoScraper/4.2"
SECRETS = (SECRET_TENANT, SECRET_AGENT, SECRET_METRIC, SECRET_VALUE, SECRET_SENDER)
PRIVATE_LABEL = re.compile(r'\b(tenant|agent|sender)="')


@dataclass
class Env:
    p: InProcess
    secret_key: str
    t: int


def _post_native(p: InProcess, key: str, agent: str, metric: str, t: int, value: str) -> None:
    points = [{"metric": metric, "labels": {"k": value}, "t": t, "v": 1.0}]
    r = p.post_reports(agent, [{"seq": 1, "points": points}], key=key)
    assert r.status == 200, r.data


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    p = InProcess(tmp_path_factory.mktemp("isolation") / "data", "lp_test_" + secrets.token_hex(16))
    secret_key = p.add_key(SECRET_TENANT)
    p.start()
    try:
        t = (int(time.time() * 1000) - 60_000) // 1000 * 1000
        _post_native(p, p.key, "agent-default", "default_metric", t, "plain")
        _post_native(p, secret_key, SECRET_AGENT, SECRET_METRIC, t, SECRET_VALUE)
        body = rw_body([({"__name__": SECRET_METRIC + "_rw", "k": SECRET_VALUE}, [(t, 2.0)])])
        headers = {
            "Authorization": f"Bearer {secret_key}",
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "snappy",
            "User-Agent": SECRET_SENDER,
        }
        r = HTTP.request("POST", p.url + "/api/v1/write", body=body, headers=headers)
        assert r.status == 204, r.data
        p.wait_stored("agent-default", {1})
        deadline = time.monotonic() + 30
        while p.get("/v1/agents", key=secret_key)[1]["agents"] == []:
            assert time.monotonic() < deadline, "tenant secretco's report was never stored"
            time.sleep(0.05)
        yield Env(p, secret_key, t)
    finally:
        p.stop()


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


# Query parameters that make a route return as much as it can (a route not listed is walked bare).
WIDE = {
    "/v1/query": {"metric": SECRET_METRIC},
    "/api/v1/query": {"query": '{__name__=~".+"}'},
    "/api/v1/query_range": {"query": '{__name__=~".+"}', "start": "0", "end": "4102444800", "step": "3600"},
    "/api/v1/series": {"match[]": '{__name__=~".+"}', "start": "0"},
    "/api/v1/labels": {"start": "0"},
    "/ui/api/series": {"match": SECRET_METRIC},
    "/ui/api/chart": {"match": SECRET_METRIC, "from": "0", "to": "4102444800000"},
}
PATH_PARAMS = {"agent": SECRET_AGENT, "name": "k"}
# What a request names of the secret tenant is echoed in answers like "no agent X in this tenant":
# such a request is also made with these names of nothing, and must be answered alike.
DECOYS = {SECRET_AGENT: "agent-nobodyco-0000", SECRET_METRIC: "nobodyco_revenue"}


def _routes(app: web.Application) -> list[tuple[str, str]]:
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or route.method == "HEAD":
            continue
        for name, value in PATH_PARAMS.items():
            path = path.replace("{" + name + "}", value)
        assert "{" not in path, f"a route with an unknown path parameter: {path} (add it to PATH_PARAMS)"
        out.append((route.method, path))
    return out


def _ask(p: InProcess, method: str, path: str, params: dict[str, str], key: str | None) -> tuple[int, str]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    r = HTTP.request(method, p.url + path, fields=params if method == "GET" else None, headers=headers)
    return r.status, r.data.decode(errors="replace")


def _decoy(text: str) -> str:
    for secret, decoy in DECOYS.items():
        text = text.replace(secret, decoy)
    return text


def test_every_route_keeps_a_tenant_s_data_from_another(env: Env) -> None:
    p = env.p
    assert p.app is not None
    routes = _routes(p.app)
    assert len(routes) > 20, routes
    for method, path in routes:
        params = WIDE.get(path, {})
        for who, key in (("tenant default", p.key), ("no key", None)):
            status, text = _ask(p, method, path, params, key)
            named = [s for s in DECOYS if s in path or any(s in v for v in params.values())]
            if named:  # answered as if the names were of nothing at all, echo aside
                decoy = {k: _decoy(v) for k, v in params.items()}
                d_status, _ = _ask(p, method, _decoy(path), decoy, key)
                assert status == d_status, f"{method} {path} as {who}: {status}, for nothing: {d_status}"
                for s in named:
                    text = text.replace(s, "")
            leaked = _leaks(text)
            assert not leaked, f"{method} {path} as {who}: {status} shows {leaked}: {text[:500]}"
            if path == "/metrics":
                assert not PRIVATE_LABEL.search(text), f"/metrics as {who} has per-tenant series"


def test_the_walk_does_see_the_secret_tenant_s_data_with_its_own_key(env: Env) -> None:
    """The walk above can fail: the same requests with the secret tenant's key show its data."""
    p = env.p
    status, body = p.get("/v1/agents", key=env.secret_key)
    assert status == 200 and SECRET_AGENT in str(body)
    r = HTTP.request(
        "GET",
        p.url + "/api/v1/series",
        fields=WIDE["/api/v1/series"],
        headers={"Authorization": f"Bearer {env.secret_key}"},
    )
    assert SECRET_VALUE in r.data.decode()


def test_public_metrics_are_totals_and_the_operator_sees_every_series(env: Env) -> None:
    public = env.p.metrics(public=True)
    full = env.p.metrics()
    assert not _leaks(public) and not PRIVATE_LABEL.search(public)
    assert f'tenant="{SECRET_TENANT}"' in full and SECRET_SENDER in full
    per_tenant = re.findall(r'^lossproof_ingest_points_total\{tenant="[^"]+"\} (\S+)$', full, re.M)
    total = re.findall(r"^lossproof_ingest_points_total (\S+)$", public, re.M)
    assert len(per_tenant) == 2 and total == [str(sum(float(v) for v in per_tenant))], (per_tenant, total)


def test_metrics_with_a_key_that_is_not_an_operator_key_is_403(env: Env) -> None:
    r = HTTP.request("GET", env.p.url + "/metrics", headers={"Authorization": f"Bearer {env.secret_key}"})
    assert r.status == 403 and "operator key" in r.data.decode()


def test_health_is_scoped_to_the_key_s_tenant(env: Env) -> None:
    p = env.p
    deadline = time.monotonic() + 20
    while True:
        _, mine = p.get("/ui/api/health")
        _, theirs = p.get("/ui/api/health", key=env.secret_key)
        if mine["ingest"]["history"] and theirs["ingest"]["history"]:
            break
        assert time.monotonic() < deadline, (mine, theirs)
        time.sleep(0.5)
    for body, tenant in ((mine, "default"), (theirs, SECRET_TENANT)):
        assert body["scope"] == "tenant" and body["tenant"] == tenant
        assert body["ingest"]["requests_per_s"] is None and body["ingest"]["by_status"] == {}
        assert body["worker"]["points_per_s"] is None and body["log_gaps"] == []
        assert body["agents"] == 1
    assert not _leaks(str(mine))
    r = HTTP.request("GET", p.url + "/ui/api/health", headers={"Authorization": f"Bearer {p.operator_key}"})
    op = r.json()
    assert r.status == 200 and op["scope"] == "pipeline" and op["tenant"] is None
    assert op["ingest"]["by_status"] and op["ingest"]["requests_per_s"] is not None
    assert not _leaks(str(op))  # pipeline-wide numbers, no tenant's agents


def test_a_broken_store_is_a_503_without_server_paths(tmp_path: Path) -> None:
    p = InProcess(tmp_path / "data", "lp_test_" + secrets.token_hex(16))
    (tmp_path / "data" / "store.db").write_bytes(b"not a database at all" * 100)
    p.start(worker=False)
    try:
        for path in ("/v1/agents", "/api/v1/labels", "/ui/api/completeness", "/ui/api/health"):
            status, body = p.get(path)
            assert status == 503, (path, status, body)
            assert str(tmp_path) not in str(body) and "<path>" in str(body), (path, body)
        # bad input is still a 400, before the store is asked
        for path in ("/api/v1/labels?match[]=rate(x[5m])", "/api/v1/label/job/values?match[]=%7B"):
            status, body = p.get(path)
            assert status == 400 and body["errorType"] == "bad_data", (path, status, body)
    finally:
        p.stop()
