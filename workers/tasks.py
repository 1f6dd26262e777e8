"""Celery tasks: each takes ids, imports its service inside the body and calls it. No logic here."""

from __future__ import annotations

from django.conf import settings
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError

from workers.celery import app

# Errors of a service that is restarting (the database, the broker): the task is sent again
# later rather than acknowledged as failed with its query unfinished. If even the retry cannot
# be sent, the query row (still queued or running) is the durable record: the reaper
# (queries_reap) dispatches it again.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, BrokerError, RedisConnectionError)


@app.task(
    name="costpass.query_execute",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.QUERY_SOFT_TIME_LIMIT_S,
    time_limit=settings.QUERY_HARD_TIME_LIMIT_S,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=1,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=12,
)
def query_execute(query_id: str) -> str:
    """Run one query with its chosen configuration; return its final status."""
    from routerapp.services.execution import query_run

    return query_run(query_id=query_id)


@app.task(
    name="costpass.benchmark_run_start",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.TRAINING_SOFT_TIME_LIMIT_S,
    time_limit=settings.TRAINING_HARD_TIME_LIMIT_S,
)
def benchmark_run_start(run_id: int) -> None:
    """Create a benchmark run's queries; the engine workers run them."""
    from routerapp.services.benchmarks import benchmark_run_start as start

    start(run_id=run_id)


@app.task(
    name="costpass.router_version_fit",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.TRAINING_SOFT_TIME_LIMIT_S,
    time_limit=settings.TRAINING_HARD_TIME_LIMIT_S,
)
def router_version_fit(version_id: int) -> None:
    """Fit, evaluate and store a router version."""
    from routerapp.services.routers import router_version_fit as fit

    fit(version_id=version_id)


@app.task(name="costpass.rollup_refresh", acks_late=True, soft_time_limit=120, time_limit=180)
def rollup_refresh(group: dict) -> None:
    """Recompute one dashboard rollup group from the log (scheduled, debounced)."""
    from routerapp.services.rollups import rollup_refresh_pending

    rollup_refresh_pending(group=group)


@app.task(name="costpass.queries_reap", soft_time_limit=120, time_limit=180)
def queries_reap() -> int:
    """Recover queries whose process died mid-run or whose message was lost: bill, queue
    again or fail and settle (scheduled by Celery beat every REAP_INTERVAL_S)."""
    from routerapp.services.execution import queries_reap_stale

    return queries_reap_stale()


@app.task(name="costpass.texts_retention", soft_time_limit=240, time_limit=300)
def texts_retention() -> int:
    """Delete the texts the retention settings no longer allow to keep (Celery beat, every
    minute); the ledger, grades and the router's prompt sketches stay."""
    from routerapp.services.retention import texts_enforce_retention

    return texts_enforce_retention()


@app.task(name="costpass.budget_alerts_deliver", soft_time_limit=120, time_limit=180)
def budget_alerts_deliver() -> int:
    """Send the budget alerts not yet delivered (after a settlement, and every minute)."""
    from routerapp.services.alerts import budget_alerts_deliver as deliver

    return deliver()


@app.task(name="costpass.router_retrain_due", soft_time_limit=60, time_limit=120)
def router_retrain_due() -> int | None:
    """Train a new router version when the log has grown while none serves (Celery beat)."""
    from routerapp.services.routers import router_retrain_if_due

    version = router_retrain_if_due()
    return version.pk if version else None
