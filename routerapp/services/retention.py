"""Data retention: how long prompt and answer texts are kept.

What is deleted: a finished query's prompt, chat messages, answer, extracted answer, vote keys
and gold, and its samples' texts and extracted answers. What stays: everything the ledger,
budgets, dashboards and usage read (tokens, costs, prices, timings, status, configuration, the
decision, grades and feedback, end user, tags, errors), and what the router reads of the prompt:
a sketch (its token bag and hand-made markers, ``routing.features.prompt_sketch``) and the
prompt's id, so router training on the log and online learning give the same results as with
the text.

``COSTPASS_TEXT_RETENTION_DAYS`` deletes texts that many days after a query was created;
``COSTPASS_STORE_TEXT=false`` deletes them once a query has finished and its caller had
``COSTPASS_TEXT_READ_GRACE_S`` to read the answer. Enforced by the beat task texts_retention.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from routerapp.models import Query, Sample

log = logging.getLogger(__name__)

BATCH = 500


def retention_cutoff(*, now: dt.datetime) -> tuple[str, dt.datetime] | None:
    """Return (the timestamp field, the cutoff) before which finished queries lose their texts,
    or None when texts are kept for ever."""
    if not settings.STORE_TEXT:
        return "finished_at", now - dt.timedelta(seconds=settings.TEXT_READ_GRACE_S)
    if settings.TEXT_RETENTION_DAYS > 0:
        return "created_at", now - dt.timedelta(days=settings.TEXT_RETENTION_DAYS)
    return None


def texts_enforce_retention(*, now: dt.datetime | None = None, limit: int = 20_000) -> int:
    """Delete the texts of the finished queries past the retention cutoff; return how many
    queries lost their texts (at most ``limit`` per call, in batches)."""
    cutoff = retention_cutoff(now=now or timezone.now())
    if cutoff is None:
        return 0
    field, before = cutoff
    done = 0
    while done < limit:
        ids = list(
            Query.objects.filter(
                status__in=Query.FINISHED, text_deleted_at__isnull=True, **{f"{field}__lt": before}
            )
            .order_by(field)
            .values_list("pk", flat=True)[:BATCH]
        )
        if not ids:
            break
        done += query_texts_delete(query_ids=ids)
    if done:
        log.info("retention: deleted the texts of %d queries", done)
    return done


def query_texts_delete(*, query_ids: list[Any]) -> int:
    """Replace the texts of these finished queries (and their samples) by nothing, keeping
    the router's sketch of each prompt; return how many were changed. Unfinished queries and
    queries already done are skipped."""
    from routerapp.routing.features import SKETCH_PREFIX, prompt_sketch
    from routerapp.services.queries import prompt_text
    from routerapp.services.routers import prompt_uid

    changed = 0
    now = timezone.now()
    with transaction.atomic():
        queries = list(
            Query.objects.select_for_update()
            .filter(pk__in=query_ids, status__in=Query.FINISHED, text_deleted_at__isnull=True)
            .only("pk", "prompt", "messages", "task")
        )
        for query in queries:
            text = prompt_text(query.prompt, query.messages)
            Query.objects.filter(pk=query.pk).update(
                # Stored without its NUL marker (Postgres text cannot hold NUL).
                router_sketch=prompt_sketch(text).removeprefix(SKETCH_PREFIX),
                prompt_uid=prompt_uid(text, query.task),
                prompt="",
                messages=None,
                answer="",
                extracted_answer="",
                votes=None,
                gold="",
                text_deleted_at=now,
            )
            changed += 1
        if queries:
            Sample.objects.filter(query_id__in=[q.pk for q in queries]).update(
                text="", extracted_answer=""
            )
    return changed


def router_prompt(
    *, prompt: str, messages: Any, task: str, text_deleted_at: Any, sketch: str, uid: str
) -> tuple[str, str]:
    """Return (the text the router reads, the prompt's id) of a logged query: the prompt's
    text, or its sketch once the text was deleted (same features, same id)."""
    from routerapp.services.queries import prompt_text
    from routerapp.services.routers import prompt_uid

    if text_deleted_at is not None and sketch:
        return router_sketch_text(sketch), uid
    text = prompt_text(prompt, messages)
    return text, prompt_uid(text, task)


def router_sketch_text(stored: str) -> str:
    """Return the router's stand-in text of a stored sketch (see Query.router_sketch)."""
    from routerapp.routing.features import SKETCH_PREFIX

    return SKETCH_PREFIX + stored
