"""The daily rollups of finished queries that the dashboards read: QueryDailyRollup per
(day, team, configuration, task, key, kind) and QueryDailyConfigRollup, its sum over tasks and
keys, for dashboards without a task or key filter.

A rollup row stands for one group of the log: (UTC day of creation, team, configuration, task
tag, API key, kind). It is never incremented: it is recomputed from the log for its whole group,
under a row lock, whenever one of its queries finishes or is graded. That makes maintenance
exact (the row equals the aggregate of its group, sums in exact Decimal), idempotent (running
it twice writes the same row) and safe under concurrent workers (the second waits on the lock
and reads the first one's committed query).

Latency percentiles cannot be summed, so each row keeps a histogram of latency_ms over
log-spaced integer buckets: BUCKETS_PER_DOUBLING buckets per doubling, so a percentile read from
the histogram is within about 4.4 % of the exact one (see latency_quantile).
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Count, F, Func, IntegerField, Q, QuerySet, Sum, Value

from routerapp.models import Query, QueryDailyConfigRollup, QueryDailyRollup, Team

log = logging.getLogger(__name__)

BUCKETS_PER_DOUBLING = 8
# Integer lower bounds of the latency buckets: bucket i holds BOUNDS[i] <= ms < BOUNDS[i + 1].
# Integer bounds (not a float log in SQL or Python) make the bucket of a latency exact and the
# same on every backend. Below ~12 ms several log-buckets collapse into one integer each.
_LOG_BOUNDS = sorted({math.ceil(2 ** (i / BUCKETS_PER_DOUBLING)) for i in range(0, 8 * 26)})
BOUNDS: list[int] = [0, *_LOG_BOUNDS]

ROLLUP_FIELDS = (
    "queries",
    "done",
    "failed",
    "cancelled",
    "cost_usd",
    "prompt_tokens",
    "completion_tokens",
    "samples",
    "graded",
    "correct",
    "graded_cost_usd",
    "correct_cost_usd",
    "graded_cost_sq",
    "latency_n",
    "latency_sum_ms",
    "latency_hist",
)
# The columns of the log a rollup is computed from, in the order _Acc.add reads them.
_LOG_COLUMNS = (
    "status",
    "cost_usd",
    "prompt_tokens",
    "completion_tokens",
    "samples_done",
    "graded_correct",
    "latency_ms",
)
_GROUP_COLUMNS = ("created_at", "team_id", "configuration_id", "task", "api_key_id")


def latency_bucket(ms: int) -> int:
    """Return the histogram bucket of a latency in milliseconds (0 for 0 ms)."""
    return max(0, bisect.bisect_right(BOUNDS, int(ms)) - 1)


def bucket_value(index: int) -> int:
    """Return the latency a bucket stands for: the geometric middle of its integer range."""
    lo = BOUNDS[index]
    hi = BOUNDS[index + 1] - 1 if index + 1 < len(BOUNDS) else lo
    return round(math.sqrt(max(lo, 1) * max(hi, 1))) if hi > lo else lo


def latency_quantile(hist: dict[int, int] | dict[str, int], q: float) -> int | None:
    """Return the nearest-rank q-quantile (0 < q <= 1) of a histogram, None when it is empty.

    The exact nearest-rank quantile is the ceil(q * n)-th smallest latency; this returns the
    value of the bucket holding it, so it is off by at most half a bucket (~4.4 %).
    """
    counts = sorted((int(k), int(v)) for k, v in hist.items() if int(v) > 0)
    n = sum(v for _, v in counts)
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for index, count in counts:
        seen += count
        if seen >= rank:
            return bucket_value(index)
    return bucket_value(counts[-1][0])


def merge_histograms(hists: Iterable[dict[str, int]]) -> dict[int, int]:
    """Return the bucket-wise sum of histograms (JSON keys are strings)."""
    total: dict[int, int] = {}
    for hist in hists:
        for k, v in hist.items():
            i = int(k)
            total[i] = total.get(i, 0) + int(v)
    return total


def query_kind(*, source: str, router_version_id: int | None) -> str:
    """Return the rollup kind of a query: benchmark, routed (a router version chose) or direct."""
    if source == Query.Source.BENCHMARK:
        return QueryDailyRollup.Kind.BENCHMARK
    if router_version_id is not None:
        return QueryDailyRollup.Kind.ROUTED
    return QueryDailyRollup.Kind.DIRECT


def _kind_filter(kind: str) -> Q:
    if kind == QueryDailyRollup.Kind.BENCHMARK:
        return Q(source=Query.Source.BENCHMARK)
    live = ~Q(source=Query.Source.BENCHMARK)
    if kind == QueryDailyRollup.Kind.ROUTED:
        return live & Q(router_version__isnull=False)
    return live & Q(router_version__isnull=True)


def _day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=1)


@dataclass
class _Acc:
    """Running sums of one group; add() takes a row of _LOG_COLUMNS."""

    queries: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    cost_usd: Decimal = Decimal(0)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    samples: int = 0
    graded: int = 0
    correct: int = 0
    graded_cost_usd: Decimal = Decimal(0)
    correct_cost_usd: Decimal = Decimal(0)
    graded_cost_sq: float = 0.0
    latency_n: int = 0
    latency_sum_ms: int = 0
    latency_hist: dict[str, int] = field(default_factory=dict)

    def add(self, row: tuple[Any, ...]) -> None:
        status, cost, p_tok, c_tok, samples, graded_correct, latency = row
        cost = Decimal(cost)
        self.queries += 1
        if status == Query.Status.DONE:
            self.done += 1
        elif status == Query.Status.FAILED:
            self.failed += 1
        elif status == Query.Status.CANCELLED:
            self.cancelled += 1
        self.cost_usd += cost
        self.prompt_tokens += int(p_tok)
        self.completion_tokens += int(c_tok)
        self.samples += int(samples)
        if graded_correct is not None:
            self.graded += 1
            self.graded_cost_usd += cost
            self.graded_cost_sq += float(cost) ** 2
            if graded_correct:
                self.correct += 1
                self.correct_cost_usd += cost
        if latency is not None:
            self.latency_n += 1
            self.latency_sum_ms += int(latency)
            key = str(latency_bucket(latency))
            self.latency_hist[key] = self.latency_hist.get(key, 0) + 1

    def merge(self, other: _Acc) -> None:
        """Add another group's sums (rollups are additive, histograms bucket by bucket)."""
        for name in ROLLUP_FIELDS:
            if name == "latency_hist":
                for k, v in other.latency_hist.items():
                    self.latency_hist[k] = self.latency_hist.get(k, 0) + v
            else:
                setattr(self, name, getattr(self, name) + getattr(other, name))

    @classmethod
    def of_row(cls, row: Any) -> _Acc:
        acc = cls(**{name: getattr(row, name) for name in ROLLUP_FIELDS})
        acc.latency_hist = {str(k): int(v) for k, v in (row.latency_hist or {}).items()}
        return acc

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ROLLUP_FIELDS}


