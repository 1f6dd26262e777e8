"""Router versions: train from the query log or a suite, evaluate against baselines, store,
activate, shadow; and the calibration run that trains the first version on a fresh install.

The learning itself lives in routerapp.routing (no Django); this module turns the product's
log into its outcome tables and stores what comes back.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from routerapp.errors import Conflict, InvalidInput
from routerapp.models import BenchmarkRun, Configuration, Query, RouterVersion, Team
from routerapp.services.audit import audit_record

log = logging.getLogger(__name__)

LEARNER = "meta-logit"
MIN_GRADED_PROMPTS = 10
CALIBRATION_NAME = "calibration"
# The first calibration batch (24 generated problems x every configuration: about 2 minutes on
# 2 CPU cores) and the cap on all batches together: while the floor check is undecided, more
# batches run (sized by routing.significance.prompts_needed) until it is decided or the cap is
# hit. Meanwhile the best single configuration serves.
CALIBRATION_ITEMS = 24
CALIBRATION_MAX_ITEMS = 96
CALIBRATION_MIN_BATCH = 12
# The floor every version must pass to serve: the 95% paired-bootstrap interval of
# CoP(router) - CoP(best single) must lie at or below 0 (no non-inferiority margin).
FLOOR_CONFIDENCE = 0.95
FLOOR_MARGIN = 0.0
FLOOR_FOLDS = 5
# While no installation-wide version serves, retrain (Celery beat, router_retrain_if_due) once
# the graded log has grown by a quarter and at least this many outcomes since the last version.
RETRAIN_GROWTH = 1.25
RETRAIN_MIN_NEW = 20
SUITE_FILES = (
    "candidates.csv",
    "train_outcomes.parquet",
    "train_prompts.parquet",
    "test_outcomes.parquet",
    "test_prompts.parquet",
)


def suites_dir() -> Path:
    """Where routing suites are read from (the data folder's suites/, never copied)."""
    return Path(settings.SHARED_DATA_DIR) / "suites"


def shared_suites() -> list[str]:
    """Return the names of the complete suites in the data folder ([] when it is absent)."""
    root = suites_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if all((p / f).is_file() for f in SUITE_FILES))


def prompt_uid(prompt: str, task: str) -> str:
    """Return a stable id for a prompt text under a task tag: repeated prompts aggregate."""
    return hashlib.sha256(f"{task}\x00{prompt}".encode()).hexdigest()[:16]


def product_candidates() -> list[Any]:
    """Return the enabled configurations as router candidates with their descriptors."""
    from routerapp.routing import Candidate
    from workers.strategies import get_strategy

    candidates = []
    for config in Configuration.objects.filter(enabled=True, endpoint__enabled=True).select_related(
        "endpoint", "strategy"
    ):
        strategy = get_strategy(config.strategy.strategy)
        params = strategy.validate_params(config.strategy.params)
        candidates.append(
            Candidate(
                config_id=config.slug,
                model=config.endpoint.name,
                strategy=f"{config.strategy.strategy}@{strategy.planned_samples(params)}",
                samples=strategy.planned_samples(params),
                input_usd_per_mtok=float(config.endpoint.input_usd_per_mtok),
                output_usd_per_mtok=float(config.endpoint.output_usd_per_mtok),
                max_tokens=int(params.max_tokens),
            )
        )
    return candidates


