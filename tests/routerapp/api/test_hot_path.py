"""The inline chat/completions path (router on, hard budget on, ledger on): how many SQL
statements and Redis round trips one request costs, pinned so that it cannot silently grow.

Counted in every thread of this process (the request's, and any it starts): the statements the
Django cursors execute and the packed commands the redis client sends (one per round trip, a
pipeline counting once)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.test import Client, override_settings
from django.utils import timezone
from redis.connection import AbstractConnection

from routerapp.models import ApiKey, BudgetPolicy, BudgetUsage, Configuration, Query, Sample, Team
from routerapp.services.apikeys import AUTH_CACHE_S, api_key_create, api_key_revoke
from tests.routerapp.api.conftest import Caller, make_configuration

pytestmark = pytest.mark.django_db(transaction=True)

BODY = {"model": "auto", "messages": [{"role": "user", "content": "What is 2+2?"}]}


@dataclass
class RoundTrips:
    sql: list[str] = field(default_factory=list)
    redis: list[str] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    commits: int = 0  # transactions committed (each a BEGIN and a COMMIT round trip)

    def report(self) -> str:
        verbs = Counter(s.split()[0].upper() for s in self.sql)
        return (
            f"{len(self.sql)} SQL statements {dict(verbs)} in {self.commits} transactions, "
            f"{len(self.redis)} Redis round trips:\n"
            + "\n".join(f"  sql: {s[:160]}" for s in self.sql)
            + "\n"
            + "\n".join(f"  redis: {r[:160]}" for r in self.redis)
        )


@contextmanager
def round_trips() -> Iterator[RoundTrips]:
    """Count SQL statements and Redis round trips made by any thread while inside."""
    seen = RoundTrips()
    lock = threading.Lock()
    execute = CursorWrapper._execute_with_wrappers
    executemany = CursorWrapper.executemany
    send = AbstractConnection.send_packed_command
    commit = BaseDatabaseWrapper._commit

    def _commit(self: Any) -> Any:
        with lock:
            seen.commits += 1
        return commit(self)

    def _execute(self: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
        with lock:
            seen.sql.append(sql)
            seen.threads.add(threading.current_thread().name)
        return execute(self, sql, *args, **kwargs)

    def _send(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        parts = command if isinstance(command, list) else [command]
        text = b"".join(bytes(p) for p in parts).decode(errors="replace")
        words = [w for w in text.split("\r\n") if w and w[0] not in "*$"]
        with lock:
            seen.redis.append(" ".join(words[:4]))
        return send(self, command, *args, **kwargs)

    CursorWrapper._execute_with_wrappers = _execute  # type: ignore[method-assign]
    AbstractConnection.send_packed_command = _send  # type: ignore[method-assign]
    BaseDatabaseWrapper._commit = _commit  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        CursorWrapper._execute_with_wrappers = execute  # type: ignore[method-assign]
        CursorWrapper.executemany = executemany  # type: ignore[method-assign]
        AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        BaseDatabaseWrapper._commit = commit  # type: ignore[method-assign]


@pytest.fixture
def hot_path(upstream_url: str, make_caller: Any) -> Any:
    make_configuration(upstream_url)
    caller = make_caller("hot")
    BudgetPolicy.objects.create(
        team=caller.team,
        name="monthly",
        limit_usd=Decimal("1000"),
        period="month",
        mode=BudgetPolicy.Mode.HARD_REJECT,
    )
    return caller


def _send(client: Client, caller: Any, **headers: str) -> Any:
    return client.post(
        "/v1/chat/completions",
        BODY,
        content_type="application/json",
        headers={"Authorization": f"Bearer {caller.raw}", **headers},
    )


def _post(client: Client, caller: Any, **headers: str) -> Any:
    response = _send(client, caller, **headers)
    assert response.status_code == 200, response.content
    return response


@override_settings(ROLLUP_DEBOUNCE_S=60.0)  # the first request's rollup refresh is still pending
def test_inline_request_round_trips(hot_path: Any) -> None:
    from routerapp.services.streaming import redis_client

    redis = redis_client()
    for key in redis.scan_iter("*rollup-pending*"):  # ids restart with each test database
        redis.delete(key)
    client = Client()
    _post(client, hot_path)  # first request: per-process caches fill, last_used_at is touched
    _post(client, hot_path)
    with round_trips() as seen:
        response = _post(client, hot_path)
    print(seen.report())
    query = Query.objects.get(pk=response.json()["costpass"]["query_id"])
    sample = Sample.objects.get(query=query)
    assert query.status == Query.Status.DONE
    assert query.cost_usd == sample.cost_usd > 0
    usage = BudgetUsage.objects.get()
    assert usage.reserved_usd == 0
    assert usage.spent_usd == sum(q.cost_usd for q in Query.objects.all())
    # Pinned: a change that adds a statement or a round trip to the hot path must say so here.
    # The key comes from the process's cache (AUTH_CACHE_S), and so do the configurations,
    # router versions and budget policies, pinned at the catalog version this process last
    # read (checked by the first statement, not read). Left: one statement reserving the
    # budget and inserting the query row while the catalog is at that version; one writing
    # the sample and the query's final row and settling the budget (returning the windows the
    # budget alerts read). Each is atomic on its own: no BEGIN, no COMMIT.
    assert len(seen.sql) == 2, seen.report()
    assert seen.commits == 0, seen.report()
    # The end-of-query event (one pipeline); the rollup marker was set by the first request and
    # its refresh has not started yet.
    assert len(seen.redis) == 1, seen.report()
    assert seen.threads == {threading.current_thread().name}, seen.threads


def test_a_cached_key_revoked_here_fails_at_once_and_elsewhere_within_a_second(
    hot_path: Any,
) -> None:
    client = Client()
    _post(client, hot_path)  # now in this process's key cache
    api_key_revoke(key=hot_path.key)
    r = _send(client, hot_path)
    assert r.status_code == 401
    # Revoked by another process (here: SQL): refused once the cached row is AUTH_CACHE_S old.
    key, raw = api_key_create(team=hot_path.team, name="other")
    other = Caller(hot_path.team, key, raw)
    _post(client, other)
    revoked_at = time.monotonic()
    ApiKey.objects.filter(pk=other.key.pk).update(revoked_at=timezone.now())
    statuses = []
    while time.monotonic() - revoked_at < AUTH_CACHE_S + 0.5:
        r = client.get("/v1/models", headers={"Authorization": f"Bearer {other.raw}"})
        statuses.append((round(time.monotonic() - revoked_at, 2), r.status_code))
        time.sleep(0.05)
    refused = [t for t, status in statuses if status == 401]
    assert refused and refused[0] <= AUTH_CACHE_S + 0.1, statuses
    assert all(status == 401 for t, status in statuses if t >= refused[0]), statuses


def test_one_heartbeat_thread_beats_every_running_query(hot_path: Any) -> None:
    from routerapp.services.execution import Heartbeat

    team = Team.objects.get(name="hot")
    queries = [
        Query.objects.create(team=team, prompt="p", status=Query.Status.RUNNING, runs=1)
        for _ in range(5)
    ]
    with override_settings(QUERY_HEARTBEAT_S=0.2):
        beats = [Heartbeat(q.pk, 1) for q in queries]
        for b in beats:
            b.__enter__()
        threads = threading.active_count()
        try:
            Query.objects.filter(pk=queries[0].pk).update(runs=2)  # taken over by another run
            time.sleep(0.7)
            assert threading.active_count() == threads  # no thread per query
            assert beats[0].lost
            for q, b in zip(queries[1:], beats[1:], strict=True):
                q.refresh_from_db()
                assert q.heartbeat_at is not None and not b.lost
        finally:
            for b in beats:
                b.__exit__(None, None, None)
    time.sleep(0.3)  # a round that had started when they ended is over
    # A query that ends before its first beat is due costs no statement.
    with (
        override_settings(QUERY_HEARTBEAT_S=5.0),
        round_trips() as seen,
        Heartbeat(queries[1].pk, 1),
    ):
        time.sleep(0.1)
    assert seen.sql == []


def test_catalog_changes_reach_the_cached_request_path_at_once(
    hot_path: Any, upstream_url: str
) -> None:
    """Configurations, router versions and policies are cached per process, but any write to
    them (here plain ORM updates, as another process or the admin would) is seen by the next
    request: no staleness window."""
    client = Client()
    first = _post(client, hot_path).json()["costpass"]
    other = make_configuration(upstream_url, name="other")
    Configuration.objects.exclude(pk=other.pk).update(enabled=False)
    assert _post(client, hot_path).json()["costpass"]["configuration"] == other.slug
    assert first["configuration"] != other.slug
    BudgetPolicy.objects.filter(team=hot_path.team).update(limit_usd=Decimal("0"))
    r = _send(client, hot_path)
    assert r.status_code == 402, r.content
    # Refused on the pinned catalog: a refusal is checked against the current one, so a
    # raised limit serves the next request.
    BudgetPolicy.objects.filter(team=hot_path.team).update(limit_usd=Decimal("1000"))
    assert _post(client, hot_path).json()["costpass"]["configuration"] == other.slug
    Configuration.objects.filter(pk=other.pk).update(enabled=False)
    assert _send(client, hot_path).status_code != 200  # nothing left to route to
    Configuration.objects.exclude(pk=other.pk).update(enabled=True)
    assert _post(client, hot_path).json()["costpass"]["configuration"] == first["configuration"]


def test_a_rolled_back_catalog_change_never_serves_a_later_request(
    hot_path: Any, upstream_url: str
) -> None:
    """A transaction that changed the catalog and read it (caching what it saw) then rolled
    back: its version number is never reached again, so a later change is not served the
    rolled-back rows."""
    from django.db import transaction

    from routerapp.selectors.catalog_cache import catalog_version
    from routerapp.services.routing import RequestConstraints, candidate_configurations

    def names() -> set[str]:
        return {c.endpoint.name for c in candidate_configurations(RequestConstraints())}

    with pytest.raises(RuntimeError), transaction.atomic():
        make_configuration(upstream_url, name="ghost")
        seen = catalog_version()
        assert "ghost" in names()
        raise RuntimeError("rolled back")
    make_configuration(upstream_url, name="other")
    assert catalog_version() != seen
    assert "ghost" not in names() and "other" in names()


def test_a_query_finished_elsewhere_keeps_its_state_and_gets_no_sample_rows(
    hot_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final row and the samples are one statement; when the row is no longer running
    (an operator failed it meanwhile) neither is written."""
    from routerapp.services import queries

    attempt = queries._inline_attempt

    def failed_meanwhile(query: Query, *args: Any) -> Any:
        result = attempt(query, *args)
        Query.objects.filter(pk=query.pk).update(status=Query.Status.FAILED, error="operator")
        return result

    monkeypatch.setattr(queries, "_inline_attempt", failed_meanwhile)
    r = _send(Client(), hot_path)
    query = Query.objects.get()
    assert r.status_code == 502 and query.status == Query.Status.FAILED
    assert query.error == "operator" and not Sample.objects.filter(query=query).exists()
    # The settlement was part of the refused statement: the reservation is untouched (the
    # operator's path settles it, not this run).
    usage = BudgetUsage.objects.get()
    assert usage.spent_usd == 0 and usage.reserved_usd == query.reserved_usd > 0