def _finished() -> QuerySet[Query]:
    return Query.objects.filter(status__in=Query.FINISHED)


def _aggregate(rows: QuerySet[Query]) -> _Acc:
    """Return the sums of a group of finished queries, computed by the database in one scan.

    The sums are grouped by latency bucket (on Postgres width_bucket() over the same integer
    BOUNDS as latency_bucket; elsewhere by latency value, bucketed here), which gives the
    histogram and partial sums that add up exactly (Decimal money, integer counts).
    """
    graded = Q(graded_correct__isnull=False)
    correct = Q(graded_correct=True)
    if connection.vendor == "postgresql":
        key = Func(
            F("latency_ms"),
            Value(BOUNDS, output_field=ArrayField(IntegerField())),
            function="width_bucket",
            output_field=IntegerField(),
        )
        grouped = rows.annotate(a_key=key).values("a_key")
    else:
        grouped = rows.annotate(a_key=F("latency_ms")).values("a_key")
    # Aliases are prefixed: an alias equal to a column name would shadow it for the others.
    parts = grouped.annotate(
        a_queries=Count("pk"),
        a_done=Count("pk", filter=Q(status=Query.Status.DONE)),
        a_failed=Count("pk", filter=Q(status=Query.Status.FAILED)),
        a_cancelled=Count("pk", filter=Q(status=Query.Status.CANCELLED)),
        a_cost_usd=Sum("cost_usd"),
        a_prompt_tokens=Sum("prompt_tokens"),
        a_completion_tokens=Sum("completion_tokens"),
        a_samples=Sum("samples_done"),
        a_graded=Count("pk", filter=graded),
        a_correct=Count("pk", filter=correct),
        a_graded_cost_usd=Sum("cost_usd", filter=graded),
        a_correct_cost_usd=Sum("cost_usd", filter=correct),
        a_graded_cost_sq=Sum(F("cost_usd") * F("cost_usd"), filter=graded),
        a_latency_n=Count("latency_ms"),
        a_latency_sum_ms=Sum("latency_ms"),
    ).order_by()
    acc = _Acc()
    for row in parts:
        part: dict[str, Any] = dict(row)
        for name in ROLLUP_FIELDS:
            if name == "latency_hist":
                continue
            value = part[f"a_{name}"]
            if value is not None:
                current = getattr(acc, name)
                setattr(acc, name, current + type(current)(value))
        if part["a_key"] is not None and part["a_latency_n"]:
            bucket = (
                int(part["a_key"]) - 1
                if connection.vendor == "postgresql"
                else latency_bucket(part["a_key"])
            )
            k = str(bucket)
            acc.latency_hist[k] = acc.latency_hist.get(k, 0) + int(part["a_latency_n"])
    return acc


