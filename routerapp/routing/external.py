"""Public outcome sources outside ../shared/data: readers for files fetched from GitHub by the caller.

Each source is a public repository whose per-prompt, per-model results are committed there. The
files are never copied into this repository: the caller fetches them (bench/README.md gives the
exact ``git clone`` / ``git checkout`` for each, into ``var/`` or anywhere) and passes the
directory. A reader turns that directory into raw rows in the format of
``../shared/data/dev_outcomes_single.parquet`` (``prompt_uid, dataset, model, strategy, correct,
input_tokens, output_tokens, output_tokens_est, cost_usd``) plus a prompts frame (``prompt_uid,
dataset, prompt``); ``transfer.load_external`` prices them (``simulation.outcomes_from_raw``) and,
where a source declares ``pool_with``, pools them with a source of ../shared/data that shares its
models, so leave-one-family-out has several families to hold out.

Task tags come from the data's own task / dataset names (``types.family_of`` groups them).

    EXTERNAL["zeroeval-math"].read(Path("var/zeroeval"))   # -> (raw rows, prompts)

Registered sources (one registry, :data:`EXTERNAL`; ``@external_source`` adds to it):

- ``zeroeval-math``: WildEval/ZeroEval ``result_dirs/math-l5/*.json`` (Apache-2.0): 43 models on
  721 MATH level-5 problems, zero-shot CoT in a JSON answer format, greedy; graded with ZeroEval's
  own rule (``src/evaluation/math_eval.py``: the ``answer`` field of the first JSON object, first
  number equal). Pooled with the shared ``zeroeval`` source (GSM8K, CRUXEval-O of the same models).
- ``mot-gpt4``: MurongYue/LLM_MoT_cascade ``GPT4_result/*.json`` (no license file: internal
  evaluation only): GPT-4 on GSM8K, ASDiv, TabMWP, BBH date understanding and navigate, and CREPE,
  with chain-of-thought and program-of-thought prompts (two few-shot variants each), greedy and 3
  samples; configurations: greedy, first sample, and majority of the 3 samples. Graded with the
  repository's ``finqa_equal`` rule (``Evaluation/utils.py``); every sample is billed.
- ``routerarena-sub10``: RouteWorks/RouterArena ``cached_results/*.jsonl`` (Apache-2.0): the
  graded ``sub_10`` split (809 prompts of 30+ datasets) for the models whose results are committed
  with their evaluation, real token counts and real USD (``inference_cost``); the score is the
  benchmark's own metric in [0, 1] (accuracy, exact match, METEOR for translation / NarrativeQA).

- ``lcb-scenarios``: LiveCodeBench/livecodebench.github.io ``src/mocks/performances_*.json`` (the
  leaderboard's per-problem results; no license file: internal evaluation only): code execution
  (479 samples, 37 models, direct and CoT), test output prediction (442 cases, 37 models) and
  self-repair (713 problems, 17 models); pass@1 over the leaderboard's samples (a fraction). The
  files carry no prompt text and no token counts: tokens are per-scenario proxies
  (:data:`LCB_TOKENS`), so cost differs between models by list price only.

Prices: ``prices.csv`` of ../shared/data when the caller gives it; :data:`LIST_PRICES` fills the
models it lacks (list prices, sources in the table).
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from routerapp.routing.types import TableError

Reader = Callable[[Path], tuple[pd.DataFrame, pd.DataFrame]]


@dataclass(frozen=True)
class ExternalSource:
    """A public outcome source read from a fetched directory."""

    slug: str
    origin: str  # repository URL and the commit the figures were made from
    license: str
    read: Reader  # directory -> (raw rows, prompts); raise TableError when the files are absent
    pool_with: str | None = None  # a ``transfer.SOURCES`` name to pool with (same models)


EXTERNAL: dict[str, ExternalSource] = {}


def external_source(
    slug: str, *, origin: str, license: str, pool_with: str | None = None
) -> Callable[[Reader], Reader]:
    """Register the decorated reader under ``slug`` in :data:`EXTERNAL`."""

    def deco(fn: Reader) -> Reader:
        EXTERNAL[slug] = ExternalSource(slug, origin, license, fn, pool_with)
        return fn

    return deco


def get_external(slug: str) -> ExternalSource:
    """Return the registered source ``slug``; raise TableError naming the known ones."""
    if slug not in EXTERNAL:
        raise TableError(
            f"unknown external outcome source {slug!r}; known: {', '.join(sorted(EXTERNAL))}"
        )
    return EXTERNAL[slug]


# List prices (USD per million tokens) for models of these sources that ../shared/data/prices.csv
# lacks; prices.csv wins where it has the model. Used alone when no prices.csv is given.
LIST_PRICES = pd.DataFrame(
    [
        ("claude-3-5-haiku-20241022", 0.80, 4.00, "Anthropic list price (Dec 2024)"),
        ("claude-3-5-sonnet-20241022", 3.00, 15.00, "Anthropic list price"),
        ("claude-3-haiku-20240307", 0.25, 1.25, "Anthropic list price"),
        ("gemini-2.0-flash-001", 0.10, 0.40, "Google list price"),
        ("grok-2-1212", 2.00, 10.00, "xAI list price"),
        ("gpt-4", 30.00, 60.00, "OpenAI list price gpt-4 (8k); the MoT repo's own cost formula"),
    ],
    columns=["model", "input_usd_per_mtok", "output_usd_per_mtok", "price_source"],
)


# LiveCodeBench leaderboard names -> list price (USD / Mtok in, out; source). Open-weight models
# by the parameter rule of ../shared/data/prices.csv (1B 0.1, 7B 0.2, 13-15B 0.3, 33-34B 0.8,
# 70-72B 0.9, 8x7B 0.6, 8x22B 1.2, 405B 2.4).
_LCB_PRICE_ROWS: list[tuple[str, float, float, str]] = [
    ("Claude-2", 8.0, 24.0, "Anthropic list price Claude 2.x"),
    ("Claude-Instant-1", 0.8, 2.4, "Anthropic list price Claude Instant 1.2"),
    ("Claude-3-Haiku", 0.25, 1.25, "Anthropic list price"),
    ("Claude-3-Sonnet", 3.0, 15.0, "Anthropic list price"),
    ("Claude-3-Opus", 15.0, 75.0, "Anthropic list price"),
    ("Claude-3.5-Sonnet-20240620", 3.0, 15.0, "Anthropic list price"),
    ("Claude-3.5-Sonnet-20241022", 3.0, 15.0, "Anthropic list price"),
    ("GPT-3.5-Turbo-0125", 0.5, 1.5, "OpenAI list price"),
    ("GPT-3.5-Turbo-0301", 1.5, 2.0, "OpenAI list price (legacy 0301)"),
    ("GPT-4-0613", 30.0, 60.0, "OpenAI list price gpt-4 (8k)"),
    ("GPT-4-Turbo-1106", 10.0, 30.0, "OpenAI list price"),
    ("GPT-4-Turbo-2024-04-09", 10.0, 30.0, "OpenAI list price"),
    ("GPT-4O-2024-05-13", 5.0, 15.0, "OpenAI list price"),
    ("GPT-4O-2024-08-06", 2.5, 10.0, "OpenAI list price"),
    ("GPT-4O-mini-2024-07-18", 0.15, 0.6, "OpenAI list price"),
    ("O1-Mini-2024-09-12 (N=1)", 3.0, 12.0, "OpenAI list price; hidden reasoning not counted"),
    ("O1-Preview-2024-09-12 (N=1)", 15.0, 60.0, "OpenAI list price; hidden reasoning not counted"),
    ("Gemini-Pro", 0.5, 1.5, "Google list price Gemini 1.0 Pro"),
    ("Gemini-Pro-1.5 (April) (n=1)", 1.25, 5.0, "Google list price Gemini 1.5 Pro (as prices.csv)"),
    ("Gemini-Pro-1.5-May", 1.25, 5.0, "Google list price Gemini 1.5 Pro (as prices.csv)"),
    ("Gemini-Pro-1.5-002", 1.25, 5.0, "Google list price Gemini 1.5 Pro (as prices.csv)"),
    ("Gemini-Flash-1.5-May", 0.075, 0.3, "Google list price Gemini 1.5 Flash (as prices.csv)"),
    ("Gemini-Flash-1.5-002", 0.075, 0.3, "Google list price Gemini 1.5 Flash (as prices.csv)"),
    ("Mistral-Large", 4.0, 12.0, "Mistral list price mistral-large-2402 (mid 2024)"),
    ("Codestral-Latest", 1.0, 3.0, "Mistral list price Codestral at launch (May 2024)"),
    *[
        (name, p, p, f"param rule [{size}]")
        for size, p, names in (
            ("1.3B", 0.1, ("DSCoder-1.3b-Base", "DSCoder-1.3b-Ins", "OC-DS-1.3B")),
            (
                "6.7-8B",
                0.2,
                (
                    "Cllama-7b-Ins",
                    "CodeLlama-7b-Ins",
                    "DSCoder-6.7b-Base",
                    "DSCoder-6.7b-Ins",
                    "OC-DS-6.7B",
                    "MagiCoderS-CL-7B",
                    "MagiCoderS-DS-6.7B",
                    "LLama3-8b-Ins",
                    "LLama3.1-8b-Ins",
                ),
            ),
            ("13-15B", 0.3, ("Cllama-13b-Ins", "CodeLlama-13b-Ins", "StarCoder")),
            (
                "32-34B",
                0.8,
                (
                    "Cllama-34b-Ins",
                    "CodeLlama-34b-Ins",
                    "DSCoder-33b-Base",
                    "DSCoder-33b-Ins",
                    "OC-DS-33B",
                    "Phind-34B-V2",
                    "WCoder-34B-V1",
                    "Qwen2.5-Ins-32B",
                ),
            ),
            (
                "70-72B",
                0.9,
                (
                    "CodeLlama-70b-Ins",
                    "LLama3-70b-Ins",
                    "LLama3.1-70b-Ins",
                    "Qwen2-Ins-72B",
                    "Dracarys-72B-Instruct",
                    "Dracarys2-72B-Instruct",
                    "Dracarys-Llama-3.1-70B-Instruct",
                    "Dracarys2-Llama-3.1-70B-Instruct",
                ),
            ),
            ("MoE 8x7B", 0.6, ("Mixtral-8x7B-Ins",)),
            ("MoE 8x22B", 1.2, ("Mixtral-8x22B-Ins",)),
            ("405B", 2.4, ("LLama3.1-405b-Ins-FP8",)),
        )
        for name in names
    ],
]
LIST_PRICES = pd.concat(
    [LIST_PRICES, pd.DataFrame(_LCB_PRICE_ROWS, columns=list(LIST_PRICES.columns))],
    ignore_index=True,
)


def _need_dir(path: Path, sub: str) -> Path:
    d = path / sub
    if not d.is_dir():
        raise TableError(f"{path}: no {sub}/ (fetch the source as bench/README.md says)")
    return d


# --- ZeroEval MATH level 5 -------------------------------------------------------------------

_NUM = re.compile(r"-?\d+(\.\d+)?")


def _first_json(s: str) -> dict[str, Any] | None:
    """Return the first complete top-level ``{...}`` of ``s`` parsed, else None (ZeroEval's
    ``extract_first_complete_json``)."""
    depth, start = 0, None
    for i, ch in enumerate(s):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0 and start is not None:
                try:
                    v = json.loads(s[start : i + 1].replace("\n", ""))
                except json.JSONDecodeError:
                    return None
                return v if isinstance(v, dict) else None
    return None


def _json_field(s: str, key: str) -> str | None:
    """Return the value of ``"key": ...`` found by regex in a broken JSON (ZeroEval's
    ``extract_values_from_json`` with ``allow_no_quotes``)."""
    for pat, flags in (
        (rf'"{key}"\s*:\s*"([^"]*?)"', 0),
        (rf'"{key}"\s*:\s*"(.*?)"', re.DOTALL),
        (rf'"{key}"\s*:\s*([^,\s]*)', 0),
        (rf"{key}\s*:\s*([^,\s]*)", 0),
    ):
        m = re.search(pat, s, flags)
        if m:
            return m.group(1)
    return None


def _sanitize(ans: str) -> str:
    ans = ans.replace("$", "").strip().replace(",", "")
    if "/" in ans and re.fullmatch(r"\s*-?\d+(\.\d+)?\s*/\s*-?\d+(\.\d+)?\s*", ans):
        num, den = (float(x) for x in ans.split("/"))
        if den:
            ans = str(num / den)
    return ans


def zeroeval_math_correct(output: str, gold: str, model: str = "") -> float:
    """Return 1.0 when ZeroEval's MATH rule accepts ``output`` for ``gold``, else 0.0.

    The rule (``src/evaluation/math_eval.py`` at WildEval/ZeroEval 8c1485e): take ``answer`` from
    the first JSON object of the output (else by regex; Llama-3.1 outputs ending in ``\\boxed{}``:
    the box), strip ``$`` and ``,``, turn a plain fraction into a float, and compare the first
    number of each side. Fractions are evaluated only when both sides are numbers (ZeroEval
    calls ``eval``; nothing is evaluated here).
    """
    obj = _first_json(output)
    ans: Any = obj.get("answer") if obj is not None else None
    if ans is None:
        ans = _json_field(output, "answer")
    if ans is None and "Llama-3.1" in model and "boxed" in output[-30:]:
        m = re.search(r"\\boxed{([\w\d]+)}", output)
        ans = m.group(1) if m else None
    if ans is None:
        return 0.0
    a = _NUM.search(_sanitize(str(ans)))
    g = _NUM.search(_sanitize(gold.replace("#", "").strip()))
    return float(bool(a and g and float(a.group()) == float(g.group())))


def _first(v: Any) -> str:
    if isinstance(v, list):
        return str(v[0]) if v else ""
    return "" if v is None else str(v)


@external_source(
    "zeroeval-math",
    origin="https://github.com/WildEval/ZeroEval @ 8c1485e (result_dirs/math-l5)",
    license="Apache-2.0",
    pool_with="zeroeval",
)
def read_zeroeval_math(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (raw rows, prompts) of ``path/result_dirs/math-l5/<model>.json`` (a ZeroEval
    checkout): one row per (problem, model), tag ``math_l5``, strategy as the shared zeroeval
    rows (``zeroshot_cot_json_greedy``), output tokens = output characters / 4."""
    d = _need_dir(path, "result_dirs/math-l5")
    rows: list[dict[str, Any]] = []
    prompts: dict[str, str] = {}
    for f in sorted(d.glob("*.json")):
        model = f.stem
        for it in json.loads(f.read_text()):
            uid = f"zeroeval::math-l5_{it['id']}"
            out = _first(it.get("output"))
            prompts.setdefault(uid, str(it.get("problem", "")))
            rows.append(
                {
                    "prompt_uid": uid,
                    "dataset": "math_l5",
                    "model": model,
                    "strategy": "zeroshot_cot_json_greedy",
                    "correct": zeroeval_math_correct(out, str(it.get("answer", "")), model),
                    # the full chat prompt, as the model saw it (instructions + problem)
                    "input_tokens": len(_first(it.get("chat_history"))) / 4.0 + 10.0,
                    "output_tokens_est": len(out) / 4.0,
                }
            )
    if not rows:
        raise TableError(f"{d}: no result files")
    return _frames(rows, prompts, "math_l5")


