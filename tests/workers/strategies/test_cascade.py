"""Cascades: params, the escalation rule (pure) and two stages on the real CPU model."""

import math

import pytest
from pydantic import ValidationError

from workers.strategies import get_strategy
from workers.strategies.base import Candidate
from workers.strategies.cascade import stage_confidence

STAGES = [
    {"strategy": "single", "params": {"max_tokens": 8}},
    {"endpoint": "big", "strategy": "majority_vote", "params": {"n": 3, "max_tokens": 8}},
]


def cand(key, mean_logprob=None):  # type: ignore[no-untyped-def]
    return Candidate(index=0, text=key or "", extracted_answer=key, score=None, prompt_tokens=1,
                     completion_tokens=1, finish_reason="stop", aborted=False, seed=0,
                     latency_s=0.0, answer_key=key, mean_logprob=mean_logprob)  # fmt: skip


def test_params_sum_the_stages_and_refuse_bad_ones():
    s = get_strategy("cascade")
    p = s.validate_params({"stages": STAGES, "escalate_on": "confidence", "threshold": 0.8})
    assert s.planned_samples(p) == 4
    assert s.max_completion_tokens(p) == 32
    assert s.max_prompt_billings(p) == 4
    assert s.endpoint_names(p) == ["big"]
    assert [(name, sub.slug) for name, sub, _ in s.stages(p)] == [
        (None, "single"),
        ("big", "majority_vote"),
    ]
    # Stage params are stored normalised (validated by the stage's strategy).
    assert p.model_dump()["stages"][0]["params"]["temperature"] == 0.0
    for bad in (
        {"stages": STAGES[:1]},
        {"stages": [*STAGES, {"strategy": "cascade", "params": {"stages": STAGES}}]},
        {"stages": [{"strategy": "nope"}, STAGES[1]]},
        {"stages": [{"strategy": "single", "params": {"k": 3}}, STAGES[1]]},
        {"stages": STAGES, "temperature": 0.2},  # sampling belongs to the stages
        {"stages": STAGES, "threshold": 1.5},
        {"stages": STAGES, "escalate_on": "vibes"},
        {"stages": "single,majority_vote"},
    ):
        with pytest.raises(ValidationError):
            s.validate_params(bad)


def test_stage_confidence_rules():
    assert stage_confidence("agreement", cand("4"), {"4": 3.0, "5": 1.0}) == 0.75
    assert stage_confidence("agreement", cand("4"), None) == 1.0
    assert stage_confidence("agreement", cand(None), {"4": 1.0}) == 0.0
    assert stage_confidence("confidence", cand("4", -0.5), None) == pytest.approx(math.exp(-0.5))
    assert stage_confidence("confidence", cand("4"), None) is None  # no log-probs: unsure
    assert stage_confidence("answer", cand("4"), None) == 1.0
    assert stage_confidence("answer", None, None) == 0.0


# -- on the real CPU model: the second "endpoint" is the same engine under another name ---

MSG = [{"role": "user", "content": "What is 5 + 4? Reply with just the number."}]


def check_stage_ledgers(r):  # type: ignore[no-untyped-def]
    from tests.workers.strategies.test_strategies_llama import check_ledger

    check_ledger(r)
    for f in ("prompt_tokens", "completion_tokens", "engine_requests", "scorer_calls"):
        assert getattr(r.ledger, f) == sum(getattr(x, f) for x in r.stage_ledgers.values())
    for key, part in r.stage_ledgers.items():
        mine = [c for c in r.candidates if (c.endpoint or "") == key]
        assert part.completion_tokens == sum(c.completion_tokens for c in mine)
        assert part.prompt_tokens == sum(c.prompt_tokens for c in mine)


