"""Where one inline chat/completions request spends its CPU, and its round trips.

Serves POST /v1/chat/completions (model "auto": router on, a hard team budget, ledger on; the
setup of bench/gateway_overhead.py, the zero-latency bench/fake_upstream.py as the only
configuration) through Django's full handler (every middleware, DRF, the view; no gunicorn) in
this process, on a fresh database ``<DATABASE_URL's database>_bench_profile``, and prints:

- SQL statements, Postgres round trips (statements + BEGIN/COMMIT of each transaction) and
  Redis round trips of one request (counted, so they do not depend on the machine's load);
- the share of the request's CPU (cProfile with a CPU clock, over ``--requests`` requests
  after a warm-up) in each part of the path: Django's middleware, DRF, authentication,
  parsing the body, routing, the budget reservation and the query row, the upstream call,
  the ledger and settlement, rendering, Prometheus metrics, and the time spent in the
  database driver and the Redis client.

CPU shares are proportions of this process's CPU; they hold under a loaded machine far better
than milliseconds do (the absolute CPU per request is printed too, for what it is worth).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/costpass REDIS_URL=redis://127.0.0.1:6379/0 \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/0 python bench/hot_path_profile.py [--requests 500]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import BODY, REPO, bench_env, free_port, setup_upstream, wait_port  # noqa: E402

# (label, (file suffix, function name)) whose cumulative CPU is that part's; nested parts are
# reported both inside their parent and on their own line.
PARTS = [
    ("whole request (Django handler)", ("django/core/handlers/base.py", "get_response")),
    ("view (DRF dispatch)", ("rest_framework/views.py", "dispatch")),
    ("  authentication (API key)", ("routerapp/api/auth.py", "authenticate")),
    ("  rate-limit admission", ("routerapp/api/auth.py", "admit_request")),
    ("  body parsing (openai types)", ("routerapp/api/openai_request.py", "parse_request")),
    ("  query_create (route + reserve + row)", ("routerapp/services/queries.py", "query_create")),
    ("    routing (decide)", ("routerapp/services/routing.py", "decide")),
    ("    budget reservation", ("routerapp/services/budgets.py", "budget_reserve")),
    ("  query_run_inline", ("routerapp/services/queries.py", "query_run_inline")),
    ("    upstream call (httpx send)", ("httpx/_client.py", "send")),
    ("    ledger + settlement", ("routerapp/services/queries.py", "_inline_complete")),
    ("  response body (render)", ("rest_framework/response.py", "rendered_content")),
    ("Prometheus metrics", ("routerapp/metrics.py", None)),
    ("SQL (Django cursor + psycopg)", ("django/db/backends/utils.py", "_execute_with_wrappers")),
    ("transaction commit", ("django/db/backends/base/base.py", "commit")),
    ("Redis client", ("redis/client.py", "execute_command")),
    ("JSON (json module)", ("json/__init__.py", None)),
]


def cumulative(stats: pstats.Stats, suffix: str, name: str | None) -> float:
    """CPU seconds under functions matching (file suffix, name); a function that calls itself,
    or several matching functions that call each other, are counted once (outermost)."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    matches = {
        func for func in raw if func[0].endswith(suffix) and (name is None or func[2] == name)
    }
    total = 0.0
    for func in matches:
        _cc, _nc, _tt, ct, callers = raw[func]
        if not callers:
            total += ct
            continue
        # Only the part of ct reached from outside the matched set.
        inside = sum(v[3] for caller, v in callers.items() if caller in matches)
        outside = sum(v[3] for caller, v in callers.items() if caller not in matches)
        total += ct * (outside / (inside + outside)) if inside + outside else ct
    return total


