"""Benchmark every strategy on generated labelled problems with the real CPU model.

    python bench/strategies.py --items 30 --k 4 --json bench/out/strategies.json

For each strategy: accuracy, mean prompt / generated tokens (aborted samples included),
mean wall seconds, the strategy layer's own time (wall minus time inside engine streams),
and cost-of-pass (total USD / number correct) at the demo price. Then the raw engine: the
same sampling requests sent straight to ``engine.generate`` with no strategy layer, timed
for the strategies that draw one plain request (single, majority_vote, best_of_n,
weighted_vote), to measure the layer's overhead end to end.

Runs in-process with one thread (``COSTPASS_LLAMA_THREADS``, default 1). Not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.engines import Prompt, get_engine  # noqa: E402
from workers.grading import grade  # noqa: E402
from workers.grading.generated import generate_problems  # noqa: E402
from workers.ledger import Prices, cost_usd  # noqa: E402
from workers.strategies import get_strategy  # noqa: E402

# The demo price of the CPU model (routerapp/services/bootstrap.py): USD per million tokens.
DEMO_PRICES = Prices(Decimal("0.05"), Decimal("0.05"))


def configs(k: int, max_tokens: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, strategy slug, params) for every strategy at sample budget k."""
    return [c for c in _configs(k, max_tokens) if c is not None]


