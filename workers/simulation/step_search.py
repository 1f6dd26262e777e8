"""Offline ``step_search`` (step-level beam search under a value / process-reward scorer),
replayed from a recorded search tree.

Independent repeated samples (``dev_samples_repeated``) hold no steps and no step scores, so a
step search cannot be simulated from them. What can be replayed honestly is a *recorded* beam
search that kept every candidate step and its score: the Tree-of-Thoughts BFS logs (Yao et al.
2023, MIT; ``logs/game24/gpt-4_0.7_propose1_value3_greedy5_start900_end1000.json`` in
princeton-nlp/tree-of-thought-llm), GPT-4 on the same 100 Game of 24 problems as the repeated
samples. Per problem and step the log holds the kept partial solutions (``ys``), every proposed
child (``new_ys``: one proposal call per kept parent, one child per line), each child's value
(three GPT-4 value calls per distinct child, the scorer) and the five kept (``select_new_ys``);
``infos[i].r`` grades the five final solutions.

A beam of width ``b <= 5`` is replayed from it with the same rule the log was made with (children
in parent order, sorted by value, ties to the first, the best ``b`` kept; a child repeated within
a step scores 0 after its first copy): its children at each step are in the log as long as its
beam is a subset of the logged beam. When it is not (a kept child whose own children were never
generated) the problem is *not replayable* for that width and gets no row: nothing is guessed.
The answer is the best final solution, graded by the log's ``r`` (so the replayed pick must be
one of the logged final five). Width 5 reproduces the log itself.

Cost: the log gives each problem's prompt and completion tokens in total (``usage_so_far``,
cumulative), not per call. Every call of a replay is measured in characters as the ToT code
builds it (the proposal prompt: the one-shot propose template with the current numbers, or the
chain-of-thought template with the steps so far once 24 is reached; the proposal's completion:
the child lines it produced; the value prompt: the few-shot value template with the current
numbers, or the last-step judge template with the answer). Value calls are cached by prompt for
the whole run, as ToT's ``value_cache`` (a repeated prompt is not called again). Tokens per
character and the value calls' completion tokens (three samples, not logged) are fitted by
non-negative least squares on the logged per-problem totals (:func:`fit_call_tokens`, which
reports the fit's error). Value calls are the scorer: their tokens are ``scorer_tokens``.
Not simulated: particle filtering and
best-first search (they need children of nodes the log never expanded).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Lengths (characters, placeholders removed) of the Game of 24 prompt templates of
#: princeton-nlp/tree-of-thought-llm ``src/tot/prompts/game24.py`` (MIT), commit ab40034.
PROPOSE_CHARS = 282 - len("{input}")
COT_CHARS = 808 - len("{input}") + len("Steps:")
VALUE_CHARS = 693 - len("{input}")
VALUE_LAST_CHARS = 654 - len("{input}") - len("{answer}")


@dataclass(frozen=True)
class CallTokens:
    """Fitted token rates: tokens per prompt character, per proposal-output character, and
    the completion tokens of one value call (its three samples)."""

    per_prompt_char: float
    per_output_char: float
    value_completion: float


@dataclass
class Replay:
    """One problem's replay at one beam width (``correct`` None: not replayable) and the
    characters of each kind of call it made."""

    correct: float | None
    reason: str
    steps: int = 0
    proposal_calls: int = 0
    value_calls: int = 0
    proposal_prompt_chars: int = 0
    proposal_output_chars: int = 0
    value_prompt_chars: int = 0


def _numbers(y: str) -> str:
    last = y.strip().split("\n")[-1]
    return last.split("left: ")[-1].split(")")[0]


def _proposal_prompt_chars(x: str, y: str) -> int:
    numbers = _numbers(y) if y else x
    return COT_CHARS + len(x) + len(y) if numbers == "24" else PROPOSE_CHARS + len(numbers)


def _value_key(x: str, y: str) -> tuple[str, int]:
    """ToT's value prompt for child ``y`` as (cache key, prompt characters)."""
    last = y.strip().split("\n")[-1]
    if "left: " not in last:
        answer = last.lower().replace("answer: ", "")
        return f"last|{x}|{answer}", VALUE_LAST_CHARS + len(x) + len(answer)
    numbers = _numbers(y)
    return f"left|{numbers}", VALUE_CHARS + len(numbers)


