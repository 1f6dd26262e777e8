"""Adaptive test-time compute simulated on repeated samples (issue 13).

    python bench/adaptive_sim.py --json bench/results/adaptive_sim.json
    python bench/adaptive_sim.py --samples var/repeated_cpu.parquet --price-in 0.05 --price-out 0.05

Over a table of repeated samples (default: ``../shared/data/dev_samples_repeated.parquet``,
GPT-4 on Game of 24 with io and chain-of-thought prompting, 100 samples per problem; or the
CPU model's own, from ``bench/generate_repeated.py``), per sample group:

- majority@k against adaptive consistency at the same k (Beta posterior 0.95 and ESC, windows
  of 2): accuracy, samples, output tokens, cost-of-pass, and the sample saving;
- cascades across groups (io majority@3 first, chain-of-thought majority@8 when the first
  stage's agreement is below a bar) against each stage alone, and the bar *learned* on half the
  prompts (least cost-of-pass, ``workers.strategies.cascade.fit_threshold``) judged on the other;
- adaptive consistency with its stopping rule tuned on half the prompts (a grid of Beta /
  Dirichlet thresholds and ESC windows, the fewest samples within 1 point of majority@k there)
  and judged against majority@k on the other half (``--tune``);
- difficulty-adaptive (a drawn probe classified easy / normal / hard by the strategy's own
  classifier fitted on half the prompts, its bars tuned there) against fixed strategies on the
  other half (``--difficulty``);
- step search replayed from the Tree-of-Thoughts BFS log (``--tot-bfs PATH``, the same 100
  problems; see ``workers/simulation/step_search.py``).

The fit / held-out split is by a stable hash of the prompt id (``routing.simulation.hash_unit``
< 0.5 is fitted on).

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

from routerapp.routing.simulation import hash_unit  # noqa: E402
from workers.simulation import (  # noqa: E402
    CascadeSim,
    DifficultySim,
    SimConfig,
    cascade_fit_rows,
    simulate,
    simulate_cascades,
    simulate_difficulty,
)
from workers.simulation.adaptive import tune_stopping_rule  # noqa: E402
from workers.simulation.step_search import (  # noqa: E402
    coverage,
    fit_call_tokens,
    simulate_step_search,
)
from workers.strategies.cascade import fit_threshold  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev_samples_repeated.parquet"
# GPT-4 list prices (USD per million tokens, ../shared/data/prices.csv).
GPT4_IN, GPT4_OUT = 30.0, 60.0


def split(prompt_ids: Any) -> tuple[list[str], list[str]]:
    """(fit, held-out) prompt ids by a stable hash (the same split in every section)."""
    ids = sorted({str(p) for p in prompt_ids})
    fit = [p for p in ids if hash_unit(p) < 0.5]
    return fit, [p for p in ids if p not in set(fit)]


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
    ap.add_argument("--tune", action="store_true", help="tune the stopping rule on half")
    ap.add_argument("--tune-drops", default="1,0",
                    help="accuracy drops (points) allowed on the fit half, one tuning each")  # fmt: skip
    ap.add_argument("--difficulty", action="store_true", help="simulate difficulty_adaptive")
    ap.add_argument("--tot-bfs", type=Path, default=None,
                    help="the ToT Game of 24 BFS log JSON: replay step search")  # fmt: skip
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
        # The bar learned on the fit half, judged on the held-out half with the fixed bars.
        fit_ids, held = split(df["prompt_id"])
        rows = cascade_fit_rows(df, first, int(k1), second, int(k2), prompts=fit_ids,
                                n_draws=args.draws, output_usd_per_mtok=args.price_out)  # fmt: skip
        learned = fit_threshold(rows)
        bars = sorted({0.34, 0.5, 0.67, 0.99, 0.0, round(learned.threshold, 4)})
        judged = summarise(
            simulate_cascades(
                df[df["prompt_id"].isin(held)],
                [CascadeSim(first, int(k1), second, int(k2), t) for t in bars],
                n_draws=args.draws,
                output_usd_per_mtok=args.price_out,
            ),
            ["config"],
        )
        for r in judged:
            r["learned"] = r["config"].endswith(f"agree>={learned.threshold:g})")
        report["cascade_learned_threshold"] = {
            "fit_prompts": len(fit_ids),
            "held_out_prompts": len(held),
            "fit": learned.model_dump(),
            "held_out": judged,
        }
        print(f"\nlearned bar {learned.threshold:.3f} (fit CoP ${learned.cost_of_pass_usd:.4f}); "
              f"held-out:")  # fmt: skip
        for r in judged:
            print(f"  {r['config']:64s} acc={r['accuracy']:.3f} CoP=${r['cost_of_pass_usd']:.4f}"
                  + (" <- learned" if r["learned"] else ""))  # fmt: skip
    if args.tune:
        report["tuned_adaptive_consistency"] = tuned(df, args)
    if args.difficulty:
        report["difficulty_adaptive"] = difficulty(df, args)
    if args.tot_bfs:
        report["step_search"] = step_search(args)
    report["total_s"] = time.perf_counter() - t0
    print(f"total {report['total_s']:.0f}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


def tuned(df: Any, args: Any) -> list[dict[str, Any]]:
    """The stopping rule tuned on the fit half; both it and majority@k on the held-out half."""
    fit_ids, held = split(df["prompt_id"])
    out = []
    print(f"\ntuned adaptive consistency (fit on {len(fit_ids)}, judged on {len(held)} prompts)")
    for drop, k in ((float(d), int(x)) for d in args.tune_drops.split(",")
                    for x in args.ks.split(",")):  # fmt: skip
        for rule in tune_stopping_rule(df, k, fit_prompts=fit_ids, n_draws=max(1, args.draws // 2),
                                       max_accuracy_drop=drop / 100,
                                       output_usd_per_mtok=args.price_out):  # fmt: skip
            group = dict(zip(["model", "strategy"][-len(rule.group) :], rule.group, strict=False))
            sub = df[df["prompt_id"].isin(held)]
            for col, val in group.items():
                sub = sub[sub[col] == val]
            sim = simulate(sub, [SimConfig("majority_vote", k), rule.config], n_draws=args.draws,
                           output_usd_per_mtok=args.price_out)  # fmt: skip
            rows = {r["config"]: r for r in summarise(sim, ["config"])}
            base, ada = rows[f"majority_vote@{k}"], rows[rule.config.name]
            entry = {
                **group,
                "k": k,
                "allowed_fit_drop_points": drop,
                "rule": rule.config.name,
                "fit": {
                    "prompts": rule.fit_prompts,
                    "accuracy": rule.fit_accuracy,
                    "mean_samples": rule.fit_samples,
                    "majority_accuracy": rule.fit_majority_accuracy,
                },  # fmt: skip
                "held_out_majority": base,
                "held_out_adaptive": ada,
                "samples_saved_vs_majority": 1 - ada["mean_samples"] / base["mean_samples"],
                "accuracy_delta_points_vs_majority": 100 * (ada["accuracy"] - base["accuracy"]),
            }
            out.append(entry)
            print(f"  drop<={drop:g} {group.get('strategy', ''):11s} k={k:2d} {rule.config.name:38s} "
                  f"held-out acc {ada['accuracy']:.3f} vs {base['accuracy']:.3f}, samples "
                  f"{ada['mean_samples']:.2f} ({entry['samples_saved_vs_majority']:.1%} saved), "
                  f"CoP ${ada['cost_of_pass_usd']:.4g} vs ${base['cost_of_pass_usd']:.4g}")  # fmt: skip
    return out


def difficulty(df: Any, args: Any) -> dict[str, Any]:
    """Difficulty-adaptive (classifier fitted and bars tuned on the fit half) and fixed
    strategies, all on the held-out half."""
    fit_ids, held = split(df["prompt_id"])
    configs = [
        DifficultySim(None, SimConfig("majority_vote", 3), SimConfig("short_m_at_k", 8, m=1)),
        DifficultySim(None, SimConfig("majority_vote", 3), SimConfig("majority_vote", 8)),
    ]
    out: dict[str, Any] = {"fit_prompts": len(fit_ids), "held_out_prompts": len(held)}
    for tune in (False, True):
        sim = simulate_difficulty(df, configs, fit_prompts=fit_ids, tune_thresholds=tune,
                                  n_draws=args.draws, output_usd_per_mtok=args.price_out)  # fmt: skip
        sim = sim[~sim["in_fit"]]
        table = summarise(sim, ["strategy", "config"])
        for r in table:
            g = sim[(sim["strategy"] == r["strategy"]) & (sim["config"] == r["config"])]
            r.update({c: float(g[c].mean()) for c in ("easy", "normal", "hard")})
            r["easy_above"], r["hard_below"] = (
                float(g["easy_above"].iloc[0]),
                float(g["hard_below"].iloc[0]),
            )
        out["tuned_bars" if tune else "default_bars"] = table
    fixed = [SimConfig("majority_vote", 1), SimConfig("majority_vote", 3),
             SimConfig("majority_vote", 8), SimConfig("short_m_at_k", 8, m=1)]  # fmt: skip
    sim = simulate(df[df["prompt_id"].isin(held)], fixed, n_draws=args.draws,
                   output_usd_per_mtok=args.price_out)  # fmt: skip
    out["fixed"] = summarise(sim, ["strategy", "config"])
    print(f"\ndifficulty-adaptive (fit on {len(fit_ids)}, judged on {len(held)} prompts)")
    for label in ("default_bars", "tuned_bars", "fixed"):
        for r in out[label]:
            cls = (f" easy/normal/hard {r['easy']:.2f}/{r['normal']:.2f}/{r['hard']:.2f}"
                   if "easy" in r else "")  # fmt: skip
            print(f"  {label:12s} {r['strategy']:11s} {r['config']:62s} acc={r['accuracy']:.3f} "
                  f"samples={r['mean_samples']:.2f} tok={r['mean_output_tokens']:.0f} "
                  f"CoP=${r['cost_of_pass_usd']:.4g}{cls}")  # fmt: skip
    return out


def step_search(args: Any) -> dict[str, Any]:
    """Beam widths 1-5 replayed from the ToT BFS log, on all it can replay and on the problems
    every width replays (the fair comparison)."""
    records = json.loads(args.tot_bfs.read_text())
    widths = [1, 2, 3, 4, 5]
    rates, err = fit_call_tokens(records)
    sim = simulate_step_search(records, widths, input_usd_per_mtok=GPT4_IN,
                               output_usd_per_mtok=GPT4_OUT, call_tokens=rates)  # fmt: skip
    common = set.intersection(*(set(g["prompt_id"]) for _, g in sim.groupby("config")))
    out: dict[str, Any] = {
        "log": str(args.tot_bfs),
        "call_token_rates": rates.__dict__,
        "call_token_fit_error": err,
        "coverage": {str(b): c for b, c in coverage(records, widths).items()},
        "common_problems": len(common),
    }
    for label, part in (("replayable", sim), ("common", sim[sim["prompt_id"].isin(common)])):
        table = summarise(part, ["config"])
        for r in table:
            g = part[part["config"] == r["config"]]
            r["mean_scorer_tokens"] = float(g["scorer_tokens"].mean())
            r["mean_scorer_calls"] = float(g["scorer_calls"].mean())
            r["mean_input_tokens"] = float(g["input_tokens"].mean())
        out[label] = table
    print(f"\nstep search replayed from {args.tot_bfs} (per-call token fit: {err})")
    for label in ("replayable", "common"):
        for r in out[label]:
            print(f"  {label:10s} {r['config']:26s} n={r['prompts']:3d} acc={r['accuracy']:.3f} "
                  f"proposals={r['mean_samples']:.1f} out_tok={r['mean_output_tokens']:.0f} "
                  f"scorer_tok={r['mean_scorer_tokens']:.0f} CoP=${r['cost_of_pass_usd']:.3f}")  # fmt: skip
    return out


if __name__ == "__main__":
    raise SystemExit(main())