@transaction.atomic
def rollup_refresh_group(
    *,
    day: dt.date,
    team_id: int,
    configuration_id: int | None,
    task: str,
    api_key_id: int | None,
    kind: str,
) -> QueryDailyRollup | None:
    """Recompute one rollup row from the log; delete it when its group has no finished query.

    Return the row (None when deleted). The row lock serialises concurrent refreshes of one
    group, so the last one to commit has read every query committed before it.
    """
    key: dict[str, Any] = {
        "day": day,
        "team_id": team_id,
        "configuration_id": configuration_id,
        "task": task,
        "api_key_id": api_key_id,
        "kind": kind,
    }
    created_row, _ = QueryDailyRollup.objects.get_or_create(**key)
    row = QueryDailyRollup.objects.select_for_update().get(pk=created_row.pk)
    start, end = _day_bounds(day)
    group: dict[str, Any] = {k: v for k, v in key.items() if k not in ("day", "kind")}
    rows = _finished().filter(
        _kind_filter(kind), created_at__gte=start, created_at__lt=end, **group
    )
    acc = _aggregate(rows)
    result: QueryDailyRollup | None = row
    if acc.queries == 0:
        row.delete()
        result = None
    else:
        for name, value in acc.values().items():
            setattr(row, name, value)
        row.save()
    _refresh_config_rollup(day=day, team_id=team_id, configuration_id=configuration_id, kind=kind)
    return result


def _refresh_config_rollup(
    *, day: dt.date, team_id: int, configuration_id: int | None, kind: str
) -> None:
    """Recompute one QueryDailyConfigRollup row as the sum of its QueryDailyRollup rows.

    Called inside the fine row's transaction, after it: whoever takes this lock last has
    read every fine row committed before it, so the sum is never stale.
    """
    key: dict[str, Any] = {
        "day": day,
        "team_id": team_id,
        "configuration_id": configuration_id,
        "kind": kind,
    }
    coarse, _ = QueryDailyConfigRollup.objects.get_or_create(**key)
    coarse = QueryDailyConfigRollup.objects.select_for_update().get(pk=coarse.pk)
    acc = _Acc()
    for fine in QueryDailyRollup.objects.filter(**key):
        acc.merge(_Acc.of_row(fine))
    if acc.queries == 0:
        coarse.delete()
        return
    for name, value in acc.values().items():
        setattr(coarse, name, value)
    coarse.save()


def rollup_refresh_for_query(*, query_id: Any) -> QueryDailyRollup | None:
    """Recompute the rollup row of one query's group (call it after the query's change is
    committed: when it finishes, or when it is graded). Unknown ids are ignored."""
    q = (
        Query.objects.filter(pk=query_id)
        .values(*_GROUP_COLUMNS, "source", "router_version_id")
        .first()
    )
    if q is None:
        return None
    return rollup_refresh_group(
        day=q["created_at"].astimezone(dt.UTC).date(),
        team_id=q["team_id"],
        configuration_id=q["configuration_id"],
        task=q["task"],
        api_key_id=q["api_key_id"],
        kind=query_kind(source=q["source"], router_version_id=q["router_version_id"]),
    )


def _group_of(query: Query) -> dict[str, Any]:
    return {
        "day": query.created_at.astimezone(dt.UTC).date().isoformat(),
        "team_id": query.team_id,
        "configuration_id": query.configuration_id,
        "task": query.task,
        "api_key_id": query.api_key_id,
        "kind": query_kind(source=query.source, router_version_id=query.router_version_id),
    }


def _pending_key(group: dict[str, Any]) -> str:
    parts = (
        group["day"],
        group["team_id"],
        group["configuration_id"],
        group["task"],
        group["api_key_id"],
        group["kind"],
    )
    return "rollup-pending:" + hashlib.sha1(repr(parts).encode()).hexdigest()


# Marker key -> monotonic time until which the refresh this process enqueued for that group is
# certainly still waiting (rollup_schedule).
_enqueued_here: dict[str, float] = {}