def _children(step: Mapping[str, Any], parent: str) -> list[tuple[str, float]] | None:
    """Return the logged (child, value) of ``parent`` at ``step`` in proposal order, or None
    when the parent was not expanded there (or twice, which makes its children ambiguous)."""
    ys = list(step["ys"])
    if ys.count(parent) != 1:
        return None
    # new_ys is the concatenation of each kept parent's proposals, in the order of ys: walk the
    # blocks (a child of parent y starts with y and adds exactly one line).
    values = list(step["values"])
    new_ys = list(step["new_ys"])
    pos = 0
    for y in ys:
        start = pos
        while pos < len(new_ys) and _is_child(new_ys[pos], y):
            pos += 1
        if y == parent:
            return [(new_ys[i], float(values[i])) for i in range(start, pos)]
    return None


def _is_child(child: str, parent: str) -> bool:
    return child.startswith(parent) and child[len(parent) :].count("\n") == 1


def replay(
    record: Mapping[str, Any], beam_width: int, value_cache: set[str] | None = None
) -> Replay:
    """Replay one logged problem with a beam of ``beam_width`` (see the module docstring).

    ``value_cache``: the value prompts already scored earlier in the run (updated in place);
    a new empty one when None.
    """
    cache = value_cache if value_cache is not None else set()
    steps = list(record["steps"])
    x = str(steps[0]["x"]) if steps else ""
    rep = Replay(None, "ok")
    beam = [""]
    for t, step in enumerate(steps):
        rep.steps = t
        first_value: dict[str, float] = {}
        for c, v in zip(step["new_ys"], step["values"], strict=True):
            first_value.setdefault(c, float(v))  # later copies scored 0 because they repeat
        pool: list[tuple[str, float]] = []
        for parent in beam:
            kids = _children(step, parent)
            if kids is None:
                rep.reason = f"step {t}: parent not expanded in the log"
                return rep
            rep.proposal_calls += 1
            rep.proposal_prompt_chars += _proposal_prompt_chars(x, parent)
            rep.proposal_output_chars += sum(len(c) - len(parent) for c, _ in kids)
            pool.extend(kids)
        scored: list[tuple[str, float]] = []
        seen: set[str] = set()
        for c, _ in pool:
            if c in seen:
                scored.append((c, 0.0))  # ToT scores a repeated candidate 0, without a call
                continue
            seen.add(c)
            key, chars = _value_key(x, c)
            if key not in cache:
                cache.add(key)
                rep.value_calls += 1
                rep.value_prompt_chars += chars
            scored.append((c, first_value[c]))
        order = sorted(range(len(scored)), key=lambda i: scored[i][1], reverse=True)
        beam = [scored[i][0] for i in order[:beam_width]]
    rep.steps = len(steps)
    final = list(record["ys"])
    if not beam or beam[0] not in final:
        rep.reason = "the pick is not among the logged final solutions"
        return rep
    rep.correct = float(record["infos"][final.index(beam[0])]["r"])
    return rep


def replay_run(records: Sequence[Mapping[str, Any]], beam_width: int) -> list[Replay]:
    """Replay every problem in log order, sharing one value cache as the logged run did."""
    cache: set[str] = set()
    return [replay(r, beam_width, cache) for r in records]