def log_outcome_tables(*, team: Team | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Export graded, finished queries as (outcomes, prompts) tables in the suite schema."""
    qs = Query.objects.filter(
        status=Query.Status.DONE, graded_correct__isnull=False, configuration__isnull=False
    )
    if team is not None:
        qs = qs.filter(team=team)
    rows = qs.values_list(
        "prompt",
        "messages",
        "task",
        "configuration__slug",
        "configuration__endpoint__name",
        "configuration__strategy__strategy",
        "graded_correct",
        "cost_usd",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "text_deleted_at",
        "router_sketch",
        "prompt_uid",
    )
    from routerapp.services.retention import router_prompt

    outcomes, prompts = [], {}
    for (
        prompt,
        messages,
        task,
        slug,
        model,
        strategy,
        correct,
        cost,
        p_tok,
        c_tok,
        lat,
        deleted,
        sketch,
        stored_uid,
    ) in rows:
        # A query whose text retention deleted keeps its prompt's sketch: same features, same id.
        text, uid = router_prompt(
            prompt=prompt,
            messages=messages,
            task=task,
            text_deleted_at=deleted,
            sketch=sketch,
            uid=stored_uid,
        )
        prompts[uid] = {"prompt_uid": uid, "dataset": task, "prompt": text}
        outcomes.append(
            {
                "prompt_uid": uid,
                "dataset": task,
                "config_id": slug,
                "model": model,
                "strategy": strategy,
                "correct": float(bool(correct)),
                "cost_usd": float(cost),
                "input_tokens": p_tok,
                "output_tokens": c_tok,
                "latency_s": None if lat is None else lat / 1000.0,
            }
        )
    columns = [
        "prompt_uid",
        "dataset",
        "config_id",
        "model",
        "strategy",
        "correct",
        "cost_usd",
        "input_tokens",
        "output_tokens",
        "latency_s",
    ]
    return (
        pd.DataFrame(outcomes, columns=columns),
        pd.DataFrame(list(prompts.values()), columns=["prompt_uid", "dataset", "prompt"]),
    )


def _split(uids: list[str], test_fraction: float = 0.3) -> tuple[set[str], set[str]]:
    """Split prompt ids deterministically (by hash) into train and test."""
    test = {
        u
        for u in uids
        if int(hashlib.md5(u.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < test_fraction
    }
    return set(uids) - test, test


@transaction.atomic
def router_version_train(
    *,
    source: str,
    suite_dir: str | None = None,
    name: str | None = None,
    created_by: Any = None,
    activate: bool = False,
    enqueue: bool = True,
    team: Team | None = None,
    calibration: bool = False,
) -> RouterVersion:
    """Create a version in status 'training' and (unless `enqueue` is False, for a caller that
    fits it itself) fit it in the background on the training queue. With ``team`` it is trained
    on that team's log only and, once activated, serves that team only. With `activate` it
    serves once fitted if it passes the floor (`floor_refusal`); with `calibration`, a version
    that cannot serve yet asks for another calibration batch (`calibration_extend`)."""
    if source not in ("log", "suite"):
        raise InvalidInput("source must be 'log' or 'suite'", param="source")
    if team is not None and source != "log":
        raise InvalidInput("a team's router version is trained on its log", param="source")
    trained_on: dict[str, Any] = {"source": source, "activate_when_ready": activate}
    if calibration:
        trained_on["calibration"] = True
    if source == "suite":
        if not suite_dir:
            raise InvalidInput("a suite needs its folder", param="suite_dir")
        path = Path(suite_dir)
        missing = [f for f in SUITE_FILES if not (path / f).is_file()]
        if missing:
            raise InvalidInput(
                f"{path} is not a suite: missing {', '.join(missing)}", param="suite_dir"
            )
        trained_on["suite_dir"] = str(path.resolve())
    version = RouterVersion.objects.create(
        name=(name or f"{source}-{timezone.now():%Y%m%d-%H%M%S}")[:100],
        learner=LEARNER,
        team=team,
        trained_on=trained_on,
        created_by=created_by if getattr(created_by, "is_authenticated", False) else None,
    )
    if enqueue:
        transaction.on_commit(lambda: _enqueue_fit(version.pk))
    return version


def _enqueue_fit(version_id: int) -> None:
    from workers.queues import Queue
    from workers.tasks import router_version_fit

    router_version_fit.apply_async(args=[version_id], queue=Queue.TRAINING.value)


def _progress(version_id: int, value: float) -> None:
    RouterVersion.objects.filter(pk=version_id).update(progress=value)


def _jsonable(value: Any) -> Any:
    """Replace NaN/inf (not JSON) with None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return value


def router_version_fit(*, version_id: int) -> RouterVersion:
    """Fit, evaluate and store a version (runs in a training worker). On failure the version is
    marked failed with the reason; nothing else changes."""
    from routerapp.routing import RouterError, evaluate, fit_router

    version = RouterVersion.objects.get(pk=version_id)
    if version.status != RouterVersion.Status.TRAINING:
        return version
    try:
        if version.trained_on.get("source") == "suite":
            router, full, evaluation, counts, floor = _fit_suite(version, fit_router, evaluate)
        elif version.trained_on.get("source") == "prior":
            from routerapp.services.coldstart import fit_prior

            router, full, evaluation, counts, floor = fit_prior(version, fit_router, evaluate)
        else:
            router, full, evaluation, counts, floor = _fit_log(version, fit_router, evaluate)
    except (RouterError, InvalidInput, ValueError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        RouterVersion.objects.filter(pk=version_id).update(
            status=RouterVersion.Status.FAILED, error=message[:4000], progress=1.0
        )
        log.warning("router version %s failed: %s", version_id, message)
        return RouterVersion.objects.get(pk=version_id)
    except Exception as exc:  # keep the reason visible on the Routers page
        log.exception("router version %s crashed", version_id)
        RouterVersion.objects.filter(pk=version_id).update(
            status=RouterVersion.Status.FAILED,
            error=f"{type(exc).__name__}: {exc}"[:4000],
            progress=1.0,
        )
        return RouterVersion.objects.get(pk=version_id)
    with transaction.atomic():
        version = RouterVersion.objects.select_for_update().get(pk=version_id)
        version.artifact = full.to_bytes()
        version.evaluation = _jsonable(evaluation)
        version.significance = _jsonable(floor)
        version.trained_on = {**version.trained_on, **counts}
        version.status = RouterVersion.Status.READY
        version.progress = 1.0
        version.trained_at = timezone.now()
        version.save()
        if version.trained_on.get("activate_when_ready"):
            _activate_if_floor_passes(version)
    if version.trained_on.get("calibration") and not version.is_active:
        calibration_extend(version=version)
    if version.trained_on.get("source") == "log":
        _refit_difficulty_classifiers()
    return version


def _refit_difficulty_classifiers() -> None:
    """The difficulty-adaptive strategies' classifiers and the learned cascade thresholds learn
    from the same log as the router."""
    from routerapp.services.cascade import cascade_thresholds_refit
    from routerapp.services.difficulty import difficulty_classifiers_refit

    try:
        difficulty_classifiers_refit()
    except Exception:  # a classifier refit must never fail a router version
        log.exception("refitting the difficulty classifiers failed")
    try:
        cascade_thresholds_refit()
    except Exception:  # nor may a cascade threshold refit
        log.exception("refitting the cascade thresholds failed")


def _activate_if_floor_passes(version: RouterVersion) -> None:
    """Automatic activation (calibration, retraining, `--activate`): only past the floor; a
    refusal is recorded on the version, shown on the Routers page, and changes nothing else."""
    try:
        router_version_activate(version=version)
    except Conflict as exc:
        sig = {**version.significance, "auto_activation": f"refused: {exc.message}"}
        RouterVersion.objects.filter(pk=version.pk).update(significance=sig)
        version.significance = sig
        log.info("router version %s not activated: %s", version.pk, exc.message)


def _fit_log(version: RouterVersion, fit_router: Any, evaluate: Any) -> tuple:
    outcomes, prompts = log_outcome_tables(team=version.team)
    candidates = product_candidates()
    cids = {c.config_id for c in candidates}
    outcomes = outcomes[outcomes["config_id"].isin(cids)]
    n_prompts = outcomes["prompt_uid"].nunique()
    if n_prompts < MIN_GRADED_PROMPTS:
        raise InvalidInput(
            f"the log has {n_prompts} graded prompts on enabled configurations; at least "
            f"{MIN_GRADED_PROMPTS} are needed (run a benchmark or send feedback first)"
        )
    _progress(version.pk, 0.1)
    train_ids, test_ids = _split(sorted(outcomes["prompt_uid"].unique()))
    train_o = outcomes[outcomes["prompt_uid"].isin(train_ids)]
    test_o = outcomes[outcomes["prompt_uid"].isin(test_ids)]
    evaluation: dict[str, Any] = {}
    if len(test_ids) and len(train_ids):
        held_out = fit_router(train_o, prompts, candidates, learner=version.learner, seed=0)
        _progress(version.pk, 0.4)
        evaluation = evaluate(held_out, test_o, prompts, train_o, prompts)
        evaluation["online_curve"] = _online_curve(held_out, test_o, prompts, train_o)
    _progress(version.pk, 0.5)
    floor = _floor_cross_validated(version, outcomes, prompts, candidates)
    _progress(version.pk, 0.9)
    full = fit_router(outcomes, prompts, candidates, learner=version.learner, seed=0)
    counts = {
        "prompts": int(n_prompts),
        "outcome_rows": int(len(outcomes)),
        "train_prompts": len(train_ids),
        "test_prompts": len(test_ids),
        "candidates": sorted(cids),
    }
    return held_out if evaluation else full, full, evaluation, counts, floor


def _online_curve(
    router: Any, test_o: pd.DataFrame, test_p: pd.DataFrame | None, train_o: pd.DataFrame
) -> dict[str, Any] | None:
    """The adaptation curve on the held-out prompts (routing.evaluation.online_curve): gap
    closed after the first 50 / 100 / 200 / 500 graded queries replayed online; None when the
    replay is impossible (the Routers page then shows no curve)."""
    from routerapp.routing import RouterError
    from routerapp.routing.evaluation import online_curve

    try:
        curve = online_curve(router, test_o, test_p, train_o, seeds=3)
    except (RouterError, ValueError) as exc:
        log.info("no online curve: %s", exc)
        return None
    curve.pop("by_seed", None)  # per-seed detail: not needed on the page
    return curve


def _floor_report(comparison: Any, method: str) -> dict[str, Any]:
    from routerapp.routing.significance import prompts_needed

    report: dict[str, Any] = comparison.as_dict()
    report["method"] = method
    report["prompts_needed"] = prompts_needed(comparison)
    return report


def _floor_cross_validated(
    version: RouterVersion, outcomes: pd.DataFrame, prompts: pd.DataFrame, candidates: list[Any]
) -> dict[str, Any]:
    """The floor check of a log-trained version: K-fold cross-fitted on every prompt that has
    every configuration's outcome (a 30% hold-out of a 24-problem calibration is 7 prompts)."""
    from routerapp.routing import TableError
    from routerapp.routing.significance import (
        best_single_config,
        compare,
        cross_validated_pairs,
    )

    serve = best_single_config(outcomes, [c.config_id for c in candidates])
    try:
        pairs = cross_validated_pairs(
            outcomes,
            prompts,
            candidates,
            learner=version.learner,
            folds=FLOOR_FOLDS,
            seed=0,
            progress=lambda f: _progress(version.pk, 0.5 + 0.4 * f),
        )
    except TableError as exc:
        return {"verdict": "undecided", "passes": False, "n_prompts": 0, "reason": str(exc),
                "serve_config": serve}  # fmt: skip
    comparison = compare(pairs, confidence=FLOOR_CONFIDENCE, margin=FLOOR_MARGIN, seed=0)
    method = (
        f"{FLOOR_FOLDS}-fold cross-fitted: each prompt routed by a router trained without it, "
        "against the best single configuration chosen without it"
    )
    return {**_floor_report(comparison, method), "serve_config": serve}


def _fit_suite(version: RouterVersion, fit_router: Any, evaluate: Any) -> tuple:
    path = Path(version.trained_on["suite_dir"])
    candidates = pd.read_csv(path / "candidates.csv")
    train_o = pd.read_parquet(path / "train_outcomes.parquet")
    train_p = pd.read_parquet(path / "train_prompts.parquet")
    test_o = pd.read_parquet(path / "test_outcomes.parquet")
    test_p = pd.read_parquet(path / "test_prompts.parquet")
    _progress(version.pk, 0.1)
    router = fit_router(train_o, train_p, candidates, learner=version.learner, seed=0)
    _progress(version.pk, 0.5)
    evaluation = evaluate(router, test_o, test_p, train_o, train_p)
    evaluation["online_curve"] = _online_curve(router, test_o, test_p, train_o)
    _progress(version.pk, 0.8)
    floor = _floor_held_out(router, test_o, test_p, train_o)
    counts = {
        "suite": path.name,
        "prompts": int(train_o["prompt_uid"].nunique()),
        "outcome_rows": int(len(train_o)),
        "candidates": sorted(candidates["config_id"].astype(str)),
    }
    return router, router, evaluation, counts, floor


def _floor_held_out(
    router: Any, test_o: pd.DataFrame, test_p: pd.DataFrame, train_o: pd.DataFrame
) -> dict[str, Any]:
    """The floor check of a suite-trained version: its held-out test prompts."""
    from routerapp.routing import TableError
    from routerapp.routing.significance import best_single_config, compare, held_out_pairs

    serve = best_single_config(train_o, router.config_ids)
    try:
        pairs = held_out_pairs(router, test_o, test_p, train_o)
    except TableError as exc:
        return {"verdict": "undecided", "passes": False, "n_prompts": 0, "reason": str(exc),
                "serve_config": serve}  # fmt: skip
    comparison = compare(pairs, confidence=FLOOR_CONFIDENCE, margin=FLOOR_MARGIN, seed=0)
    method = "held-out test prompts, against the best single configuration chosen on training"
    return {**_floor_report(comparison, method), "serve_config": serve}


def _servable(version: RouterVersion) -> None:
    """Raise Conflict unless every candidate of the version is an enabled configuration."""
    if version.status != RouterVersion.Status.READY:
        raise Conflict(f"router version {version.pk} is not ready ({version.status})")
    candidates = set(version.trained_on.get("candidates", []))
    enabled = set(Configuration.objects.filter(enabled=True).values_list("slug", flat=True))
    unknown = sorted(candidates - enabled)
    if not candidates or unknown:
        raise Conflict(
            f"router version {version.pk} chooses among configurations this installation does "
            f"not serve ({', '.join(unknown[:5]) or 'none'}); it can be evaluated, not activated"
        )


def floor_refusal(version: RouterVersion) -> str | None:
    """Return why `version` may not serve by the floor (None when it may): its paired interval
    on CoP(router) - CoP(best single) must support "router <= best single"."""
    sig = version.significance or {}
    if "passes" not in sig:
        return (
            f"router version {version.pk} has no comparison with the best single configuration "
            "(trained before the floor check existed); train a new version"
        )
    if sig.get("passes"):
        return None
    n = sig.get("n_prompts") or 0
    single = sig.get("single_config") or "the best single configuration"
    if not n:
        return (
            f"router version {version.pk} could not be compared with {single}: "
            f"{sig.get('reason') or 'no prompt to compare on'}"
        )
    low, high = sig.get("ci_low"), sig.get("ci_high")
    ci = f"[{_usd(low)}, {_usd(high)}]"
    conf = f"{round(100 * float(sig.get('confidence') or FLOOR_CONFIDENCE))}%"
    if sig.get("verdict") == "worse":
        why = f"it loses to {single}"
    else:
        needed = sig.get("prompts_needed")
        why = f"{n} prompts cannot tell it from {single}" + (
            f" (about {needed} would)" if needed and needed < 100_000 else ""
        )
    return (
        f"router version {version.pk} may not serve: {why}; cost-of-pass difference router - "
        f"best single {_usd(sig.get('diff'))} per correct answer, {conf} CI {ci} on {n} prompts "
        "does not lie at or below 0"
    )


def _usd(value: Any) -> str:
    if value is None:
        return "inf"
    return f"{float(value):+.3g} USD"


@transaction.atomic
def router_version_activate(*, version: RouterVersion, actor: Any = None) -> RouterVersion:
    """Make `version` the one that serves (the previous active one steps down).

    Raise Conflict (nothing written) when it is not ready, chooses among configurations this
    installation does not serve, or does not pass the floor (`floor_refusal`).
    """
    _servable(version)
    refusal = floor_refusal(version)
    if refusal is not None:
        raise Conflict(refusal)
    # Versions serve per scope: the installation's (no team) or one team's.
    same_scope = RouterVersion.objects.filter(is_active=True, team=version.team)
    previous = same_scope.select_for_update().first()
    if previous is not None and previous.pk == version.pk:
        return version
    same_scope.update(is_active=False)
    RouterVersion.objects.filter(pk=version.pk).update(is_active=True, is_shadow=False)
    version.is_active, version.is_shadow = True, False
    audit_record(
        action="activate",
        obj=version,
        actor=actor,
        changes={"active": [previous.pk if previous else None, version.pk]},
    )
    return version


@transaction.atomic
def router_version_set_shadow(
    *, version: RouterVersion, shadow: bool, actor: Any = None
) -> RouterVersion:
    """Run a version in shadow (it decides on every query, does not serve) or stop that."""
    if shadow:
        _servable(version)
        if version.is_active:
            raise Conflict("the active version serves; it cannot also be the shadow")
        RouterVersion.objects.filter(is_shadow=True).exclude(pk=version.pk).update(is_shadow=False)
    RouterVersion.objects.filter(pk=version.pk).update(is_shadow=shadow)
    audit_record(
        action="shadow" if shadow else "unshadow",
        obj=version,
        actor=actor,
        changes={"is_shadow": [version.is_shadow, shadow]},
    )
    version.is_shadow = shadow
    return version


def _calibration_runs() -> Any:
    return BenchmarkRun.objects.filter(purpose=CALIBRATION_NAME)


def calibration_ensure(*, items: int = CALIBRATION_ITEMS) -> BenchmarkRun | None:
    """On a fresh install (no router version, no calibration under way) start the calibration
    benchmark: generated problems x every enabled configuration; its end trains the first
    version, which serves if it passes the floor. Return the run, or None when nothing had to
    start."""
    if RouterVersion.objects.exclude(status=RouterVersion.Status.FAILED).exists():
        return None
    return _calibration_batch(items=items, seed=0)


def _calibration_batch(*, items: int, seed: int) -> BenchmarkRun | None:
    from routerapp.services.benchmarks import benchmark_run_create
    from routerapp.services.bootstrap import DEMO_TEAM

    running = _calibration_runs().filter(
        status__in=[BenchmarkRun.Status.QUEUED, BenchmarkRun.Status.RUNNING]
    )
    if running.exists():
        return None
    team = Team.objects.filter(name=DEMO_TEAM).first()
    configurations = list(
        Configuration.objects.filter(enabled=True, endpoint__enabled=True).select_related(
            "endpoint"
        )
    )
    if team is None or len(configurations) < 2:
        return None
    return benchmark_run_create(
        team=team,
        name=CALIBRATION_NAME if seed == 0 else f"{CALIBRATION_NAME} {seed + 1}",
        configurations=configurations,
        generated={"n": items, "seed": seed},
        purpose=CALIBRATION_NAME,
    )


def calibration_extend(*, version: RouterVersion) -> BenchmarkRun | None:
    """After a calibration-trained version that may not serve: when its floor check is
    undecided, run another batch of generated problems, as many as the interval says are
    needed (at least CALIBRATION_MIN_BATCH), until CALIBRATION_MAX_ITEMS in all. A decided
    check (the router loses, or it ties) or the cap ends calibration; the best single
    configuration keeps serving and later retraining can still pass the floor. The decision is
    recorded on the version. Return the new run, or None."""
    sig = dict(version.significance or {})
    done = sum(
        len(items or [])
        for items in _calibration_runs()
        .exclude(status__in=[BenchmarkRun.Status.FAILED, BenchmarkRun.Status.CANCELLED])
        .values_list("items", flat=True)
    )
    run = None
    if sig.get("passes"):
        note = "ended: the router passed the floor"
    elif sig.get("verdict") == "worse":
        note = f"ended after {done} problems: the router loses to the best single configuration"
    elif done >= CALIBRATION_MAX_ITEMS:
        note = f"ended at the cap of {CALIBRATION_MAX_ITEMS} problems without a decision"
    else:
        n = int(sig.get("n_prompts") or 0)
        wanted = int(sig.get("prompts_needed") or CALIBRATION_MAX_ITEMS) - n
        batch = max(CALIBRATION_MIN_BATCH, min(wanted, CALIBRATION_MAX_ITEMS - done))
        run = _calibration_batch(items=batch, seed=_calibration_runs().count())
        note = (
            f"undecided on {n} prompts: {batch} more problems are running"
            if run is not None
            else "undecided; no further batch could start"
        )
    sig["calibration"] = note
    RouterVersion.objects.filter(pk=version.pk).update(significance=sig)
    version.significance = sig
    return run


def calibration_finished(*, run_id: int) -> RouterVersion | None:
    """Train a version on the log after a calibration batch (it activates if it passes the
    floor; otherwise `calibration_extend` may run another batch)."""
    run = BenchmarkRun.objects.get(pk=run_id)
    if run.purpose != CALIBRATION_NAME or run.status != BenchmarkRun.Status.DONE:
        return None
    if RouterVersion.objects.filter(is_active=True).exists():
        return None
    if RouterVersion.objects.filter(status=RouterVersion.Status.TRAINING).exists():
        return None
    n = _calibration_runs().filter(status=BenchmarkRun.Status.DONE).count()
    return router_version_train(
        source="log",
        name="calibrated" if n <= 1 else f"calibrated-{n}",
        activate=True,
        calibration=True,
    )


def router_retrain_if_due() -> RouterVersion | None:
    """Keep learning while the best single configuration serves: when no installation-wide
    version is active, nothing is training or calibrating, and the graded log has grown by
    RETRAIN_GROWTH (and RETRAIN_MIN_NEW outcomes) since the newest log-trained version, train a
    new version that activates itself if it passes the floor. Return it, or None."""
    if RouterVersion.objects.filter(is_active=True, team__isnull=True).exists():
        return None
    if RouterVersion.objects.filter(status=RouterVersion.Status.TRAINING).exists():
        return None
    if (
        _calibration_runs()
        .filter(status__in=[BenchmarkRun.Status.QUEUED, BenchmarkRun.Status.RUNNING])
        .exists()
    ):
        return None
    last = (
        RouterVersion.objects.filter(team__isnull=True, trained_on__source="log")
        .exclude(status=RouterVersion.Status.FAILED)
        .order_by("-created_at")
        .first()
    )
    graded = Query.objects.filter(
        status=Query.Status.DONE,
        graded_correct__isnull=False,
        configuration__enabled=True,
        configuration__endpoint__enabled=True,
    ).count()
    before = int((last.trained_on or {}).get("outcome_rows", 0)) if last else 0
    if graded < max(MIN_GRADED_PROMPTS, before * RETRAIN_GROWTH, before + RETRAIN_MIN_NEW):
        return None
    return router_version_train(source="log", name="retrained", activate=True)
