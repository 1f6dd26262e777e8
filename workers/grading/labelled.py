"""Loader for labelled sets in the format of ``shared/data/dev_labeled_sets.parquet``.

Columns: ``dataset, prompt_id, prompt, gold`` (required) and ``extra`` (optional JSON; for
MMLU-Pro it holds the options, which are appended to the prompt as lettered lines).
Rows without a gold answer are skipped. The file is read from the path the caller gives;
nothing is copied into the repository.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from workers.grading.types import LabelledItem

#: Answer kind per known dataset; unknown datasets are guessed from their gold labels.
DATASET_ANSWER_KINDS: dict[str, str] = {
    "gsm8k_test": "math",
    "gsm_hard": "math",
    "svamp": "math",
    "asdiv": "math",
    "mawps": "math",
    "ocw": "math",
    "hungarian_exam": "math",
    "mathqa": "mcq",
    "mmlu_stem": "mcq",
    "mmlu_pro": "mcq",
    "gpqa_diamond": "mcq",
    "sat_math": "mcq",
    "cruxeval_o": "text",
}

_LETTERS = "ABCDEFGHIJKLMNOP"
REQUIRED_COLUMNS = ("dataset", "prompt_id", "prompt", "gold")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _guess_kind(gold: str) -> str:
    g = gold.strip().strip("()")
    if len(g) == 1 and g.upper() in _LETTERS[:10]:
        return "mcq"
    try:
        float(g.replace(",", ""))
    except ValueError:
        return "text"
    return "math"


def _with_options(prompt: str, extra: Any) -> str:
    if _missing(extra):
        return prompt
    try:
        data = json.loads(extra) if isinstance(extra, str) else dict(extra)
        options = data.get("options")
        if isinstance(options, str):
            options = json.loads(options)
    except (ValueError, TypeError, AttributeError):
        return prompt
    if not isinstance(options, list) or not options:
        return prompt
    lines = [f"{_LETTERS[i]}. {opt}" for i, opt in enumerate(options[: len(_LETTERS)])]
    return prompt.rstrip() + "\nOptions:\n" + "\n".join(lines)


def load_labelled_set(
    path: str | Path, dataset: str | list[str] | None = None, limit: int | None = None
) -> list[LabelledItem]:
    """Return the labelled items of the file at ``path`` (parquet, csv or jsonl).

    ``dataset`` keeps only that dataset (or those datasets); ``limit`` keeps the first
    ``limit`` items per dataset, in file order. Raise ``FileNotFoundError`` when the path
    does not exist and ``ValueError`` when a required column is missing.
    """
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"labelled set not found: {p}")
    if p.suffix == ".parquet":
        df = pd.read_parquet(p)
    elif p.suffix == ".csv":
        df = pd.read_csv(p, dtype=str)
    elif p.suffix in (".jsonl", ".json"):
        df = pd.read_json(p, lines=p.suffix == ".jsonl", dtype=False)
    else:
        raise ValueError(f"unsupported labelled-set format: {p.suffix}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"labelled set {p} lacks columns: {', '.join(missing)}")
    if dataset is not None:
        wanted = [dataset] if isinstance(dataset, str) else list(dataset)
        df = df[df["dataset"].isin(wanted)]
    items: list[LabelledItem] = []
    per_dataset: dict[str, int] = {}
    has_extra = "extra" in df.columns
    for row in df.itertuples(index=False):
        gold = row.gold
        if _missing(gold):
            continue
        name = str(row.dataset)
        if limit is not None and per_dataset.get(name, 0) >= limit:
            continue
        gold = str(gold)
        kind = DATASET_ANSWER_KINDS.get(name) or _guess_kind(gold)
        prompt = str(row.prompt)
        if has_extra:
            prompt = _with_options(prompt, row.extra)
        items.append(
            LabelledItem(
                uid=f"{name}::{row.prompt_id}",
                prompt=prompt,
                gold=gold,
                answer_kind=kind,
                difficulty=None,
                family=name,
            )
        )
        per_dataset[name] = per_dataset.get(name, 0) + 1
    return items
