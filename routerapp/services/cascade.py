"""Refit the escalation threshold of two-stage cascades that ask for it (``learn_threshold``)
on the graded query log, with each router fit from the log (FrugalGPT / AutoMix-style: the
threshold with the least cost-of-pass over the logged runs, ``workers.strategies.cascade``)."""

from __future__ import annotations

import logging
from collections import defaultdict
from decimal import Decimal
from typing import Any

from django.db import transaction

from routerapp.models import Sample, StrategyConfig
from routerapp.selectors.queries import graded_runs
from routerapp.services.audit import audit_record

log = logging.getLogger(__name__)


def cascade_rows(*, strategy_config: StrategyConfig) -> list[dict[str, Any]]:
    """Return the fit rows of a two-stage cascade's graded queries: the first stage's
    confidence, correctness and cost (its samples' billed USD), and, where the query escalated,
    the second stage's correctness (the query's grade) and cost; None where it did not run.

    The first stage's correctness is its answer graded against the gold when there is one; else
    the query's grade when the first stage answered, or when its answer is the final one; else
    wrong when the final (different) answer was graded right; otherwise the query is skipped.
    """
    from workers.grading import grade

    queries = graded_runs(
        strategy_config=strategy_config,
        fields=("pk", "trace", "gold", "answer_kind", "extracted_answer", "graded_correct"),
    )
    costs: dict[Any, dict[int, Decimal]] = defaultdict(dict)
    for s in Sample.objects.filter(query_id__in=[q["pk"] for q in queries]).values(
        "query_id", "index", "cost_usd"
    ):
        costs[s["query_id"]][s["index"]] = s["cost_usd"]
    rows = []
    for q in queries:
        t = q["trace"] or {}
        stages = t.get("stages") or []
        if t.get("kind") != "cascade" or not stages or len(stages) > 2:
            continue
        first = stages[0]
        escalated = len(stages) == 2
        answer = first.get("answer")
        if q["gold"]:
            first_ok = bool(answer) and bool(
                grade(str(answer), q["gold"], answer_kind=q["answer_kind"] or None)
            )
        elif not escalated or (answer and answer == q["extracted_answer"]):
            first_ok = bool(q["graded_correct"])
        elif q["graded_correct"]:
            first_ok = False
        else:
            continue  # the final answer was wrong and differs from the first stage's: unknown
        paid = costs[q["pk"]]
        row: dict[str, Any] = {
            "confidence": first.get("confidence"),
            "first_correct": float(first_ok),
            "first_cost": float(sum(paid.get(i, Decimal(0)) for i in first.get("samples", []))),
            "second_correct": None,
            "second_cost": None,
        }
        if escalated:
            row["second_correct"] = float(bool(q["graded_correct"]))
            row["second_cost"] = float(
                sum(paid.get(i, Decimal(0)) for i in stages[1].get("samples", []))
            )
        rows.append(row)
    return rows


def cascade_thresholds_refit(*, min_rows: int = 20) -> dict[str, str]:
    """Refit the threshold of every two-stage cascade with ``learn_threshold`` that has enough
    graded runs; return what happened per strategy configuration name (audited when changed)."""
    from workers.strategies.cascade import fit_threshold

    outcome: dict[str, str] = {}
    for sc in StrategyConfig.objects.filter(strategy="cascade"):
        params = sc.params or {}
        if not params.get("learn_threshold"):
            continue
        if len(params.get("stages") or []) != 2:
            outcome[sc.name] = "kept: only two-stage cascades learn their threshold"
            continue
        rows = cascade_rows(strategy_config=sc)
        try:
            fit = fit_threshold(rows, min_rows=min_rows)
        except ValueError as exc:
            outcome[sc.name] = f"kept: {exc}"
            continue
        with transaction.atomic():
            locked = StrategyConfig.objects.select_for_update().get(pk=sc.pk)
            before = dict(locked.params)
            locked.params = {**locked.params, "threshold": round(fit.threshold, 6),
                             "threshold_fitted_on": fit.rows}  # fmt: skip
            locked.save(update_fields=["params", "updated_at"])
            audit_record(action="update", obj=locked, changes={"params": [before, locked.params]})
        outcome[sc.name] = (
            f"threshold {fit.threshold:.3f} on {fit.rows} runs "
            f"({fit.imputed_second} second stages imputed; CoP {fit.cost_of_pass_usd:.3g})"
        )
        log.info("cascade threshold of %s refit: %s", sc.name, outcome[sc.name])
    return outcome