def _windows() -> list[tuple[Decimal, Decimal]]:
    return [(u.reserved_usd, u.spent_usd) for u in BudgetUsage.objects.order_by("id")]


def test_a_budget_that_cannot_cover_a_request_refuses_the_one_statement_whole(
    hot_path: Any,
) -> None:
    """Reservation and query row are one guarded statement once the window's id is known:
    when a hard budget cannot cover the request, nothing of it is written, and the refusal
    names the budget as before."""
    client = Client()
    _post(client, hot_path)  # the window's id is now known to this process
    done = Query.objects.get()
    BudgetPolicy.objects.filter(team=hot_path.team).update(limit_usd=done.cost_usd)
    before = _windows()
    with round_trips() as seen:
        r = _send(client, hot_path)
    assert r.status_code == 402, r.content
    assert "monthly" in r.json()["error"]["message"]
    assert any(s.startswith("WITH") for s in seen.sql), seen.report()  # the guarded statement ran
    assert list(Query.objects.all()) == [done]
    assert _windows() == before


def test_soft_budgets_and_tags_go_through_the_one_statement(hot_path: Any) -> None:
    """A soft budget over its limit is flagged on the query, and the tag rows are written with
    the query, stamped with its creation time."""
    BudgetPolicy.objects.create(
        team=hot_path.team,
        name="soft-cap",
        period=BudgetPolicy.Period.DAY,
        limit_usd=Decimal("0"),
        mode=BudgetPolicy.Mode.SOFT,
    )
    client = Client()
    _post(client, hot_path)  # both windows' ids are now known
    with round_trips() as seen:
        r = _post(client, hot_path, **{"x-costpass-tags": "a, b"})
    assert seen.commits == 0, seen.report()
    query = Query.objects.get(pk=r.json()["costpass"]["query_id"])
    assert query.budget_flags == ["soft-cap"] and len(query.budget_windows) == 2
    assert sorted((t.tag, t.created_at) for t in query.tag_rows.all()) == [
        ("a", query.created_at),
        ("b", query.created_at),
    ]
    assert all(reserved == 0 for reserved, _ in _windows())
    spent = sum(q.cost_usd for q in Query.objects.all())
    assert [s for _, s in _windows()] == [spent, spent]


