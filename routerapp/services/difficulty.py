"""Refit the classifiers of the difficulty-adaptive strategies on the query log (run with each
router fit from the log, or on its own): their probes' features against whether the probe's
answer was right."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from routerapp.models import StrategyConfig
from routerapp.selectors.queries import graded_runs
from routerapp.services.audit import audit_record

log = logging.getLogger(__name__)


def probe_rows(*, strategy_config: StrategyConfig) -> list[dict[str, Any]]:
    """Return (entropy, length, task, probe_correct) of the graded queries of a difficulty-adaptive
    strategy whose probe's correctness is known: it was the answer, or the answer was graded
    correct and the probe's answer differs (so the probe was wrong)."""
    from workers.grading import grade

    rows = []
    queries = graded_runs(
        strategy_config=strategy_config,
        fields=("trace", "task", "gold", "answer_kind", "extracted_answer", "graded_correct"),
    )
    for q in queries:
        t = q["trace"] or {}
        if t.get("kind") != "difficulty" or "features" not in t:
            continue
        probe = t.get("probe_answer")
        if q["gold"]:
            right = bool(probe) and bool(
                grade(str(probe), q["gold"], answer_kind=q["answer_kind"] or None)
            )
        elif t.get("ran") == "probe" or (probe and probe == q["extracted_answer"]):
            right = bool(q["graded_correct"])
        elif q["graded_correct"]:
            right = False
        else:
            continue  # the final answer was wrong and differs from the probe's: unknown
        f = t["features"]
        rows.append({"entropy": f["entropy"], "length": f["length"], "task": q["task"] or f.get("task", ""),
                     "probe_correct": right})  # fmt: skip
    return rows


def difficulty_classifiers_refit(*, min_rows: int = 20) -> dict[str, str]:
    """Refit every difficulty-adaptive strategy's classifier that has enough graded probes;
    return what happened per strategy configuration name (audited when it changed)."""
    from workers.strategies.difficulty import fit_classifier

    outcome: dict[str, str] = {}
    for sc in StrategyConfig.objects.filter(strategy="difficulty_adaptive"):
        rows = probe_rows(strategy_config=sc)
        old = dict(sc.params.get("classifier") or {})
        try:
            fitted = fit_classifier(
                rows,
                easy_above=float(old.get("easy_above", 0.7)),
                hard_below=float(old.get("hard_below", 0.3)),
                min_rows=min_rows,
            )
        except ValueError as exc:
            outcome[sc.name] = f"kept: {exc}"
            continue
        with transaction.atomic():
            locked = StrategyConfig.objects.select_for_update().get(pk=sc.pk)
            before = dict(locked.params)
            locked.params = {**locked.params, "classifier": fitted.model_dump()}
            locked.save(update_fields=["params", "updated_at"])
            audit_record(action="update", obj=locked, changes={"params": [before, locked.params]})
        outcome[sc.name] = f"refit on {len(rows)} probes"
        log.info("difficulty classifier of %s refit on %d probes", sc.name, len(rows))
    return outcome
