"""Transfer to unseen task families (issue 14): leave-one-family-out over every public source.

For each outcome source of ``routing.transfer.SOURCES`` (built from ``--data``, default
../shared/data; nothing is copied) and each of its task families: fit the router on the other
families, score the held-out one (static, online replay over ``--seeds`` orders, the adaptation
curve after 50 / 100 / 200 / 500 graded queries), against the best single configuration chosen on
the training families, kNN, random and the min-CoP oracle; also the earlier unseen-tag rule
(cost / p on a text-classifier mixture) on the same fitted router. Prints a markdown table and
writes the rows and the summary to ``--json`` (default bench/results/router_transfer.json).

    .venv/bin/python bench/router_transfer.py [--data DIR] [--source NAME ...] [--seeds 3]
    # iterate quickly: static only, some families (figures for bench/README.md: the full run)
    .venv/bin/python bench/router_transfer.py --fast --source openllm-v2 --family gpqa --json /tmp/x.json

External sources fetched from GitHub (``routing.external.EXTERNAL``; bench/README.md says how to
fetch each into ``var/``): ``--extra-source NAME=DIR`` (repeatable). With extra sources and no
``--source``, only the extra sources run (the shared ones are in router_transfer.json already):

    .venv/bin/python bench/router_transfer.py --seeds 3 --extra-source zeroeval-math=var/zeroeval \
      --json bench/results/router_transfer_external.json

The same figures per source: ``costpass-router evaluate --leave-one-family-out NAME --data DIR
--online-curve`` (``NAME=DIR`` for an external source).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routerapp.routing import transfer as T  # noqa: E402
from routerapp.routing.external import EXTERNAL  # noqa: E402

HERE = Path(__file__).resolve()
SHARED = HERE.parents[2] / "shared"


def _g(x: Any) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:+.2f}"


def _line(r: dict[str, Any]) -> str:
    st = r["static"]
    on = r.get("online") or {}
    cv = on.get("curve", {})
    old = r.get("static_ratio_rule") or {}
    aiq_d = None if st["aiq"] is None else st["aiq"] - r["aiq_zero"]
    dev = " (dev)" if r["source"] in T.DEV_SOURCES else ""
    return (
        f"| {r['source']}{dev} | {r['held_out']} | {r['n_test']} | {_g(st['gap_closed'])} | "
        f"{_g(on.get('gap_closed'))} | "
        + " / ".join(_g(cv.get(str(k))) for k in T.CURVE_POINTS)
        + f" | {st['aiq']:.3f} / {r['aiq_zero']:.3f} ({aiq_d:+.3f}) | {st['accuracy']:.3f} | "
        f"{_e(st['cop'])} | {_e(r['best_single_train']['cop'])} | "
        f"{_g((r.get('knn') or {}).get('gap_closed'))} | {_g(r['random']['gap_closed'])} | "
        f"{_e(r['oracle']['cop'])} | {_g(old.get('gap_closed'))} |"
    )


def _e(x: Any) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2e}"


def main() -> int:
    """Run LOFO on every source and print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=SHARED / "data")
    ap.add_argument("--source", action="append", default=None, choices=sorted(T.SOURCES))
    ap.add_argument(
        "--extra-source",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="an external source and the directory it was fetched to (repeatable; "
        f"known: {', '.join(sorted(EXTERNAL))})",
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--family", action="append", default=None, help="held-out family to run (repeatable)"
    )
    ap.add_argument(
        "--irt-rank", type=int, default=None, help="rank of the unseen-family difficulty model"
    )
    ap.add_argument(
        "--fast", action="store_true", help="static figures only (no online replay, no kNN)"
    )
    ap.add_argument("--json", type=Path, default=HERE.parent / "results" / "router_transfer.json")
    args = ap.parse_args()
    extras = []
    for spec in args.extra_source:
        parsed = T.parse_external(spec)
        if parsed is None:
            ap.error(f"--extra-source {spec!r}: expected NAME=DIR")
        if not parsed[1].is_dir():
            print(f"no files for {parsed[0]} at {parsed[1]} (fetch them as bench/README.md says)")
            return 0
        extras.append(parsed)
    if not args.data.is_dir() and not extras:
        print(f"no outcome tables at {args.data}; nothing to do")
        return 0
    data = args.data if args.data.is_dir() else None
    shared = args.source if args.source is not None or extras else list(T.SOURCES)
    tables = [(name, lambda n=name: T.load_source(args.data, n)) for name in shared or []]
    tables += [(n, lambda n=n, d=d: T.load_external(n, d, data)) for n, d in extras]
    t0 = time.perf_counter()
    print(
        "| source | held-out family | test prompts | static | online | online @50 / @100 / @200 / "
        "@500 | AIQ router / zero (diff) | accuracy | CoP | best single (train) CoP | kNN | "
        "random | oracle CoP | earlier rule static |"
    )
    print("|---" * 14 + "|")
    rows: list[dict[str, Any]] = []
    for name, load in tables:
        o, p = load()
        rows += T.lofo(
            o,
            p,
            name=name,
            only=args.family,
            params=None if args.irt_rank is None else {"irt_rank": args.irt_rank},
            seeds=args.seeds,
            online=not args.fast,
            knn=not args.fast,
            compare_ratio_rule=True,
            on_row=lambda r: print(_line(r), flush=True),
        )
    summ = T.summarise(rows)
    old = T.summarise([{**r, "static": {**r["static"], **r["static_ratio_rule"]}} for r in rows])
    for k in ("static", "online", "knn", "curve_50", "curve_100", "curve_200", "curve_500"):
        v = summ.get(k)
        if v:
            print(f"{k}: median {v['median']:+.2f}, mean {v['mean']:+.2f}, min {v['min']:+.2f}")
    print(
        f"floor met on {summ['floor_met']} of {summ['n_families']} families "
        f"(gap >= 0: {summ['floor_gap_met']}, AIQ >= zero router: {summ['floor_aiq_met']}); "
        f"earlier rule: gap >= 0 on {old['floor_gap_met']}, AIQ on {old['floor_aiq_met']}, "
        f"static median {old['static']['median']:+.2f}, min {old['static']['min']:+.2f}"
    )
    elapsed = time.perf_counter() - t0
    print(f"total {elapsed:.0f}s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "command": "bench/router_transfer.py --seeds "
                + str(args.seeds)
                + ("" if args.irt_rank is None else f" --irt-rank {args.irt_rank}")
                + "".join(f" --source {n}" for n in args.source or [])
                + "".join(f" --extra-source {x}" for x in args.extra_source),
                "external_sources": {
                    n: {"origin": EXTERNAL[n].origin, "license": EXTERNAL[n].license}
                    for n, _ in extras
                },
                "rows": rows,
                "summary": summ,
                "summary_earlier_rule": old,
                "seconds": elapsed,
            },
            indent=1,
            default=float,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
