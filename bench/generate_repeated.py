"""Generate repeated samples with the CPU model, in the format of
``../shared/data/dev_samples_repeated.parquet``, for the offline simulators (issue 13).

    python bench/generate_repeated.py --dataset svamp --items 40 --samples 16 \\
        --out var/repeated_cpu.parquet
    python bench/generate_repeated.py --dataset generated --items 30 --samples 16

Per prompt: ``--samples`` samples at ``--temperature`` (seeds 0..n-1, one engine request),
each row ``prompt_id, dataset, model, strategy, sample_idx, correct, pred, output_tokens,
prompt_tokens, cost_usd, entropy`` (``entropy``: the sample's mean top-5 token entropy, the
difficulty-adaptive probe's feature; at ``--price-in`` / ``--price-out`` USD per Mtok, the demo price of
the CPU model by default). ``--dataset generated`` uses the project's generated arithmetic
problems; any other name is a dataset of ``../shared/data/dev_labeled_sets.parquet`` (read in
place; the output stays out of the repository: ``var/`` is ignored by git). Then:

    python bench/adaptive_sim.py --samples var/repeated_cpu.parquet --price-out 0.05 --cascade ''
"""

from __future__ import annotations

import argparse
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.engines import Prompt, SamplingConfig, get_engine  # noqa: E402
from workers.grading import grade  # noqa: E402
from workers.grading.extract import extract_answer  # noqa: E402
from workers.ledger import Prices, cost_of_tokens  # noqa: E402
from workers.strategies.difficulty import topk_entropy  # noqa: E402

LABELLED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev_labeled_sets.parquet"


def items(dataset: str, n: int, seed: int) -> list[tuple[str, str, str]]:
    """(prompt_id, prompt, gold) of the first ``n`` items of ``dataset``."""
    if dataset == "generated":
        from workers.grading.generated import generate_problems

        return [(f"gen_{i}", it.prompt, it.gold) for i, it in enumerate(generate_problems(n, seed))]
    import pandas as pd

    df = pd.read_parquet(LABELLED)
    df = df[df["dataset"] == dataset]
    if df.empty:
        raise SystemExit(f"no dataset {dataset!r} in {LABELLED}")
    df = df.sample(n=min(n, len(df)), random_state=seed) if n < len(df) else df
    return [(str(r.prompt_id), str(r.prompt), str(r.gold)) for r in df.itertuples()]


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="generated")
    ap.add_argument("--items", type=int, default=30)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--price-in", default="0.05")
    ap.add_argument("--price-out", default="0.05")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("var/repeated_cpu.parquet"))
    args = ap.parse_args(argv)

    engine = get_engine("llama_cpp", {"n_threads": args.threads, "n_seq_max": args.samples})
    prices = Prices(Decimal(args.price_in), Decimal(args.price_out))
    rows = []
    t0 = time.perf_counter()
    todo = items(args.dataset, args.items, args.seed)
    for j, (pid, prompt, gold) in enumerate(todo):
        sampling = SamplingConfig(n=args.samples, temperature=args.temperature, top_p=0.95,
                                  max_tokens=args.max_tokens, seed=args.seed,
                                  top_logprobs=5)  # fmt: skip
        res = engine.generate(Prompt.of(messages=[{"role": "user", "content": prompt}]), sampling)
        for s in res.samples:
            rows.append(
                {
                    "prompt_id": pid,
                    "dataset": args.dataset,
                    "model": "smollm2-135m",
                    "strategy": f"t{args.temperature:g}_sample",
                    "sample_idx": s.index,
                    "correct": int(grade(s.text, gold, "math")),
                    "pred": extract_answer(s.text, "math"),
                    "output_tokens": s.completion_tokens,
                    "prompt_tokens": s.prompt_tokens,
                    "cost_usd": float(cost_of_tokens(s.prompt_tokens, s.completion_tokens, prices)),
                    "entropy": (
                        sum(topk_entropy(t) for t in s.top_logprobs) / len(s.top_logprobs)
                        if s.top_logprobs
                        else 0.0
                    ),
                }
            )
        print(f"{j + 1}/{len(todo)} {pid}: {sum(r['correct'] for r in rows[-args.samples:])}"
              f"/{args.samples} right, {time.perf_counter() - t0:.0f}s", flush=True)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(args.out, index=False)
    print(f"wrote {len(rows)} samples to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