def usage_per_problem(records: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """Return each problem's (prompt, completion) tokens from the cumulative ``usage_so_far``."""
    out = []
    prev_p = prev_c = 0
    for r in records:
        u = r["usage_so_far"]
        out.append((int(u["prompt_tokens"]) - prev_p, int(u["completion_tokens"]) - prev_c))
        prev_p, prev_c = int(u["prompt_tokens"]), int(u["completion_tokens"])
    return out


def fit_call_tokens(records: Sequence[Mapping[str, Any]]) -> tuple[CallTokens, dict[str, float]]:
    """Fit the token rates on the logged run (the full-width replay's calls against each
    problem's logged totals, non-negative least squares over the problems it replays); return
    them and the fit's median absolute relative error per problem and on the run's total."""
    from scipy.optimize import nnls

    width = max(len(s["select_new_ys"]) for r in records for s in r["steps"])
    usage = usage_per_problem(records)
    reps = replay_run(records, width)
    ok = [i for i, rep in enumerate(reps) if rep.correct is not None]
    if len(ok) < 3:
        raise ValueError("fewer than 3 problems replay at full width: nothing to fit on")
    prompt_chars = np.array(
        [reps[i].proposal_prompt_chars + reps[i].value_prompt_chars for i in ok], dtype=float
    )
    comp_x = np.array(
        [[reps[i].proposal_output_chars, reps[i].value_calls] for i in ok], dtype=float
    )
    used = np.array([usage[i] for i in ok], dtype=float)
    (per_char,), _ = nnls(prompt_chars[:, None], used[:, 0])
    (per_out_char, per_value), _ = nnls(comp_x, used[:, 1])
    fit = CallTokens(float(per_char), float(per_out_char), float(per_value))
    pred_p = prompt_chars * per_char
    pred_c = comp_x @ np.array([per_out_char, per_value])
    err = {
        "problems": float(len(ok)),
        "prompt_median_abs_rel_err": float(
            np.median(np.abs(pred_p - used[:, 0]) / np.maximum(used[:, 0], 1))
        ),
        "completion_median_abs_rel_err": float(
            np.median(np.abs(pred_c - used[:, 1]) / np.maximum(used[:, 1], 1))
        ),
        "prompt_total_rel_err": float(pred_p.sum() / used[:, 0].sum() - 1),
        "completion_total_rel_err": float(pred_c.sum() / used[:, 1].sum() - 1),
    }
    return fit, err


def simulate_step_search(
    records: Sequence[Mapping[str, Any]],
    beam_widths: Iterable[int],
    *,
    input_usd_per_mtok: float,
    output_usd_per_mtok: float,
    call_tokens: CallTokens | None = None,
    prompt_prefix: str = "game24_",
    model: str = "gpt-4",
) -> Any:
    """Return one row per (replayable problem, beam width) in the simulators' outcome format:
    ``model``, ``strategy`` (``tot_bfs``), ``prompt_id`` (``prompt_prefix`` + the log's idx),
    ``config`` (``step_search@beam{b}:value``), ``correct``, ``samples`` (proposal calls: the
    billed generations), ``input_tokens`` / ``output_tokens`` (the proposals'),
    ``scorer_calls``, ``scorer_tokens`` (the value calls', prompt and completion), ``cost_usd``
    (all of it). Problems a width cannot replay are left out (see :func:`coverage`)."""
    import pandas as pd

    rate = call_tokens or fit_call_tokens(records)[0]
    pin, pout = input_usd_per_mtok / 1e6, output_usd_per_mtok / 1e6
    rows = []
    for b in beam_widths:
        for r, rep in zip(records, replay_run(records, b), strict=True):
            if rep.correct is None:
                continue
            prompt_tok = rep.proposal_prompt_chars * rate.per_prompt_char
            out_tok = rep.proposal_output_chars * rate.per_output_char
            scorer_in = rep.value_prompt_chars * rate.per_prompt_char
            scorer_out = rep.value_calls * rate.value_completion
            rows.append(
                {
                    "model": model,
                    "strategy": "tot_bfs",
                    "prompt_id": f"{prompt_prefix}{r['idx']}",
                    "config": f"step_search@beam{b}:value",
                    "sim_strategy": "step_search",
                    "k": b,
                    "correct": rep.correct,
                    "samples": float(rep.proposal_calls),
                    "input_tokens": prompt_tok,
                    "output_tokens": out_tok,
                    "scorer_calls": float(rep.value_calls),
                    "scorer_tokens": scorer_in + scorer_out,
                    "cost_usd": (prompt_tok + scorer_in) * pin + (out_tok + scorer_out) * pout,
                }
            )
    return pd.DataFrame(rows)


def coverage(records: Sequence[Mapping[str, Any]], beam_widths: Iterable[int]) -> dict[int, float]:
    """Return the share of logged problems each beam width can replay exactly."""
    return {
        b: sum(rep.correct is not None for rep in replay_run(records, b)) / max(1, len(records))
        for b in beam_widths
    }
