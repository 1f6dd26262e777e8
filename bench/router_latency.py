"""Decision latency of the router, one prompt at a time, features included.

Fits a router on each suite's training split (or loads ``--model``), then times
``Router.decide(prompt, task)`` on the test prompts one by one (wall clock, single thread), plus the
online forms: ``decide(explore=True)`` and ``observe``. Prints p50 / p95 / p99 / max in
milliseconds.

    .venv/bin/python bench/router_latency.py --suites ../shared/suites [--only mmlu-pro-dev] [--n 2000] \
        [--json bench/results/router_latency.json]

``--json`` also writes every figure (milliseconds), with the machine's load average at the start
and the end, so that a figure of record says how quiet the machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routerapp.routing import Router, fit_router  # noqa: E402
from routerapp.routing.router import single_threaded  # noqa: E402
from routerapp.routing.tables import load_suite  # noqa: E402


def _ms(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1e3
    return {
        "p50": round(float(np.percentile(a, 50)), 4),
        "p95": round(float(np.percentile(a, 95)), 4),
        "p99": round(float(np.percentile(a, 99)), 4),
        "max": round(float(a.max()), 4),
    }


def _pct(xs: list[float]) -> str:
    m = _ms(xs)
    return f"p50 {m['p50']:.3f}  p95 {m['p95']:.3f}  p99 {m['p99']:.3f}  max {m['max']:.3f} ms"


def run(suite_dir: Path, n: int, model: Path | None) -> dict[str, object]:
    """Time one suite, print its figures and return them."""
    suite = load_suite(suite_dir, need_test=True)
    t0 = time.perf_counter()
    router = (
        Router.load(model)
        if model
        else fit_router(suite.train_outcomes, suite.train_prompts, suite.candidates)
    )
    fit_s = time.perf_counter() - t0
    prompts = suite.test_prompts if suite.test_prompts is not None else suite.train_prompts
    rows = prompts.sample(n=min(n, len(prompts)), random_state=0, replace=False)
    texts = rows["prompt"].tolist()
    tags = rows["dataset"].tolist()
    chars = np.array([len(t) for t in texts])
    for t, g in zip(texts[:20], tags[:20], strict=False):  # warm-up
        router.decide(t, g)
    static: list[float] = []
    online: list[float] = []
    obs: list[float] = []
    with single_threaded():
        for t, g in zip(texts, tags, strict=True):
            s = time.perf_counter()
            router.decide(t, g)
            static.append(time.perf_counter() - s)
        for t, g in zip(texts, tags, strict=True):
            s = time.perf_counter()
            d = router.decide(t, g, explore=True)
            online.append(time.perf_counter() - s)
            s = time.perf_counter()
            router.observe(t, g, d.config_id, 1.0, d.cost_usd)
            obs.append(time.perf_counter() - s)
        # A task tag never seen in training (anchored rule, online posterior of the new tag).
        unseen: list[float] = []
        unseen_online: list[float] = []
        unseen_explore: list[float] = []
        for t in texts:
            # Interleaved, so that the load of the machine hits both alike: the difference is
            # the new-tag probe (posterior draws, one Cholesky of the tag's covariance).
            s = time.perf_counter()
            router.decide(t, "never-seen-family")
            unseen.append(time.perf_counter() - s)
            s = time.perf_counter()
            router.decide(t, "never-seen-family", explore=True)
            unseen_explore.append(time.perf_counter() - s)
        for t in texts:
            s = time.perf_counter()
            d = router.decide(t, "never-seen-family", explore=True)
            router.observe(t, "never-seen-family", d.config_id, 1.0, d.cost_usd)
            unseen_online.append(time.perf_counter() - s)
    print(
        f"== {suite_dir.name}: {len(router.config_ids)} configs, {len(texts)} prompts "
        f"(chars p50 {int(np.median(chars))}, max {chars.max()}), "
        + (f"fit {fit_s:.1f}s" if model is None else "loaded")
    )
    print(f"  decide              {_pct(static)}")
    print(f"  decide(explore)     {_pct(online)}")
    print(f"  observe             {_pct(obs)}")
    print(f"  decide (unseen tag) {_pct(unseen)}")
    print(f"  decide(explore), unseen tag {_pct(unseen_explore)}")
    print(f"  decide(explore)+observe, unseen tag {_pct(unseen_online)}")
    return {
        "configs": len(router.config_ids),
        "prompts": len(texts),
        "fit_s": None if model is not None else round(fit_s, 2),
        "decide": _ms(static),
        "decide_explore": _ms(online),
        "observe": _ms(obs),
        "decide_unseen_tag": _ms(unseen),
        "decide_explore_unseen_tag": _ms(unseen_explore),
        "decide_explore_observe_unseen_tag": _ms(unseen_online),
    }


def main() -> int:
    """Parse arguments and time every suite."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--suites", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "suites"
    )
    ap.add_argument("--only", action="append", default=None, help="suite name (repeatable)")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument(
        "--model", type=Path, default=None, help="time a saved router instead (needs one --only)"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    if not args.suites.is_dir():
        print(f"suites directory not found: {args.suites}", file=sys.stderr)
        return 2
    names = args.only or sorted(
        p.name for p in args.suites.iterdir() if (p / "candidates.csv").exists()
    )
    load_start = os.getloadavg()
    suites = {name: run(args.suites / name, args.n, args.model) for name in names}
    if args.json:
        out = {
            "command": " ".join(sys.argv),
            "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "unit": "ms, one decision at a time, wall clock, single thread",
            "suites": suites,
        }
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
