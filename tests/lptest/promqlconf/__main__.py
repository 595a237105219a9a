"""``python -m lptest.promqlconf``: the full PromQL conformance report (lossproof against Prometheus).

Run from a checkout with ``PYTHONPATH=src:tests``. Prints the score and every failing query with why;
``--write-passing`` rewrites the list of expected-passing queries the test checks against (of the
default windows); ``--windows prometheus2`` runs lossproof with Prometheus 2's closed windows, those of
the reference (Debian's Prometheus 2.x), where every query is expected to pass.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from lptest.promqlconf import queries as queries_mod
from lptest.promqlconf.run import run
from lptest.promqlconf.servers import ServerFailed

WINDOWS = ("prometheus3", "prometheus2")  # [query] windows: the default first


def _progress(line: str) -> None:
    print(f"  {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lptest.promqlconf", description=__doc__)
    ap.add_argument("--match", default="", help="only the queries containing this text")
    ap.add_argument("--workers", type=int, default=4, choices=range(1, 17), metavar="1..16")
    ap.add_argument("--work-dir", type=Path, default=None, help="where the servers' temp dirs go")
    ap.add_argument("--json", action="store_true", help="also print every verdict as one JSON line, last")
    ap.add_argument(
        "--windows",
        choices=WINDOWS,
        default=WINDOWS[0],
        help="lossproof's [query] windows (default: %(default)s)",
    )
    ap.add_argument(
        "--write-passing", action="store_true", help=f"rewrite {queries_mod.PASSING_FILE.name} from this run"
    )
    args = ap.parse_args(argv)
    if args.write_passing and args.match:
        ap.error("--write-passing needs the whole query list (no --match)")
    if args.write_passing and args.windows != WINDOWS[0]:
        ap.error(f"--write-passing lists what passes with windows = {WINDOWS[0]}")
    qs = [q for q in queries_mod.all_queries() if args.match in q.text]
    if not qs:
        ap.error(f"no query contains {args.match!r}")
    try:
        with tempfile.TemporaryDirectory(prefix="lossproof-promqlconf-", dir=args.work_dir) as tmp:
            report = run(Path(tmp), qs, _progress, args.workers, args.windows)
    except ServerFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    passing = set(report.passing)
    if not args.match and args.windows == WINDOWS[0]:
        expected = queries_mod.load_passing()
        print(
            f"against {queries_mod.PASSING_FILE.name}: {len(expected - passing)} no longer pass, "
            f"{len(passing - expected)} pass and are not listed"
        )
    if args.write_passing:
        queries_mod.write_passing(report.passing)
        print(f"wrote {len(report.passing)} queries to {queries_mod.PASSING_FILE}")
    if args.json:
        print(json.dumps(report.as_dict(), separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