@pytest.mark.model
def test_escalates_when_the_first_stage_is_unsure(llama_engine):
    r = get_strategy("cascade").run(
        llama_engine,
        messages=MSG,
        params={"stages": STAGES, "escalate_on": "confidence", "threshold": 0.9999},
        answer_kind="math",
        engines={"big": llama_engine},
    )
    check_stage_ledgers(r)
    assert set(r.stage_ledgers) == {"", "big"}
    assert [c.endpoint for c in r.candidates] == [None, "big", "big", "big"]
    t = r.trace
    assert t["kind"] == "cascade" and t["escalated"] and t["final_stage"] == 1
    assert [s["decision"] for s in t["stages"]] == ["escalate", "final"]
    assert t["stages"][0]["confidence"] < 0.9999 and t["stages"][1]["samples"] == [1, 2, 3]
    assert r.chosen_index in (1, 2, 3)  # the answer comes from the second stage
    assert r.votes is not None and sum(r.votes.values()) <= 3


@pytest.mark.model
def test_stops_at_the_first_stage_when_it_is_sure(llama_engine):
    r = get_strategy("cascade").run(
        llama_engine,
        messages=MSG,
        params={"stages": STAGES, "escalate_on": "answer", "threshold": 0.5},
        answer_kind="math",
        engines={"big": llama_engine},
    )
    check_stage_ledgers(r)
    assert len(r.candidates) == 1 and set(r.stage_ledgers) == {""}
    assert r.trace["stages"][0]["decision"] == "accept" and not r.trace["escalated"]
    assert r.chosen_index == 0


def test_a_stage_endpoint_that_was_not_loaded_is_an_error():
    class NoEngine:
        pass

    with pytest.raises(ValueError, match="needs endpoint 'big'"):
        get_strategy("cascade").run(
            NoEngine(),  # type: ignore[arg-type]
            messages=MSG,
            params={"stages": [STAGES[1], STAGES[0]]},
            engines={},
        )


def _fit_rows(second_ok: float) -> list[dict[str, float | None]]:
    """Sure first stages (0.9) are right; unsure ones (0.3) wrong; the second stage costs 10x."""
    rows: list[dict[str, float | None]] = []
    for i in range(30):
        sure = i % 3 != 0
        rows.append({"confidence": 0.9 if sure else 0.3, "first_correct": float(sure),
                     "first_cost": 1.0, "second_correct": second_ok, "second_cost": 10.0})  # fmt: skip
    return rows


def test_fit_threshold_does_not_escalate_when_the_second_stage_costs_more_than_it_buys():
    from workers.strategies.cascade import fit_threshold

    fit = fit_threshold(_fit_rows(1.0))
    # Escalating the 10 unsure runs: (30 + 100) / 30 = 4.33 per right answer; leaving them
    # wrong: 30 / 20 = 1.5. Least cost-of-pass: never escalate.
    assert fit.threshold == 0.0 and fit.escalation_rate == 0.0
    assert fit.cost_of_pass_usd == pytest.approx(1.5) == fit.never["cost_of_pass_usd"]
    assert fit.always["cost_of_pass_usd"] == pytest.approx((30 + 300) / 30)


def test_fit_threshold_picks_least_cost_of_pass_and_imputes_unrun_second_stages():
    from workers.strategies.cascade import fit_threshold

    rows = _fit_rows(1.0)
    for r in rows:
        r["second_cost"] = 0.5  # a cheap, always-right second stage: escalating pays
    fit = fit_threshold(rows)
    assert fit.threshold == pytest.approx(0.6) and fit.accuracy == 1.0
    assert fit.cost_of_pass_usd == pytest.approx((30 + 10 * 0.5) / 30)
    # A useless second stage is never worth escalating to.
    assert fit_threshold(_fit_rows(0.0)).threshold == 0.0
    # The log has second stages only where it escalated: the others get their mean.
    logged = _fit_rows(1.0)
    for r in logged:
        r["second_cost"] = 0.5
        if r["confidence"] == 0.9:
            r["second_correct"] = r["second_cost"] = None
    fit = fit_threshold(logged)
    assert fit.imputed_second == 20 and fit.threshold == pytest.approx(0.6)
    with pytest.raises(ValueError, match="at least 20"):
        fit_threshold(logged[:5])
    for r in logged:
        r["second_correct"] = r["second_cost"] = None
    with pytest.raises(ValueError, match="second stage"):
        fit_threshold(logged)
