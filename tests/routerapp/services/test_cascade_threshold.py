"""A cascade that asks for it learns its escalation threshold from the graded query log."""

from __future__ import annotations

from decimal import Decimal

import pytest

from routerapp.models import AuditLog, Query, Sample, StrategyConfig
from routerapp.services.cascade import cascade_rows, cascade_thresholds_refit
from tests.factories import ConfigurationFactory, StrategyConfigFactory, TeamFactory
from workers.strategies import get_strategy

pytestmark = pytest.mark.django_db

PARAMS = {
    "stages": [
        {"strategy": "single", "params": {"max_tokens": 8}},
        {"strategy": "majority_vote", "params": {"n": 2, "max_tokens": 8}},
    ],
    "escalate_on": "agreement",
    "threshold": 0.3,
}


def logged_cascade(name: str, *, learn: bool) -> StrategyConfig:
    """30 graded runs: 20 sure (0.9, right, not escalated), 10 unsure (0.4, wrong first answer,
    escalated to a second stage that was right); each stage's samples cost 1e-6 USD in all."""
    sc = StrategyConfigFactory(name=name, strategy="cascade",
                               params={**PARAMS, "learn_threshold": learn})  # fmt: skip
    config = ConfigurationFactory(strategy=sc)
    team = TeamFactory()
    for i in range(30):
        sure = i < 20
        stages = [{"samples": [0], "answer": "9" if sure else "4",
                   "confidence": 0.9 if sure else 0.4}]  # fmt: skip
        if not sure:
            stages.append({"samples": [1, 2], "answer": "9", "confidence": 1.0})
        q = Query.objects.create(
            team=team, prompt=f"p{i}", configuration=config, status=Query.Status.DONE,
            gold="9", answer_kind="math", extracted_answer="9", graded_correct=True,
            trace={"kind": "cascade", "stages": stages, "escalated": not sure},
        )  # fmt: skip
        Sample.objects.create(query=q, index=0, cost_usd=Decimal("0.000001"))
        if not sure:
            for j in (1, 2):
                Sample.objects.create(query=q, index=j, cost_usd=Decimal("0.0000005"))
    return sc


def test_the_threshold_is_refit_to_the_least_cost_of_pass_and_audited():
    sc = logged_cascade("casc-learn", learn=True)
    fixed = logged_cascade("casc-fixed", learn=False)
    rows = cascade_rows(strategy_config=sc)
    assert len(rows) == 30
    unsure = [r for r in rows if r["confidence"] == 0.4]
    assert len(unsure) == 10
    assert all(r["first_correct"] == 0 and r["second_correct"] == 1 for r in unsure)
    assert unsure[0]["first_cost"] == pytest.approx(1e-6)
    assert unsure[0]["second_cost"] == pytest.approx(1e-6)
    assert all(r["second_correct"] is None for r in rows if r["confidence"] == 0.9)
    # Escalating the unsure runs: (30 + 10) x 1e-6 / 30 right = 1.33e-6 per right answer, less
    # than never (30e-6 / 20 = 1.5e-6) or always (60e-6 / 30 = 2e-6): accept 0.9, escalate 0.4.
    out = cascade_thresholds_refit()
    assert out == {"casc-learn": "threshold 0.650 on 30 runs (20 second stages imputed; "
                   "CoP 1.33e-06)"}  # fmt: skip
    sc.refresh_from_db()
    fixed.refresh_from_db()
    assert sc.params["threshold"] == pytest.approx(0.65)
    assert sc.params["threshold_fitted_on"] == 30
    assert fixed.params["threshold"] == 0.3  # it did not ask to learn
    # What was stored is still valid cascade params.
    assert get_strategy("cascade").validate_params(sc.params).threshold == pytest.approx(0.65)
    assert AuditLog.objects.filter(object_repr__contains="casc-learn").exists()


def test_too_few_runs_keep_the_threshold():
    sc = StrategyConfigFactory(name="casc-new", strategy="cascade",
                               params={**PARAMS, "learn_threshold": True})  # fmt: skip
    assert cascade_thresholds_refit() == {"casc-new": "kept: need at least 20 graded cascade "
                                          "runs, got 0"}  # fmt: skip
    sc.refresh_from_db()
    assert sc.params["threshold"] == 0.3


def test_a_router_fit_from_the_log_refits_the_threshold_too():
    from routerapp.services.routers import _refit_difficulty_classifiers

    sc = logged_cascade("casc-hook", learn=True)
    _refit_difficulty_classifiers()  # what router_version_fit runs after a fit from the log
    sc.refresh_from_db()
    assert sc.params["threshold"] == pytest.approx(0.65) and sc.params["threshold_fitted_on"] == 30