def test_a_window_gone_from_under_the_cached_id_is_recreated(hot_path: Any) -> None:
    """A cached window id that no longer exists matches nothing: the statement is refused and
    the general path creates the window again (and charges it)."""
    client = Client()
    _post(client, hot_path)
    Query.objects.all().delete()
    BudgetUsage.objects.all().delete()
    r = _post(client, hot_path)
    usage = BudgetUsage.objects.get()
    query = Query.objects.get()
    assert query.budget_windows == [usage.pk] and usage.spent_usd == query.cost_usd > 0
    assert r.json()["costpass"]["query_id"] == str(query.pk)
    _post(client, hot_path)  # and the new id is used from then on
    usage.refresh_from_db()
    assert usage.spent_usd == sum(q.cost_usd for q in Query.objects.all())


def test_a_connection_used_a_moment_ago_is_not_health_checked_an_idle_one_is(
    hot_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between two requests (Django's request-end and first-use hooks, called here as a
    server calls them), the health check (a SELECT 1 round trip) is skipped for a connection
    the previous request used without an error less than FRESH_S ago, and runs otherwise."""
    from django.db import connections

    from routerapp.dbbackends.postgresql import base

    connection = connections["default"]
    if not isinstance(connection, base.DatabaseWrapper):
        pytest.skip("not on Postgres")
    checks = []
    is_usable = base.DatabaseWrapper.is_usable

    def counted(self: Any) -> bool:
        checks.append(1)
        return bool(is_usable(self))

    monkeypatch.setattr(base.DatabaseWrapper, "is_usable", counted)
    monkeypatch.setattr(connection, "close_at", None)

    def request() -> None:
        connection.close_if_health_check_failed()  # first use in a request
        Team.objects.count()
        connection.close_if_unusable_or_obsolete()  # request_finished

    connection.ensure_connection()
    request()
    checks.clear()
    request()
    request()
    assert checks == []  # fresh: not checked
    connection._fresh_until = 0.0  # idle for FRESH_S or more
    request()
    assert checks == [1]


def test_a_connection_that_died_while_idle_is_replaced_before_a_request_uses_it(
    hot_path: Any, tmp_path: Any
) -> None:
    """Through gunicorn: the server kills the web process's idle connection; once it has been
    idle for FRESH_S, the next request's health check finds it dead and reconnects (200)."""
    import httpx
    from django.db import connection

    from tests.routerapp.api.conftest import start_gunicorn, stop

    web = start_gunicorn(tmp_path, {}, workers=1, threads=1)
    try:
        headers = {"Authorization": f"Bearer {hot_path.raw}"}
        url = f"{web.url}/v1/chat/completions"
        for _ in range(3):
            assert httpx.post(url, json=BODY, headers=headers, timeout=60).status_code == 200
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'"
            )
            assert cursor.fetchone() is not None
        time.sleep(1.2)  # past FRESH_S
        r = httpx.post(url, json=BODY, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        stop(web.proc)


def test_a_catalog_counter_that_restarted_lower_costs_one_retry(hot_path: Any) -> None:
    """The optimistic pin is the version read last: after the counter restarted below it (a
    database restored under a running process), one request is refused, re-reads the
    version and is routed again; the next ones are back to two statements."""
    from routerapp.selectors import catalog_cache

    client = Client()
    _post(client, hot_path)
    catalog_cache._newest = 10**12
    with round_trips() as seen:
        _post(client, hot_path)
    assert any(s.startswith("SELECT") for s in seen.sql), seen.report()  # the version re-read
    with round_trips() as seen:
        _post(client, hot_path)
    assert len(seen.sql) == 2, seen.report()
