"""The layers of docs/architecture.md, checked on the code: no import cycle between packages, and no
import from a lower layer to a higher one (nor between the packages that do one job each).

Every ``import``/``from ... import`` of ``lossproof`` anywhere in a module counts, also inside a
function or under ``TYPE_CHECKING``: a lazy import is still a dependency. A unit is a top-level
package (``lossproof/ingest/``) or module (``lossproof/auth.py``). A new unit must be given a layer
here (the test fails until it is).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import lossproof

SRC = Path(lossproof.__file__).parent

# Lowest first. A unit may import units of its own layer or below, never above.
LAYERS: list[tuple[str, set[str]]] = [
    (
        "foundation",
        {
            "config",
            "configdoc",
            "obs",
            "durable",
            "children",
            "heartbeat",
            "faults",
            "urls",
            "ranges",
            "cliutil",
            "points",
            "lazy",
            "receipt",
            "credentials",
            "segments",
            "native_ext",
            "aio",
        },
    ),
    ("log", {"log"}),
    ("store", {"store"}),
    ("protocol", {"protocol"}),
    ("http and auth", {"httputil", "protocol_http", "httpguard", "auth", "keys"}),
    ("jobs", {"ingest", "query", "fallback", "worker", "agent"}),
    ("composition root", {"server"}),
    ("entry points and tools", {"cli", "up", "send", "bench", "chaos", "dev", "__main__", "__init__"}),
]
# One job each: none of these imports another of them.
NO_LATERAL = "jobs"
# What a unit must never import, even downward: the agent runs on monitored hosts and speaks only
# the protocol; the fallback receiver is deliberately separate (its own journal, no log or store);
# the query API reads the store, never the log.
NEVER = {
    "agent": {"log", "store"},
    "fallback": {"log", "store"},
    "query": {"log"},
}
# Dev-only helpers: never on the product's run-time path (only tools use them).
DEV_ONLY = {"dev"}
TOOLS = LAYERS[-1][1]


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> tuple[str, str]:
    """(module, package it resolves relative imports in)."""
    rel = path.relative_to(SRC.parent).with_suffix("")
    mod = ".".join(rel.parts)
    if path.name == "__init__.py":
        mod = mod.removesuffix(".__init__")
        return mod, mod
    return mod, mod.rsplit(".", 1)[0]


def imports() -> dict[tuple[str, str], set[str]]:
    """(importing unit, imported unit) -> the modules that import so."""
    edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    for path in sorted(SRC.rglob("*.py")):
        mod, pkg = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                # "from lossproof import config": the name may be a unit itself
                targets = [base, *(f"{base}.{a.name}" for a in node.names)] if base == "lossproof" else [base]
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                # importlib.import_module("lossproof.x") and __import__("lossproof.x") import too
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                    targets = [node.args[0].value]
            for t in targets:
                if t == "lossproof" or not t.startswith("lossproof."):
                    continue
                a, b = _unit(mod), _unit(t)
                if a != b:
                    edges[(a, b)].add(mod)
    return edges


def _layer_of() -> dict[str, int]:
    out: dict[str, int] = {}
    for i, (_, units) in enumerate(LAYERS):
        for u in units:
            assert u not in out, f"{u} is in two layers"
            out[u] = i
    return out


def test_every_unit_has_a_layer() -> None:
    layer = _layer_of()
    units = {p.stem for p in SRC.glob("*.py")} | {p.parent.name for p in SRC.glob("*/__init__.py")}
    assert sorted(units - set(layer)) == [], "give these a layer in LAYERS (and docs/architecture.md)"


def test_no_import_runs_up_or_sideways() -> None:
    layer = _layer_of()
    names = [name for name, _ in LAYERS]
    bad = []
    for (a, b), mods in sorted(imports().items()):
        la, lb = layer.get(a), layer.get(b)
        if la is None or lb is None:
            continue  # test_every_unit_has_a_layer says so
        if lb > la or (lb == la and names[la] == NO_LATERAL):
            bad.append(f"{a} ({names[la]}) -> {b} ({names[lb]}): {sorted(mods)}")
        if b in NEVER.get(a, set()):
            bad.append(f"{a} -> {b} (never): {sorted(mods)}")
        if b in DEV_ONLY and a not in TOOLS:
            bad.append(f"{a} -> {b} (dev-only): {sorted(mods)}")
    assert bad == [], "\n".join(bad)


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in imports():
        graph[a].add(b)
    # Tarjan's strongly connected components: any with two units or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    edges = imports()
    detail = [
        f"{cycle}: "
        + "; ".join(f"{a}->{b} {sorted(edges[(a, b)])}" for a in cycle for b in cycle if (a, b) in edges)
        for cycle in cycles
    ]
    assert cycles == [], "\n".join(detail)


def test_no_public_name_is_also_a_submodule() -> None:
    """A package's lazily loaded public name that is also one of its submodules' names is replaced by
    the submodule once that is imported (``from pkg import name`` then gives the module)."""
    import importlib

    clashes = []
    for init in sorted(SRC.rglob("__init__.py")):
        mod, _ = _module_name(init)
        names = set(getattr(importlib.import_module(mod), "__all__", ()))
        subs = {p.stem for p in init.parent.glob("*.py")}
        subs |= {p.parent.name for p in init.parent.glob("*/__init__.py")}
        clashes += [f"{mod}.{n}" for n in sorted(names & subs)]
    assert clashes == []


def test_the_parser_finds_the_imports() -> None:
    """The parser itself: imports at the top, inside functions and relative ones reach their unit."""
    edges = imports()
    assert ("ingest", "log") in edges and ("worker", "store") in edges
    assert ("cli", "server") in edges or ("cli", "ingest") in edges


def test_one_logging_style() -> None:
    """A module's own logger is structlog's (``obs.logging.get``), never ``logging.getLogger``. (A
    stdlib logger handed to a library, librdkafka's, or a filter on aiohttp's logger are no module
    loggers and stay.)"""
    stdlib = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Call):
                continue
            fn = node.value.func
            if isinstance(fn, ast.Attribute) and fn.attr == "getLogger":
                stdlib.append(str(path.relative_to(SRC)))
    assert sorted(stdlib) == []


def test_each_package_names_its_public_api() -> None:
    """Every package's ``__init__.py`` says what it is (a docstring); the library packages, which
    others import, list their public API in ``__all__``."""
    library = {"log", "store", "protocol", "ingest", "query", "worker", "fallback", "obs", "agent", "chaos"}
    for init in sorted(SRC.rglob("__init__.py")):
        tree = ast.parse(init.read_text(), str(init))
        rel = init.parent.relative_to(SRC)
        if rel == Path("."):
            continue
        assert ast.get_docstring(tree), f"{rel}/__init__.py: no docstring"
        if str(rel) in library:
            names = {
                t.id
                for n in tree.body
                if isinstance(n, ast.Assign)
                for target in n.targets
                for t in (target.elts if isinstance(target, ast.Tuple) else [target])
                if isinstance(t, ast.Name)
            }
            assert "__all__" in names, f"{rel}/__init__.py names no public API (__all__)"