# --- Mixture-of-Thoughts cascade: GPT-4 strategies ------------------------------------------------

MOT_TASKS = {  # file prefix -> (task tag, prompting module of Evaluation/prompting)
    "gsm": ("gsm8k", "gsm8k"),
    "asdiv": ("asdiv", "asdiv"),
    "tabmwp": ("tabmwp", "tabmwp"),
    "date": ("bbh_date", "date"),
    "navigate": ("bbh_navigate", "navigation"),
    "crepe": ("crepe", "crepe"),
}
# BBH tasks are tagged "date" / "navigate" families (``bbh_date`` would put both in one family).
_MOT_TAG = {"bbh_date": "date/bbh", "bbh_navigate": "navigate/bbh"}
_MOT_VARIANTS = ("cot1", "cot2", "pot1", "pot2")


def _isnum(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def mot_equal(pred: Any, ref: Any) -> bool:
    """Return whether ``pred`` answers ``ref`` (the repository's ``finqa_equal``: booleans against
    yes / no, strings exactly, numbers rounded to the shorter precision of the two)."""
    if pred is None:
        return False
    if isinstance(pred, bool):
        return ref == ("yes" if pred else "no")
    if isinstance(pred, str) or isinstance(ref, str):
        return pred == ref
    if not (_isnum(pred) and _isnum(ref)):
        return False

    def prec(x: float) -> int:
        s = str(x)
        return len(s.split(".")[-1]) if "." in s else 5

    try:
        p = min(prec(pred), prec(ref))
        return bool(round(float(pred), p) == round(float(ref), p))
    except (OverflowError, ValueError):
        return False


def _majority(results: list[Any]) -> Any:
    c: Counter[Any] = Counter()
    for r in results:
        if r is not None:
            try:
                c.update([r])
            except TypeError:  # an unhashable executed result (list / dict) counts as its text
                c.update([json.dumps(r, sort_keys=True, default=str)])
    return c.most_common(1)[0][0] if c else None


def mot_prompt_chars(path: Path) -> dict[tuple[str, str], int]:
    """Return ``{(file prefix, variant): characters}`` of the few-shot prompts in
    ``path/Evaluation/prompting/*.py`` (string constants read with ``ast``; nothing is run);
    empty when the folder is absent."""
    out: dict[tuple[str, str], int] = {}
    d = path / "Evaluation" / "prompting"
    for prefix, (_, module) in MOT_TASKS.items():
        f = d / f"{module}.py"
        if not f.is_file():
            continue
        for node in ast.parse(f.read_text()).body:
            if not (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
                and isinstance(node.targets[0], ast.Name)
            ):
                continue
            name = node.targets[0].id.lower()
            for v in _MOT_VARIANTS:
                if v in name:
                    out[(prefix, v)] = len(node.value.value)
    return out


@external_source(
    "mot-gpt4",
    origin="https://github.com/MurongYue/LLM_MoT_cascade @ 8db97e6 (GPT4_result)",
    license="no license file: internal evaluation only",
)
def read_mot_gpt4(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (raw rows, prompts) of ``path/GPT4_result/<task>[_greedy]_<variant>.json`` (a
    LLM_MoT_cascade checkout). Per question and prompt variant (cot1, cot2, pot1, pot2): strategy
    ``<variant>_greedy`` (first greedy generation), ``<variant>_sample`` (first of the sampled
    generations) and ``maj@3:<variant>_sample`` (majority of the first 3 sampled results, every
    sample billed). Input tokens = (few-shot prompt + question) characters / 4, billed once per
    call (the repository samples with ``n``); output tokens = generated characters / 4."""
    d = _need_dir(path, "GPT4_result")
    shots = mot_prompt_chars(path)
    rows: list[dict[str, Any]] = []
    prompts: dict[str, str] = {}
    for prefix, (tag0, _) in MOT_TASKS.items():
        tag = _MOT_TAG.get(tag0, tag0)
        for variant in _MOT_VARIANTS:
            for kind in ("greedy", "sample"):
                name = f"{prefix}_greedy_{variant}" if kind == "greedy" else f"{prefix}_{variant}"
                f = d / f"{name}.json"
                if not f.is_file():
                    continue
                for i, it in enumerate(json.loads(f.read_text())):
                    q = str(it.get("question", ""))
                    uid = f"mot::{prefix}_{i}"
                    prompts.setdefault(uid, q)
                    # a call that returned nothing usable is billed and wrong, not skipped
                    gen = [str(g) for g in (it.get("generated") or [])] or [""]
                    res = list(it.get("results") or []) or [None]
                    in_tok = (shots.get((prefix, variant), 0) + len(q)) / 4.0 + 10.0
                    gold = it.get("answer")
                    base = {"prompt_uid": uid, "dataset": tag, "model": "gpt-4"}
                    single = f"{variant}_{kind}"
                    rows.append(
                        {
                            **base,
                            "strategy": single,
                            "correct": float(mot_equal(res[0], gold)),
                            "input_tokens": in_tok,
                            "output_tokens_est": len(gen[0]) / 4.0,
                        }
                    )
                    if kind == "sample":
                        rows.append(
                            {
                                **base,
                                "strategy": f"maj@3:{single}",
                                "correct": float(mot_equal(_majority(res[:3]), gold)),
                                "input_tokens": in_tok,
                                "output_tokens_est": sum(len(g) for g in gen[:3]) / 4.0,
                            }
                        )
    if not rows:
        raise TableError(f"{d}: no result files")
    return _frames(rows, prompts, None)


# --- RouterArena sub_10 ---------------------------------------------------------------------------


@external_source(
    "routerarena-sub10",
    origin="https://github.com/RouteWorks/RouterArena @ 4714a9a (cached_results)",
    license="Apache-2.0",
)
def read_routerarena(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (raw rows, prompts) of ``path/cached_results/<model>.jsonl`` (a RouterArena
    checkout): rows with an ``evaluation_result`` only (ungraded runs are skipped), tag = the
    ``global_index`` without its number (``MMLUPro_law``, ``WMT19-de-en``), real tokens and USD."""
    d = _need_dir(path, "cached_results")
    rows: list[dict[str, Any]] = []
    prompts: dict[str, str] = {}
    for f in sorted(d.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            it = json.loads(line)
            ev = it.get("evaluation_result")
            if not ev or ev.get("score") is None or not it.get("success", True):
                continue
            gi = str(it["global_index"])
            uid = f"routerarena::{gi}"
            prompts.setdefault(uid, str(it.get("question", "")))
            tok = it.get("token_usage") or {}
            cost = ev.get("inference_cost")
            rows.append(
                {
                    "prompt_uid": uid,
                    "dataset": gi.rsplit("_", 1)[0],
                    "model": str(it.get("llm_selected") or f.stem),
                    "strategy": "single",
                    "correct": min(1.0, max(0.0, float(ev["score"]))),
                    "input_tokens": _num(tok.get("input_tokens")),
                    "output_tokens": _num(tok.get("output_tokens")),
                    "cost_usd": _num(cost),
                }
            )
    if not rows:
        raise TableError(f"{d}: no graded results")
    return _frames(rows, prompts, None)


# --- LiveCodeBench leaderboard scenarios ---------------------------------------------------------

# (input, output) tokens per call, by scenario and strategy: proxies, the files have no text. Code
# execution: a ~20-line function and its input, an answer (single) or a short trace (cot); test
# output prediction: a problem statement and a test input; self-repair: statement, faulty program
# and its error, a new program.
LCB_TOKENS = {
    ("execution", "single"): (250.0, 20.0),
    ("execution", "cot"): (350.0, 250.0),
    ("testgen", "single"): (450.0, 30.0),
    ("repair", "single"): (900.0, 400.0),
}


@external_source(
    "lcb-scenarios",
    origin="https://github.com/LiveCodeBench/livecodebench.github.io @ f186ab5 (src/mocks)",
    license="no license file: internal evaluation only",
)
def read_lcb(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (raw rows, prompts) of ``path/src/mocks/performances_{execution,testgen,repair}.json``
    (a checkout of the LiveCodeBench leaderboard site): one row per (item, model[, strategy]),
    correct = pass@1 / 100 (the leaderboard averages its samples), tags ``execution/lcb``,
    ``testgen/lcb``, ``repair/lcb``; tokens from :data:`LCB_TOKENS`. Test-prediction items are
    the k-th test case of a problem (the file lists them in the same order for every model)."""
    d = _need_dir(path, "src/mocks")
    rows: list[dict[str, Any]] = []
    for scenario in ("execution", "testgen", "repair"):
        f = d / f"performances_{scenario}.json"
        if not f.is_file():
            continue
        perf = pd.DataFrame(json.loads(f.read_text())["performances"])
        if scenario == "execution":
            item = perf["sample_id"].astype(str)
            cols = {"single": "Pass@1", "cot": "Pass@1-COT"}
        else:
            k = perf.groupby(["model", "question_id"]).cumcount().astype(str)
            qid = perf["question_id"].astype(str)
            item = qid + "_" + k if scenario == "testgen" else qid
            cols = {"single": "pass@1"}
        for strategy, col in cols.items():
            if col not in perf:
                continue
            tin, tout = LCB_TOKENS[(scenario, strategy)]
            rows += pd.DataFrame(
                {
                    "prompt_uid": "lcb::" + scenario + "_" + item,
                    "dataset": f"{scenario}/lcb",
                    "model": perf["model"].astype(str),
                    "strategy": strategy,
                    "correct": pd.to_numeric(perf[col], errors="coerce").clip(0, 100) / 100.0,
                    "input_tokens": tin,
                    "output_tokens": tout,
                }
            ).to_dict("records")
    if not rows:
        raise TableError(f"{d}: no performances_*.json")
    raw = pd.DataFrame(rows).dropna(subset=["correct"])
    raw = raw.drop_duplicates(["prompt_uid", "model", "strategy"])
    prompts = dict.fromkeys(raw["prompt_uid"].unique(), "")  # the files carry no text
    return _frames(raw.to_dict("records"), prompts, None)


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def _frames(
    rows: list[dict[str, Any]], prompts: dict[str, str], tag: str | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    raw = pd.DataFrame(rows)
    for col in ("input_tokens", "output_tokens", "output_tokens_est", "cost_usd"):
        if col not in raw:
            raw[col] = np.nan
    tags = raw.drop_duplicates("prompt_uid").set_index("prompt_uid")["dataset"]
    p = pd.DataFrame({"prompt_uid": list(prompts), "prompt": list(prompts.values())})
    p["dataset"] = tag if tag is not None else p["prompt_uid"].map(tags).fillna("")
    return raw, p[["prompt_uid", "dataset", "prompt"]]


def prices_for(data_dir: Path | None) -> pd.DataFrame:
    """Return the price table: ``data_dir/prices.csv`` when present, :data:`LIST_PRICES` for
    the models it lacks."""
    if data_dir is not None and (Path(data_dir) / "prices.csv").is_file():
        shared = pd.read_csv(Path(data_dir) / "prices.csv")
        extra = LIST_PRICES[~LIST_PRICES["model"].isin(set(shared["model"]))]
        return pd.concat([shared, extra], ignore_index=True)
    return LIST_PRICES.copy()
