"""Celery tasks: each takes ids, imports its service inside the body and calls it. No logic here."""

from __future__ import annotations

from django.conf import settings

from workers.celery import app


@app.task(
    name="costpass.query_execute",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.QUERY_SOFT_TIME_LIMIT_S,
    time_limit=settings.QUERY_HARD_TIME_LIMIT_S,
)
def query_execute(query_id: str) -> str:
    """Run one query with its chosen configuration; return its final status."""
    from routerapp.services.execution import query_run

    return query_run(query_id=query_id)
