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
CALIBRATION_ITEMS = 24
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
    )
    outcomes, prompts = [], {}
    for prompt, messages, task, slug, model, strategy, correct, cost, p_tok, c_tok, lat in rows:
        text = prompt or next(
            (m["content"] for m in reversed(messages or []) if m.get("role") == "user"), ""
        )
        uid = prompt_uid(text, task)
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
) -> RouterVersion:
    """Create a version in status 'training' and (unless `enqueue` is False, for a caller that
    fits it itself) fit it in the background on the training queue. With ``team`` it is trained
    on that team's log only and, once activated, serves that team only."""
    if source not in ("log", "suite"):
        raise InvalidInput("source must be 'log' or 'suite'", param="source")
    if team is not None and source != "log":
        raise InvalidInput("a team's router version is trained on its log", param="source")
    trained_on: dict[str, Any] = {"source": source, "activate_when_ready": activate}
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
            router, full, evaluation, counts = _fit_suite(version, fit_router, evaluate)
        else:
            router, full, evaluation, counts = _fit_log(version, fit_router, evaluate)
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
        version.trained_on = {**version.trained_on, **counts}
        version.status = RouterVersion.Status.READY
        version.progress = 1.0
        version.trained_at = timezone.now()
        version.save()
        if version.trained_on.get("activate_when_ready"):
            router_version_activate(version=version)
    return version


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
    _progress(version.pk, 0.7)
    full = fit_router(outcomes, prompts, candidates, learner=version.learner, seed=0)
    counts = {
        "prompts": int(n_prompts),
        "outcome_rows": int(len(outcomes)),
        "train_prompts": len(train_ids),
        "test_prompts": len(test_ids),
        "candidates": sorted(cids),
    }
    return held_out if evaluation else full, full, evaluation, counts


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
    counts = {
        "suite": path.name,
        "prompts": int(train_o["prompt_uid"].nunique()),
        "outcome_rows": int(len(train_o)),
        "candidates": sorted(candidates["config_id"].astype(str)),
    }
    return router, router, evaluation, counts


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


@transaction.atomic
def router_version_activate(*, version: RouterVersion, actor: Any = None) -> RouterVersion:
    """Make `version` the one that serves (the previous active one steps down)."""
    _servable(version)
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


def calibration_ensure(*, items: int = CALIBRATION_ITEMS) -> BenchmarkRun | None:
    """On a fresh install (no router version, no calibration under way) start the calibration
    benchmark: generated problems x every enabled configuration; its end trains and activates
    the first version. Return the run, or None when nothing had to start."""
    from routerapp.services.benchmarks import benchmark_run_create
    from routerapp.services.bootstrap import DEMO_TEAM

    if RouterVersion.objects.exclude(status=RouterVersion.Status.FAILED).exists():
        return None
    running = BenchmarkRun.objects.filter(
        purpose=CALIBRATION_NAME,
        status__in=[BenchmarkRun.Status.QUEUED, BenchmarkRun.Status.RUNNING],
    ).first()
    if running is not None:
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
        name=CALIBRATION_NAME,
        configurations=configurations,
        generated={"n": items, "seed": 0},
        purpose=CALIBRATION_NAME,
    )


def calibration_finished(*, run_id: int) -> RouterVersion | None:
    """Train (and activate when ready) the first version from the calibration's outcomes."""
    run = BenchmarkRun.objects.get(pk=run_id)
    if run.purpose != CALIBRATION_NAME or run.status != BenchmarkRun.Status.DONE:
        return None
    if RouterVersion.objects.filter(status=RouterVersion.Status.READY).exists():
        return None
    return router_version_train(source="log", name="calibrated", activate=True)
