"""Dashboards on a big log: fill Postgres with N synthetic queries (default 1,000,000, spread
over teams of Zipf sizes, configurations, tasks, keys and 90 days), build the daily rollup, then
time every dashboard request through Django's full stack (URL routing, session auth, selectors,
template rendering) as a signed-in member of the biggest and of a mid-sized team.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/costpass_scale \
        .venv/bin/python bench/dashboard_scale.py --rows 1000000

The database named in DATABASE_URL is created when missing, migrated, and (re)filled unless
--reuse is given and it already holds the rows. It must not be a database you care about:
its queries are deleted first. Prints the fill and rollup times, then p50 / p95 / max per
request, and the same totals computed by scanning the raw log, for comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _ensure_database(url: str) -> None:
    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--teams", type=int, default=12)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=30, help="timed requests per URL")
    parser.add_argument("--reuse", action="store_true", help="keep the log when it has --rows rows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("set DATABASE_URL to a scratch Postgres database, e.g. .../costpass_scale")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "routerapp.settings")
    os.environ["DJANGO_DEBUG"] = "false"  # no per-query logging in the timings
    _ensure_database(url)

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)

    from bench import synthetic_log
    from routerapp.models import Query, QueryDailyConfigRollup

    teams = synthetic_log.teams_ensure(args.teams, prefix="scale")
    existing = Query.objects.count()
    if not (args.reuse and existing == args.rows):
        if existing:
            print(f"clearing {existing:,} queries")
            with connection.cursor() as c:
                c.execute(
                    "TRUNCATE routerapp_sample, routerapp_query, routerapp_querydailyrollup, "
                    "routerapp_querydailyconfigrollup"
                )
        t0 = time.perf_counter()
        filled = synthetic_log.fill(rows=args.rows, teams=teams, days=args.days, seed=args.seed)
        t_fill = time.perf_counter() - t0
        with connection.cursor() as c:
            c.execute("ANALYZE routerapp_query")
        print(f"filled {filled['rows']:,} queries in {t_fill:.1f} s (COPY)")
        _rebuild()
    else:
        print(f"reusing {existing:,} queries")
        if not QueryDailyConfigRollup.objects.exists():
            _rebuild()

    _report_sizes(teams)
    _time_requests(teams, args.repeat)
    _raw_scan_baseline(teams[0])
    _refresh_cost()


def _rebuild() -> None:
    from django.db import connection

    from routerapp.models import QueryDailyConfigRollup
    from routerapp.services.rollups import rollup_rebuild

    t0 = time.perf_counter()
    written = rollup_rebuild()
    t_roll = time.perf_counter() - t0
    with connection.cursor() as c:
        # What autovacuum would do after a bulk rebuild: visibility map and planner statistics.
        c.execute("VACUUM ANALYZE routerapp_querydailyrollup")
        c.execute("VACUUM ANALYZE routerapp_querydailyconfigrollup")
    coarse = QueryDailyConfigRollup.objects.count()
    print(f"rollups rebuilt from the log in {t_roll:.1f} s: {written:,} + {coarse:,} rows")


def _report_sizes(teams: list) -> None:
    from django.db.models import Count

    from routerapp.models import Query, QueryDailyConfigRollup, QueryDailyRollup

    def count(model):  # type: ignore[no-untyped-def]
        rows = model.objects.values_list("team_id").annotate(n=Count("id"))
        return dict(rows.values_list("team_id", "n"))

    per_team, fine, coarse = count(Query), count(QueryDailyRollup), count(QueryDailyConfigRollup)
    print("\nteam         queries  rollup rows: per task+key, per configuration")
    for t in [*teams[:5], teams[-1]]:
        print(
            f"{t.name:10s} {per_team.get(t.pk, 0):>9,} {fine.get(t.pk, 0):>12,} "
            f"{coarse.get(t.pk, 0):>8,}"
        )
    print(
        f"all        {sum(per_team.values()):>9,} {sum(fine.values()):>12,} "
        f"{sum(coarse.values()):>8,}"
    )


def _client_for(team):  # type: ignore[no-untyped-def]
    from django.contrib.auth import get_user_model
    from django.test import Client

    from routerapp.models import TeamMembership

    user, _ = get_user_model().objects.get_or_create(username=f"bench-{team.name}")
    TeamMembership.objects.get_or_create(team=team, user=user)
    client = Client(SERVER_NAME="localhost")
    client.force_login(user)
    return client


def _time_requests(teams: list, repeat: int) -> None:
    from routerapp.models import ApiKey

    big, mid = teams[0], teams[len(teams) // 3]
    key = ApiKey.objects.filter(team=big).first()
    panels = ["spend", "cost-of-pass", "frontier", "latency", "tokens", "decisions"]
    cases = []
    for team in (big, mid):
        for period in ("30", "90"):
            cases.append((team, f"period={period}", "/dashboards/"))
            cases += [(team, f"period={period}", f"/dashboards/panel/{p}") for p in panels]
    # The other pages that read the log, for the biggest team.
    cases += [(big, "", "/"), (big, "", "/queries/"), (big, "", "/playground/")]
    filtered = f"period=90&model=llama-3.1-8b&task=gsm8k&api_key={key.pk if key else ''}"
    cases.append((big, filtered, "/dashboards/"))
    cases += [(big, filtered, f"/dashboards/panel/{p}") for p in panels]
    cases += [
        (big, "period=90&traffic=live&strategy=majority_vote", f"/dashboards/panel/{p}")
        for p in panels
    ]

    clients = {t.pk: _client_for(t) for t in (big, mid)}
    print(f"\n{repeat} timed requests each (after one warm-up), Django test client, DEBUG off")
    print(
        f"{'team':9s} {'query string':55s} {'path':30s} {'p50 ms':>7s} {'p95 ms':>7s} {'max ms':>7s}"
    )
    all_p95 = []
    for team, qs, path in cases:
        client = clients[team.pk]
        r = client.get(f"{path}?{qs}")
        assert r.status_code == 200, (path, qs, r.status_code)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = client.get(f"{path}?{qs}")
            times.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200
        times.sort()
        p50 = statistics.median(times)
        p95 = times[max(0, int(round(0.95 * len(times))) - 1)]
        all_p95.append(p95)
        print(f"{team.name:9s} {qs:55s} {path:30s} {p50:7.1f} {p95:7.1f} {times[-1]:7.1f}")
    print(f"\nworst p95 over {len(cases)} requests: {max(all_p95):.1f} ms (target <= 300 ms)")


def _refresh_cost() -> None:
    """What the worker pays per finished query: recomputing that query's rollup group (and its
    per-configuration sum) from the log, timed on the groups with the most queries."""
    from routerapp.models import QueryDailyRollup
    from routerapp.services.rollups import rollup_refresh_group

    print("\nrollup refresh per finished query (recompute of its group from the log):")
    for row in QueryDailyRollup.objects.order_by("-queries")[:3]:
        key = {
            "day": row.day,
            "team_id": row.team_id,
            "configuration_id": row.configuration_id,
            "task": row.task,
            "api_key_id": row.api_key_id,
            "kind": row.kind,
        }
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            rollup_refresh_group(**key)
            times.append((time.perf_counter() - t0) * 1000)
        print(
            f"  group of {row.queries:,} queries: median {statistics.median(times):.1f} ms, "
            f"max {max(times):.1f} ms"
        )


def _raw_scan_baseline(team) -> None:  # type: ignore[no-untyped-def]
    """The summary the dashboards show, computed by scanning the log instead of the rollup."""
    import datetime as dt

    from django.db.models import Count, Q, Sum

    from routerapp.models import Query

    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=90)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        list(
            Query.objects.filter(team=team, created_at__gte=since, status__in=Query.FINISHED)
            .values("configuration_id", "task")
            .annotate(
                n=Count("id"), usd=Sum("cost_usd"), ok=Count("id", filter=Q(graded_correct=True))
            )
        )
        times.append((time.perf_counter() - t0) * 1000)
    print(
        f"for comparison, cost-of-pass by configuration x task scanning the raw log for "
        f"{team.name} over 90 days: median {statistics.median(times):.0f} ms"
    )


if __name__ == "__main__":
    main()
