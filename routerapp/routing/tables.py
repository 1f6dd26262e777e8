"""Reading and validating outcome, prompt and candidate tables.

Schemas (the suite format of ../shared/suites, also what the product's query log is exported to):

- outcomes: ``prompt_uid, config_id, correct`` required; ``dataset, model, strategy, cost_usd,
  input_tokens, output_tokens, latency_s`` optional. ``correct`` is in [0, 1] (fractions allowed).
- prompts: ``prompt_uid`` required; ``dataset`` (task tag) and ``prompt`` (text) optional, both may
  be empty.
- candidates: ``config_id, model`` required; ``strategy, samples, input_usd_per_mtok,
  output_usd_per_mtok, max_tokens`` optional.

Every problem raises :class:`TableError` with a one-line message naming the file or column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from routerapp.routing.types import Candidate, TableError

OUTCOME_REQUIRED = ("prompt_uid", "config_id", "correct")
PROMPT_REQUIRED = ("prompt_uid",)
CANDIDATE_REQUIRED = ("config_id", "model")


def read_table(path: str | Path) -> pd.DataFrame:
    """Return the table stored at ``path`` (.parquet or .csv); raise TableError when unreadable."""
    p = Path(path)
    if not p.is_file():
        raise TableError(f"missing file: {p}")
    try:
        if p.suffix.lower() == ".csv":
            return pd.read_csv(p)
        return pd.read_parquet(p)
    except (
        OSError,
        ValueError,
    ) as exc:  # pyarrow's ArrowInvalid and pandas' ParserError are ValueErrors
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TableError(f"cannot read {p}: {first}") from exc


def _require(df: pd.DataFrame, cols: tuple[str, ...], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise TableError(f"{what}: missing column(s) {', '.join(missing)}")


def _as_str(s: pd.Series) -> pd.Series:
    return s.astype(object).where(s.notna(), "").astype(str)


def normalise_outcomes(df: pd.DataFrame, what: str = "outcomes") -> pd.DataFrame:
    """Return a clean copy of an outcome table; raise TableError on a malformed one."""
    if not isinstance(df, pd.DataFrame):
        raise TableError(f"{what}: expected a table")
    _require(df, OUTCOME_REQUIRED, what)
    out = pd.DataFrame(
        {
            "prompt_uid": _as_str(df["prompt_uid"]),
            "config_id": _as_str(df["config_id"]),
            "dataset": _as_str(df["dataset"]) if "dataset" in df else "",
        }
    )
    try:
        out["correct"] = pd.to_numeric(df["correct"], errors="raise").astype(float).to_numpy()
        for col in ("cost_usd", "input_tokens", "output_tokens", "latency_s"):
            out[col] = (
                pd.to_numeric(df[col], errors="raise").astype(float).to_numpy()
                if col in df
                else np.nan
            )
    except (TypeError, ValueError) as exc:
        raise TableError(f"{what}: non-numeric values in a numeric column ({exc})") from exc
    out = out[out["correct"].notna()]
    if out.empty:
        raise TableError(f"{what}: no rows with a 'correct' value")
    c = out["correct"].to_numpy()
    if (c < 0).any() or (c > 1).any():
        raise TableError(f"{what}: 'correct' must lie in [0, 1]")
    cost = out["cost_usd"].to_numpy()
    if np.any(cost[np.isfinite(cost)] < 0):
        raise TableError(f"{what}: negative cost_usd")
    if (out["prompt_uid"] == "").any() or (out["config_id"] == "").any():
        raise TableError(f"{what}: empty prompt_uid or config_id")
    return out.reset_index(drop=True)


def normalise_prompts(df: pd.DataFrame, what: str = "prompts") -> pd.DataFrame:
    """Return ``prompt_uid, dataset, prompt`` (strings, empty when absent); one row per prompt."""
    if not isinstance(df, pd.DataFrame):
        raise TableError(f"{what}: expected a table")
    _require(df, PROMPT_REQUIRED, what)
    out = pd.DataFrame(
        {
            "prompt_uid": _as_str(df["prompt_uid"]),
            "dataset": _as_str(df["dataset"]) if "dataset" in df else "",
            "prompt": _as_str(df["prompt"]) if "prompt" in df else "",
        }
    )
    if (out["prompt_uid"] == "").any():
        raise TableError(f"{what}: empty prompt_uid")
    return out.drop_duplicates("prompt_uid").reset_index(drop=True)


def _opt_float(v: object) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise TableError(f"candidates: bad number {v!r}") from exc
    return None if math.isnan(f) else f


def candidates_from_frame(df: pd.DataFrame, what: str = "candidates") -> list[Candidate]:
    """Return Candidates from a table with ``config_id, model[, strategy, samples, prices...]``."""
    if not isinstance(df, pd.DataFrame):
        raise TableError(f"{what}: expected a table")
    _require(df, CANDIDATE_REQUIRED, what)
    if df.empty:
        raise TableError(f"{what}: no candidates")
    cands: list[Candidate] = []
    seen: set[str] = set()
    for row in df.to_dict("records"):
        cid = "" if row.get("config_id") is None else str(row["config_id"])
        if cid in seen:
            raise TableError(f"{what}: duplicate config_id {cid!r}")
        seen.add(cid)
        strategy = row.get("strategy")
        samples = _opt_float(row.get("samples"))
        max_tokens = _opt_float(row.get("max_tokens"))
        cands.append(
            Candidate(
                config_id=cid,
                model=""
                if row.get("model") is None or row.get("model") != row.get("model")
                else str(row["model"]),
                strategy="single" if strategy is None or strategy != strategy else str(strategy),
                samples=None if samples is None else int(samples),
                input_usd_per_mtok=_opt_float(row.get("input_usd_per_mtok")),
                output_usd_per_mtok=_opt_float(row.get("output_usd_per_mtok")),
                max_tokens=None if max_tokens is None else int(max_tokens),
            )
        )
    return cands


def coerce_candidates(candidates: pd.DataFrame | list[Candidate]) -> list[Candidate]:
    """Return a list of Candidates from a table or a list (checking ids are unique)."""
    if isinstance(candidates, pd.DataFrame):
        return candidates_from_frame(candidates)
    cands = list(candidates)
    if not cands:
        raise TableError("candidates: no candidates")
    ids = [c.config_id for c in cands]
    if len(set(ids)) != len(ids):
        raise TableError("candidates: duplicate config_id")
    return cands


@dataclass
class Suite:
    """A routing problem on disk (see ../shared/data/README.md 'Ready-made routing suites')."""

    path: Path
    candidates: list[Candidate]
    train_outcomes: pd.DataFrame
    train_prompts: pd.DataFrame
    test_outcomes: pd.DataFrame | None = None
    test_prompts: pd.DataFrame | None = None


def load_suite(path: str | Path, *, need_test: bool = False) -> Suite:
    """Read a suite directory; raise TableError when a required file is missing or malformed."""
    d = Path(path)
    if not d.is_dir():
        raise TableError(f"suite directory not found: {d}")
    cands = candidates_from_frame(read_table(d / "candidates.csv"), f"{d / 'candidates.csv'}")
    train_o = normalise_outcomes(
        read_table(d / "train_outcomes.parquet"), str(d / "train_outcomes.parquet")
    )
    train_p = normalise_prompts(
        read_table(d / "train_prompts.parquet"), str(d / "train_prompts.parquet")
    )
    test_o = test_p = None
    if need_test or (d / "test_outcomes.parquet").exists():
        test_o = normalise_outcomes(
            read_table(d / "test_outcomes.parquet"), str(d / "test_outcomes.parquet")
        )
    if (d / "test_prompts.parquet").exists():
        test_p = normalise_prompts(
            read_table(d / "test_prompts.parquet"), str(d / "test_prompts.parquet")
        )
    elif need_test and test_o is not None:
        test_p = test_o.drop_duplicates("prompt_uid")[["prompt_uid", "dataset"]].assign(prompt="")
    return Suite(d, cands, train_o, train_p, test_o, test_p)


def check_config_ids(outcomes: pd.DataFrame, candidates: list[Candidate], what: str) -> None:
    """Raise UnknownConfigError when ``outcomes`` names a config id that is not a candidate."""
    from routerapp.routing.types import UnknownConfigError

    known = {c.config_id for c in candidates}
    unknown = sorted(set(outcomes["config_id"].unique()) - known)
    if unknown:
        more = f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise UnknownConfigError(
            f"{what}: unknown config id(s) {', '.join(map(repr, unknown[:3]))}{more}"
        )