def rollup_schedule(*, query: Query) -> None:
    """Schedule the refresh of a query's rollup group (call after its change is committed).

    Refreshes are debounced per group: the first change in a window enqueues one refresh on
    the default queue, `ROLLUP_DEBOUNCE_S` later; later changes in the window ride on it. So
    a request never pays for re-reading its group's day, and a busy group costs one refresh
    per window however many queries finish in it. With `ROLLUP_DEBOUNCE_S = 0` the refresh
    runs here, synchronously.
    """
    group = _group_of(query)
    delay = settings.ROLLUP_DEBOUNCE_S
    if delay <= 0:
        rollup_refresh_pending(group=group)
        return
    key = _pending_key(group)
    now = time.monotonic()
    if _enqueued_here.get(key, 0.0) > now:
        # A refresh this process enqueued cannot have started yet (it starts `delay` after
        # it was enqueued; up to half a second is left as a margin for the clocks), so it
        # will read this change, which is committed: no need to ask the cache (a round trip).
        return
    # The marker outlives the countdown so a slow worker does not let duplicates pile up, and
    # expires so a lost task cannot silence a group for good.
    if not cache.add(key, 1, timeout=max(60, int(delay * 10))):
        return
    try:
        from workers.queues import Queue
        from workers.tasks import rollup_refresh

        rollup_refresh.apply_async(
            kwargs={"group": group}, countdown=delay, queue=Queue.DEFAULT.value
        )
        if len(_enqueued_here) > 10_000:
            _enqueued_here.clear()
        _enqueued_here[key] = now + delay - min(0.5, delay / 2)
    except Exception:  # no broker: refresh now rather than leave the group stale
        log.warning("could not enqueue a rollup refresh; refreshing inline", exc_info=True)
        cache.delete(key)
        rollup_refresh_pending(group=group)


def rollup_refresh_pending(*, group: dict[str, Any]) -> QueryDailyRollup | None:
    """Refresh a scheduled group. The marker is cleared first, so a change committed while
    this refresh reads the log schedules another refresh instead of being lost."""
    cache.delete(_pending_key(group))
    return rollup_refresh_group(
        day=dt.date.fromisoformat(group["day"]),
        team_id=group["team_id"],
        configuration_id=group["configuration_id"],
        task=group["task"],
        api_key_id=group["api_key_id"],
        kind=group["kind"],
    )


def rollup_rebuild(
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    team: Team | None = None,
) -> int:
    """Rebuild the rollup from the log for days start..end (inclusive; default: every day with
    a query) and one team or all; return the number of rows written.

    For a backfill, after bulk loads, or to repair rows after API keys or router versions were
    deleted (their queries change group). One transaction per day.
    """
    base = Query.objects.all() if team is None else Query.objects.filter(team=team)
    if start is None or end is None:
        first = base.order_by("created_at").values_list("created_at", flat=True).first()
        last = base.order_by("-created_at").values_list("created_at", flat=True).first()
        if first is None or last is None:
            return 0
        start = start or first.astimezone(dt.UTC).date()
        end = end or last.astimezone(dt.UTC).date()
    written = 0
    day = start
    while day <= end:
        written += _rebuild_day(day, team)
        day += dt.timedelta(days=1)
    return written


@transaction.atomic
def _rebuild_day(day: dt.date, team: Team | None) -> int:
    lo, hi = _day_bounds(day)
    existing = QueryDailyRollup.objects.filter(day=day)
    existing_coarse = QueryDailyConfigRollup.objects.filter(day=day)
    logs = _finished().filter(created_at__gte=lo, created_at__lt=hi)
    if team is not None:
        existing = existing.filter(team=team)
        existing_coarse = existing_coarse.filter(team=team)
        logs = logs.filter(team=team)
    existing.delete()
    existing_coarse.delete()
    groups: dict[tuple[Any, ...], _Acc] = {}
    columns = (*_GROUP_COLUMNS[1:], "source", "router_version_id", *_LOG_COLUMNS)
    for r in logs.values_list(*columns).iterator(chunk_size=5000):
        team_id, config_id, task, key_id, source, version_id = r[:6]
        group = (
            team_id,
            config_id,
            task,
            key_id,
            query_kind(source=source, router_version_id=version_id),
        )
        acc = groups.get(group)
        if acc is None:
            acc = groups[group] = _Acc()
        acc.add(r[6:])
    rows = [
        QueryDailyRollup(
            day=day,
            team_id=g[0],
            configuration_id=g[1],
            task=g[2],
            api_key_id=g[3],
            kind=g[4],
            **acc.values(),
        )
        for g, acc in groups.items()
    ]
    QueryDailyRollup.objects.bulk_create(rows, batch_size=2000)
    coarse: dict[tuple[Any, ...], _Acc] = {}
    for g, acc in groups.items():
        coarse.setdefault((g[0], g[1], g[4]), _Acc()).merge(acc)
    QueryDailyConfigRollup.objects.bulk_create(
        [
            QueryDailyConfigRollup(
                day=day, team_id=g[0], configuration_id=g[1], kind=g[2], **acc.values()
            )
            for g, acc in coarse.items()
        ],
        batch_size=2000,
    )
    return len(rows)