def _configs(k: int, max_tokens: int) -> list[tuple[str, str, dict[str, Any]] | None]:
    common = {"temperature": 0.7, "top_p": 0.95, "max_tokens": max_tokens, "seed": 0}
    warm = max(1, k // 4)
    return [
        ("single(greedy)", "single", {**common, "temperature": 0.0}),
        (f"best_of_n@{k}(mean_logprob)", "best_of_n", {**common, "n": k}),
        (f"best_of_n@{k}(verifier)", "best_of_n", {**common, "n": k, "scorer": "verifier"}),
        (f"majority_vote@{k}", "majority_vote", {**common, "n": k}),
        (f"weighted_vote@{k}", "weighted_vote", {**common, "n": k}),
        (f"short_m_at_k@{k}(m=1)", "short_m_at_k", {**common, "k": k, "m": 1}),
        (f"short_m_at_k@{k}(m=2)", "short_m_at_k", {**common, "k": k, "m": min(2, k)}),
        (f"first_finish@{k}", "first_finish", {**common, "k": k}),
        (
            f"confidence_early_stop@{k}",
            "confidence_early_stop",
            {**common, "k": max(k, warm + 1), "warmup": warm, "window": 8},
        ),
        # Adaptive test-time compute (issue 13).
        (
            f"adaptive_consistency@{k}(beta0.95,w2)",
            "adaptive_consistency",
            {**common, "k": k, "window": min(2, k), "rule": "beta", "threshold": 0.95},
        ),
        (
            # The rule tuned on the fit half of the public repeated samples
            # (bench/adaptive_sim.py --tune), in windows of 2 (each window re-reads the prompt).
            f"adaptive_consistency@{k}(beta0.6,w2)",
            "adaptive_consistency",
            {**common, "k": k, "window": min(2, k), "rule": "beta", "threshold": 0.6},
        ),
        (
            f"adaptive_consistency@{k}(esc,w2)",
            "adaptive_consistency",
            {**common, "k": k, "window": min(2, k), "min_samples": 2, "rule": "esc"},
        )
        if k >= 2
        else None,
        (
            f"cascade(greedy->majority@{k},conf0.8)",
            "cascade",
            {
                "stages": [
                    {"strategy": "single", "params": {**common, "temperature": 0.0}},
                    {"strategy": "majority_vote", "params": {**common, "n": k}},
                ],
                "escalate_on": "confidence",
                "threshold": 0.8,
            },
        ),
        (
            "difficulty_adaptive(probe|maj@3|short-1@k)",
            "difficulty_adaptive",
            {
                "probe_tokens": max_tokens,
                "normal": {"strategy": "majority_vote", "params": {**common, "n": 3}},
                "hard": {"strategy": "short_m_at_k", "params": {**common, "k": k, "m": 1}},
            },
        ),
        (
            f"step_search(beam2x2,logprob,{max(1, max_tokens // 16)} steps)",
            "step_search",
            {
                **common,
                "method": "beam",
                "scorer": "logprob",
                "beam_width": 2,
                "expand": 2,
                "step_tokens": 16,
                "max_steps": max(1, max_tokens // 16),
            },
        ),
    ]


RAW_COMPARABLE = {"single", "majority_vote", "weighted_vote"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=30)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated strategy slugs to run (default: all)",
    )
    ap.add_argument(
        "--no-raw",
        action="store_true",
        help="skip the raw-engine comparison runs (the strategy layer's overhead)",
    )
    ap.add_argument(
        "--threads", type=int, default=int(os.environ.get("COSTPASS_LLAMA_THREADS", "1"))
    )
    args = ap.parse_args(argv)

    engine = get_engine("llama_cpp", {"n_threads": args.threads})
    items = generate_problems(args.items, seed=args.seed)
    report: dict[str, Any] = {
        "items": args.items,
        "k": args.k,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "prices_usd_per_mtok": {"input": "0.05", "output": "0.05"},
        "strategies": {},
    }
    t_start = time.perf_counter()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    for label, slug, params in configs(args.k, args.max_tokens):
        if only and slug not in only:
            continue
        strategy = get_strategy(slug)
        p = strategy.validate_params(params)
        rows = []
        for item in items:
            messages = [{"role": "user", "content": item.prompt}]
            cpu = time.process_time()
            res = strategy.run(engine, messages=messages, params=p, answer_kind=item.answer_kind)
            cpu = time.process_time() - cpu
            led = res.ledger
            row = {
                "correct": grade(res.answer, item.gold, item.answer_kind),
                "difficulty": item.difficulty,
                "prompt_tokens": led.prompt_tokens,
                "completion_tokens": led.completion_tokens,
                "aborted_tokens": led.aborted_completion_tokens,
                "samples": len(res.candidates),
                "scorer_tokens": led.scorer_prompt_tokens + led.scorer_completion_tokens,
                "escalated": bool(res.trace.get("escalated")),
                "wall_s": led.wall_s,
                "engine_wall_s": led.engine_wall_s,
                "cost": cost_usd(led, DEMO_PRICES),
                "cpu_s": cpu,
            }
            if slug in RAW_COMPARABLE and not args.no_raw:
                # The same request straight to the engine: no events, extraction or vote.
                cfg = p.sampling(
                    p.n if hasattr(p, "n") else 1, top_logprobs=1 if slug == "weighted_vote" else 0
                )
                t, c = time.perf_counter(), time.process_time()
                engine.generate(Prompt.of(messages=messages), cfg)
                row["raw_wall_s"] = time.perf_counter() - t
                row["raw_cpu_s"] = time.process_time() - c
            rows.append(row)
        n = len(rows)
        correct = sum(r["correct"] for r in rows)
        total_cost = sum((r["cost"] for r in rows), Decimal(0))
        entry: dict[str, Any] = {
            "strategy": slug,
            "params": p.model_dump(),
            "accuracy": correct / n,
            "accuracy_by_difficulty": {
                d: statistics.mean(r["correct"] for r in rows if r["difficulty"] == d)
                for d in sorted({r["difficulty"] for r in rows})
            },
            "mean_prompt_tokens": statistics.mean(r["prompt_tokens"] for r in rows),
            "mean_generated_tokens": statistics.mean(r["completion_tokens"] for r in rows),
            "mean_aborted_tokens": statistics.mean(r["aborted_tokens"] for r in rows),
            "mean_samples": statistics.mean(r["samples"] for r in rows),
            "mean_scorer_tokens": statistics.mean(r["scorer_tokens"] for r in rows),
            "escalation_rate": statistics.mean(r["escalated"] for r in rows),
            "mean_wall_s": statistics.mean(r["wall_s"] for r in rows),
            "mean_engine_wall_s": statistics.mean(r["engine_wall_s"] for r in rows),
            "layer_overhead_pct": 100
            * (
                sum(r["wall_s"] for r in rows) / max(1e-9, sum(r["engine_wall_s"] for r in rows))
                - 1
            ),
            "total_usd": str(total_cost),
            "cost_of_pass_usd": str(total_cost / correct) if correct else "inf",
        }
        if slug in RAW_COMPARABLE and not args.no_raw:
            raw = sum(r["raw_wall_s"] for r in rows)
            entry["mean_raw_engine_wall_s"] = raw / n
            entry["wall_vs_raw_engine_pct"] = 100 * (sum(r["wall_s"] for r in rows) / raw - 1)
            # CPU time is not inflated by other processes sharing the cores, unlike wall time.
            raw_cpu = sum(r["raw_cpu_s"] for r in rows)
            entry["cpu_vs_raw_engine_pct"] = 100 * (sum(r["cpu_s"] for r in rows) / raw_cpu - 1)
        report["strategies"][label] = entry
        if args.json:  # after every strategy, so that a long run leaves what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2, default=str))
        print(
            f"{label:30s} acc={entry['accuracy']:.3f} samples={entry['mean_samples']:5.2f} "
            f"gen_tok={entry['mean_generated_tokens']:7.1f} "
            f"wall={entry['mean_wall_s']:6.3f}s layer={entry['layer_overhead_pct']:+5.1f}% "
            + (
                f"vs_raw={entry['wall_vs_raw_engine_pct']:+5.1f}% "
                f"cpu_vs_raw={entry['cpu_vs_raw_engine_pct']:+5.1f}% "
                if "wall_vs_raw_engine_pct" in entry
                else ""
            )
            + f"CoP=${entry['cost_of_pass_usd'][:10]}",
            flush=True,
        )
    s = report["strategies"]
    maj_label = f"majority_vote@{args.k}"
    report["token_ratios_vs_majority_vote"] = {
        label: s[label]["mean_generated_tokens"] / s[maj_label]["mean_generated_tokens"]
        for label in (f"short_m_at_k@{args.k}(m=1)", f"first_finish@{args.k}")
        if label in s and maj_label in s
    }
    report["total_bench_s"] = time.perf_counter() - t_start
    print("generated tokens vs majority_vote:", json.dumps(report["token_ratios_vs_majority_vote"]))
    print(f"total {report['total_bench_s']:.0f}s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
