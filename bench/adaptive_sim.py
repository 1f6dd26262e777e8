"""Adaptive test-time compute simulated on repeated samples (issue 13).

    python bench/adaptive_sim.py --json bench/results/adaptive_sim.json
    python bench/adaptive_sim.py --samples var/repeated_cpu.parquet --price-in 0.05 --price-out 0.05

Over a table of repeated samples (default: ``../shared/data/dev_samples_repeated.parquet``,
GPT-4 on Game of 24 with io and chain-of-thought prompting, 100 samples per problem; or the
CPU model's own, from ``bench/generate_repeated.py``), per sample group:

- majority@k against adaptive consistency at the same k (Beta posterior 0.95 and ESC, windows
  of 2): accuracy, samples, output tokens, cost-of-pass, and the sample saving;
- cascades across groups (io majority@3 first, chain-of-thought majority@8 when the first
  stage's agreement is below a bar) against each stage alone.

Seeded draws without replacement (``--draws`` per prompt, averaged). Prints a table; writes
JSON with ``--json``. Not a timed test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.simulation import CascadeSim, SimConfig, simulate, simulate_cascades  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev_samples_repeated.parquet"
# GPT-4 list prices (USD per million tokens, ../shared/data/prices.csv).
GPT4_IN, GPT4_OUT = 30.0, 60.0


def summarise(df: Any, group_cols: list[str]) -> list[dict[str, Any]]:
    out = []
    for key, g in df.groupby(group_cols, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        correct = float(g["correct"].sum())
        cost = float(g["cost_usd"].sum())
        row = dict(zip(group_cols, key, strict=True))
        row.update(
            {
                "prompts": int(len(g)),
                "accuracy": float(g["correct"].mean()),
                "mean_samples": float(g["samples"].mean()),
                "mean_output_tokens": float(g["output_tokens"].mean()),
                "mean_cost_usd": float(g["cost_usd"].mean()),
                "cost_of_pass_usd": cost / correct if correct else float("inf"),
            }
        )
        if "escalated" in g.columns:
            row["escalation_rate"] = float(g["escalated"].mean())
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=Path, default=DEFAULT)
    ap.add_argument("--ks", default="8,16,32")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--price-out", type=float, default=GPT4_OUT, help="USD per Mtok output")
    ap.add_argument("--cascade", default="io_sample:3,cot_sample:8",
                    help="first:k1,second:k2 sample groups of the cascade ('' to skip)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    df = pd.read_parquet(args.samples)
    if "strategy" not in df.columns:
        df["strategy"] = "all"
    t0 = time.perf_counter()
    configs: list[SimConfig] = []
    for k in (int(x) for x in args.ks.split(",")):
        configs += [
            SimConfig("majority_vote", k),
            SimConfig("adaptive_consistency", k, rule="beta", threshold=0.95, window=2),
            SimConfig("adaptive_consistency", k, rule="esc", window=2),
        ]
    sim = simulate(df, configs, n_draws=args.draws, output_usd_per_mtok=args.price_out)
    table = summarise(sim, ["strategy", "config"])
    # The saving of each adaptive configuration against majority@k on the same group.
    by = {(r["strategy"], r["config"]): r for r in table}
    for r in table:
        if r["config"].startswith("adaptive_consistency@"):
            k = r["config"].split("@")[1].split(":")[0]
            base = by[(r["strategy"], f"majority_vote@{k}")]
            r["samples_saved_vs_majority"] = 1 - r["mean_samples"] / base["mean_samples"]
            r["accuracy_delta_points_vs_majority"] = 100 * (r["accuracy"] - base["accuracy"])
    report: dict[str, Any] = {
        "samples_file": str(args.samples),
        "draws": args.draws,
        "price_out_usd_per_mtok": args.price_out,
        "adaptive_consistency": table,
    }
    print(f"{'group':12s} {'configuration':38s} {'acc':>6s} {'samples':>8s} {'out_tok':>8s} "
          f"{'CoP $':>9s} {'saved':>6s} {'dAcc':>6s}")  # fmt: skip
    for r in table:
        saved = r.get("samples_saved_vs_majority")
        delta = r.get("accuracy_delta_points_vs_majority")
        print(
            f"{r['strategy']:12s} {r['config']:38s} {r['accuracy']:6.3f} {r['mean_samples']:8.2f} "
            f"{r['mean_output_tokens']:8.1f} {r['cost_of_pass_usd']:9.4f} "
            + (f"{saved:6.1%} {delta:+6.2f}" if saved is not None else "")
        )
    if args.cascade:
        (first, k1), (second, k2) = (x.split(":") for x in args.cascade.split(","))
        cascades = [CascadeSim(first, int(k1), second, int(k2), t) for t in (0.34, 0.5, 0.67, 0.99)]
        casc = summarise(
            simulate_cascades(df, cascades, n_draws=args.draws, output_usd_per_mtok=args.price_out),
            ["config"],
        )
        stages = [SimConfig("majority_vote", int(k1)), SimConfig("majority_vote", int(k2))]
        alone = summarise(
            simulate(df, stages, n_draws=args.draws, output_usd_per_mtok=args.price_out),
            ["strategy", "config"],
        )
        alone = [
            r
            for r in alone
            if (r["strategy"], r["config"])
            in ((first, f"majority_vote@{k1}"), (second, f"majority_vote@{k2}"))
        ]
        report["cascades"] = casc
        report["cascade_stages_alone"] = alone
        print()
        for r in casc:
            print(
                f"{r['config']:64s} acc={r['accuracy']:.3f} samples={r['mean_samples']:.2f} "
                f"escalated={r['escalation_rate']:.0%} CoP=${r['cost_of_pass_usd']:.4f}"
            )
        for r in alone:
            label = f"{r['strategy']} {r['config']} alone"
            print(f"{label:64s} acc={r['accuracy']:.3f} "
                  f"samples={r['mean_samples']:.2f} CoP=${r['cost_of_pass_usd']:.4f}")  # fmt: skip
    report["total_s"] = time.perf_counter() - t0
    print(f"total {report['total_s']:.0f}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