def count_round_trips(client: Any, headers: dict[str, str]) -> dict[str, Any]:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.utils import CursorWrapper
    from redis.connection import AbstractConnection

    seen: dict[str, list[str]] = {"sql": [], "commit": [], "redis": []}
    execute = CursorWrapper._execute_with_wrappers
    commit = BaseDatabaseWrapper._commit
    send = AbstractConnection.send_packed_command

    def _execute(self: Any, sql: str, *a: Any, **k: Any) -> Any:
        seen["sql"].append(sql.split()[0].upper())
        return execute(self, sql, *a, **k)

    def _commit(self: Any) -> Any:
        seen["commit"].append("COMMIT")
        return commit(self)

    def _send(self: Any, command: Any, *a: Any, **k: Any) -> Any:
        seen["redis"].append("x")
        return send(self, command, *a, **k)

    CursorWrapper._execute_with_wrappers = _execute  # type: ignore[method-assign]
    BaseDatabaseWrapper._commit = _commit  # type: ignore[method-assign]
    AbstractConnection.send_packed_command = _send  # type: ignore[method-assign]
    try:
        response = client.post(
            "/v1/chat/completions", BODY, content_type="application/json", headers=headers
        )
        assert response.status_code == 200, response.content
    finally:
        CursorWrapper._execute_with_wrappers = execute  # type: ignore[method-assign]
        BaseDatabaseWrapper._commit = commit  # type: ignore[method-assign]
        AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
    verbs = {v: seen["sql"].count(v) for v in sorted(set(seen["sql"]))}
    return {
        "sql_statements": len(seen["sql"]),
        "sql_by_verb": verbs,
        "transactions": len(seen["commit"]),
        # psycopg sends BEGIN and COMMIT as round trips of their own.
        "postgres_round_trips": len(seen["sql"]) + 2 * len(seen["commit"]),
        "redis_round_trips": len(seen["redis"]),
        "threads_after": threading.active_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--top", type=int, default=0, help="also print the top N functions")
    parser.add_argument("--pstats", help="also write the raw profile here (for pstats/snakeviz)")
    args = parser.parse_args()

    env = bench_env("_bench_profile")
    py = sys.executable
    up_port = free_port()
    upstream = subprocess.Popen(
        [py, str(REPO / "bench" / "fake_upstream.py"), "--port", str(up_port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(up_port, upstream)
        subprocess.run(
            [py, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, env=env, check=True
        )
        key = setup_upstream(py, env, f"http://127.0.0.1:{up_port}/v1")
        os.environ.update(env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "routerapp.settings"
        sys.path.insert(0, str(REPO))
        import django

        django.setup()
        from django.test import Client

        client = Client(HTTP_HOST="127.0.0.1")  # a host the default ALLOWED_HOSTS accepts
        headers = {"Authorization": f"Bearer {key}"}

        def one() -> None:
            r = client.post(
                "/v1/chat/completions", BODY, content_type="application/json", headers=headers
            )
            if r.status_code != 200:
                raise SystemExit(f"request failed: {r.status_code} {r.content[:300]!r}")

        for _ in range(args.warmup):
            one()
        trips = count_round_trips(client, headers)
        # CPU per request without the profiler's own overhead (this process only: Django, the
        # view, the engine; not gunicorn, not Postgres or Redis).
        plain0 = time.process_time()
        for _ in range(args.requests):
            one()
        plain_ms = (time.process_time() - plain0) / args.requests * 1000
        profiler = cProfile.Profile(time.process_time)
        cpu0 = time.process_time()
        profiler.enable()
        for _ in range(args.requests):
            one()
        profiler.disable()
        cpu = time.process_time() - cpu0
    finally:
        upstream.terminate()
        upstream.wait(timeout=20)

    stats = pstats.Stats(profiler)
    if args.pstats:
        stats.dump_stats(args.pstats)
    whole = cumulative(stats, *PARTS[0][1])
    per_request_ms = cpu / args.requests * 1000
    print(
        f"one request: {trips['sql_statements']} SQL statements {trips['sql_by_verb']} in "
        f"{trips['transactions']} transactions = {trips['postgres_round_trips']} Postgres round "
        f"trips; {trips['redis_round_trips']} Redis round trips"
    )
    print(
        f"CPU per request in this process (Django test client, no gunicorn): {plain_ms:.2f} ms "
        f"({per_request_ms:.2f} ms under the profiler)\n"
    )
    print(f"  {'part':<42} {'share':>7} {'ms/request':>11}")
    shares: dict[str, dict[str, float]] = {}
    for label, (suffix, name) in PARTS:
        ct = cumulative(stats, suffix, name)
        share = ct / whole if whole else 0.0
        ms = ct / args.requests * 1000
        shares[label.strip()] = {"share": round(share, 4), "ms": round(ms, 3)}
        print(f"  {label:<42} {share:7.1%} {ms:11.3f}")
    if args.top:
        stats.sort_stats("cumulative").print_stats(args.top)
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "round_trips": trips,
                    "cpu_ms_per_request": round(plain_ms, 3),
                    "cpu_ms_per_request_profiled": round(per_request_ms, 3),
                    "parts": shares,
                    "requests": args.requests,
                    "load_average": os.getloadavg(),
                },
                indent=2,
            )
        )
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
