"""``cascade``: a cheap stage first, a stronger one only when the first is unsure
(FrugalGPT, Chen et al. 2023; AutoMix, Madaan et al. 2023).

Each stage is a strategy with its params on an endpoint (``endpoint``: a model endpoint's
name; empty: the configuration's own). Stages run in order; after each but the last, the
stage's *confidence* in its answer decides whether to stop there or escalate:

- ``agreement``: the winning answer's share of the vote (a single sample with an answer has
  agreement 1, so use it with voting stages);
- ``confidence``: ``exp(mean token log-prob)`` of the stage's chosen sample (its geometric
  mean token probability; None when the engine gave no log-probs, which escalates);
- ``answer``: 1 when an answer could be extracted, else 0 (escalate on no answer).

A stage is accepted when its confidence is at least ``threshold`` and it has an answer.
Every stage that ran is billed at its own endpoint's prices (``StrategyResult.stage_ledgers``),
and the trace records each stage's samples, answer, confidence and decision. The router treats
a cascade as one configuration and learns its p(correct) and cost from its log.

The threshold can be learned (:func:`fit_threshold`): the one that minimises cost-of-pass over
graded runs, refit on the query log with the router (``routerapp.services.cascade``) or on
simulated runs (``workers.simulation.cascade.cascade_fit_rows``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workers.engines.base import Engine
from workers.strategies.base import (
    Candidate,
    RunContext,
    SamplingParams,
    Strategy,
    StrategyResult,
    get_strategy,
    register_strategy,
)

#: The key of the configuration's own endpoint in ``stage_ledgers``.
OWN_ENDPOINT = ""


class CascadeStage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(default="", max_length=100, description="endpoint name; empty: own")
    strategy: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid_strategy(self) -> CascadeStage:
        if self.strategy == "cascade":
            raise ValueError("a cascade stage cannot itself be a cascade")
        sub = get_strategy(self.strategy)  # UnknownStrategyError (a ValueError) lists the known
        # Stored normalised: what runs is what was validated.
        self.params = sub.validate_params(self.params).model_dump()
        return self


class CascadeParams(SamplingParams):
    """The sampling fields are the stages' business: they must stay at their defaults here."""

    stages: list[CascadeStage] = Field(min_length=2, max_length=4)
    escalate_on: Literal["agreement", "confidence", "answer"] = "agreement"
    threshold: float = Field(default=0.6, ge=0, le=1)
    learn_threshold: bool = Field(
        default=False,
        description="refit the threshold on the graded log with the router (least cost-of-pass)",
    )
    threshold_fitted_on: int = Field(default=0, ge=0, description="graded runs of the last fit")

    @field_validator("stages", mode="before")
    @classmethod
    def _stage_list(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError("stages must be a list of {endpoint, strategy, params}")
        return value

    @model_validator(mode="after")
    def _no_own_sampling(self) -> CascadeParams:
        for name, f in SamplingParams.model_fields.items():
            default = f.get_default(call_default_factory=True)
            if getattr(self, name) != default:
                raise ValueError(f"{name} belongs in each stage's params, not in the cascade's")
        return self


def stage_confidence(
    rule: str, chosen: Candidate | None, votes: Mapping[str, float] | None
) -> float | None:
    """Return a stage's confidence in its answer under ``rule`` (None: unknown)."""
    if chosen is None or chosen.answer_key is None:
        return 0.0
    if rule == "answer":
        return 1.0
    if rule == "agreement":
        if not votes:
            return 1.0  # one answered sample and no vote: it agrees with itself
        total = sum(votes.values())
        return float(votes.get(chosen.answer_key, 0.0) / total) if total > 0 else 0.0
    if chosen.mean_logprob is None:
        return None
    return math.exp(chosen.mean_logprob)


@register_strategy("cascade")
class Cascade(Strategy):
    Params = CascadeParams

    def stages(self, params: Any) -> list[tuple[str | None, Strategy, SamplingParams]]:
        out: list[tuple[str | None, Strategy, SamplingParams]] = []
        for st in params.stages:
            sub = get_strategy(st.strategy)
            out.append((st.endpoint or None, sub, sub.validate_params(st.params)))
        return out

    def planned_samples(self, params: Any) -> int:
        return sum(sub.planned_samples(p) for _, sub, p in self.stages(params))

    def scorer_calls(self, params: Any) -> int:
        return sum(sub.scorer_calls(p) for _, sub, p in self.stages(params))

    def max_completion_tokens(self, params: Any) -> int:
        return sum(sub.max_completion_tokens(p) for _, sub, p in self.stages(params))

    def max_prompt_billings(self, params: Any) -> int:
        return sum(sub.max_prompt_billings(p) for _, sub, p in self.stages(params))

    def max_extra_prompt_tokens(self, params: Any) -> int:
        return sum(sub.max_extra_prompt_tokens(p) for _, sub, p in self.stages(params))

    def execute(
        self,
        ctx: RunContext,
        params: Any,
        engines: Mapping[str, Engine] | None = None,
        **extra: Any,
    ):
        engines = engines or {}
        records: list[dict[str, Any]] = []
        chosen: int | None = None
        votes: dict[str, float] | None = None
        reason = ""
        final = 0
        plan = self.stages(params)
        for i, (endpoint, sub, sub_params) in enumerate(plan):
            if endpoint is None:
                engine = ctx.engine
            elif endpoint in engines:
                engine = engines[endpoint]
            else:
                raise ValueError(f"cascade stage {i + 1} needs endpoint {endpoint!r}: not loaded")
            child = ctx.child(engine, endpoint)
            chosen, votes = sub.execute(child, sub_params, **extra)
            ctx.absorb(child, endpoint or OWN_ENDPOINT)
            pick = next((c for c in child.candidates if c.index == chosen), None)
            conf = stage_confidence(params.escalate_on, pick, votes)
            last = i == len(plan) - 1
            accept = conf is not None and conf >= params.threshold and pick is not None
            if ctx.cancelled:
                decision, reason = "cancelled", "the query was cancelled"
            elif last:
                decision = "final"
                if i > 0:
                    reason = records[-1]["why"]
            elif accept:
                decision = "accept"
                reason = f"{params.escalate_on} {conf:.3f} >= {params.threshold:g}"
            else:
                decision = "escalate"
            why = (
                "no answer"
                if pick is None or pick.answer_key is None
                else f"{params.escalate_on} {'unknown' if conf is None else f'{conf:.3f}'}"
                f" < {params.threshold:g}"
            )
            records.append(
                {
                    "endpoint": endpoint or "(configuration's)",
                    "strategy": sub.slug,
                    "samples": [c.index for c in child.candidates],
                    "answer": pick.extracted_answer if pick is not None else None,
                    "confidence": conf,
                    "prompt_tokens": child.ledger.prompt_tokens,
                    "completion_tokens": child.ledger.completion_tokens,
                    "decision": decision,
                    "why": why,
                    "final": False,
                }
            )
            final = i
            if decision != "escalate":
                break
        records[final]["final"] = True
        ctx.trace.update(
            {
                "kind": "cascade",
                "escalate_on": params.escalate_on,
                "threshold": params.threshold,
                "stages": records,
                "escalated": final > 0,
                "final_stage": final,
                "reason": reason,
            }
        )
        return chosen, votes


def stage_results(result: StrategyResult) -> list[dict[str, Any]]:
    """Return the stage records of a cascade's result (empty for other strategies)."""
    if result.trace.get("kind") != "cascade":
        return []
    return list(result.trace.get("stages") or [])


class ThresholdFit(BaseModel):
    """A cascade threshold fitted to minimise cost-of-pass, with what it predicts on its rows."""

    threshold: float = Field(ge=0, le=1)
    rows: int
    imputed_second: int = Field(description="rows whose second stage was imputed (not run)")
    escalation_rate: float
    accuracy: float
    mean_cost_usd: float
    cost_of_pass_usd: float
    #: The same figures for never (threshold 0) and always escalating (the second stage alone
    #: after the first: ``always``), for comparison.
    never: dict[str, float]
    always: dict[str, float]


def fit_threshold(rows: Sequence[Mapping[str, Any]], *, min_rows: int = 20) -> ThresholdFit:
    """Fit a two-stage cascade's escalation threshold (FrugalGPT / AutoMix-style) on rows of
    ``confidence`` (the first stage's, under the cascade's ``escalate_on``; None escalates at
    any threshold), ``first_correct`` (0/1), ``first_cost``, and the second stage's
    ``second_correct`` / ``second_cost`` (None where it did not run: imputed with the mean of
    the rows where it did, which the log has only for escalated queries).

    The threshold minimises total cost / total correct over the rows, accepting the first stage
    when its confidence is at least the threshold; candidates are 0 and the midpoints between
    consecutive distinct confidences (and above the largest, capped at 1). Ties go to the
    cheaper one. Raise ValueError with fewer than ``min_rows`` rows, or when no row has a
    second stage to impute from.
    """
    if len(rows) < min_rows:
        raise ValueError(f"need at least {min_rows} graded cascade runs, got {len(rows)}")
    seen2 = [r for r in rows if r.get("second_correct") is not None]
    if not seen2:
        raise ValueError("no run reached the second stage: its accuracy is unknown")
    mean2 = sum(float(r["second_correct"]) for r in seen2) / len(seen2)
    mean2_cost = sum(float(r["second_cost"]) for r in seen2) / len(seen2)
    conf = [-1.0 if r.get("confidence") is None else float(r["confidence"]) for r in rows]
    c1 = [float(r["first_correct"]) for r in rows]
    k1 = [float(r["first_cost"]) for r in rows]
    c2 = [mean2 if r.get("second_correct") is None else float(r["second_correct"]) for r in rows]
    k2 = [mean2_cost if r.get("second_cost") is None else float(r["second_cost"]) for r in rows]
    distinct = sorted({c for c in conf if c >= 0})
    cands = [0.0] + [(a + b) / 2 for a, b in zip(distinct, distinct[1:], strict=False)]
    if distinct and distinct[-1] < 1:
        cands.append(min(1.0, (distinct[-1] + 1) / 2))

    def evaluate(t: float) -> dict[str, float]:
        cost = correct = esc = 0.0
        for cf, a, ka, b, kb in zip(conf, c1, k1, c2, k2, strict=True):
            cost += ka
            if cf >= t:
                correct += a
            else:
                esc += 1
                cost += kb
                correct += b
        n = len(conf)
        return {"threshold": t, "escalation_rate": esc / n, "accuracy": correct / n,
                "mean_cost_usd": cost / n,
                "cost_of_pass_usd": cost / correct if correct else float("inf")}  # fmt: skip

    results = [evaluate(t) for t in cands]
    best = min(results, key=lambda r: (r["cost_of_pass_usd"], r["mean_cost_usd"]))
    always = evaluate(2.0)  # above every confidence: the second stage always runs
    return ThresholdFit(
        threshold=best["threshold"],
        rows=len(rows),
        imputed_second=len(rows) - len(seen2),
        escalation_rate=best["escalation_rate"],
        accuracy=best["accuracy"],
        mean_cost_usd=best["mean_cost_usd"],
        cost_of_pass_usd=best["cost_of_pass_usd"],
        never=evaluate(0.0),
        always=always,
    )
