"""What Prometheus metrics cost one chat request, counted rather than timed under load.

The timed comparison (`bench/gateway_overhead.py --compare-metrics`) needs a quiet machine; this
script gives figures that load barely moves. In one process, with metrics on (multiprocess mode,
a fresh folder), it serves `--requests` POST /v1/chat/completions (model "auto", the inline
path: routing, reservation, the upstream call, ledger, settlement) through Django's full
request handler and the MetricsMiddleware, against the zero-latency fake upstream
(bench/fake_upstream.py) and a fresh Postgres database, as in gateway_overhead.py. It counts,
per request:

- prometheus_client value writes (each `inc` / `observe` bucket and sum: one mmap write),
- `labels()` look-ups through prometheus_client,
- SQL statements issued from routerapp/metrics.py,
- CPU time (process time) spent in the metric hooks (the middleware's recording,
  record_decision, record_query_finished) against the CPU time of the whole request.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/costpass REDIS_URL=redis://127.0.0.1:6379/0 \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/0 python bench/metrics_cost.py [--json OUT]

The database named by DATABASE_URL gets `_bench_metrics_cost` appended (dropped, re-created).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import timeit
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COUNTED = 50
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from gateway_overhead import (  # noqa: E402
    BODY,
    SETUP,
    bench_database,
    free_port,
    wait_port,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()

    os.environ["DATABASE_URL"] = bench_database(dict(os.environ), "_bench_metrics_cost")
    os.environ["COSTPASS_METRICS"] = "true"
    os.environ["COSTPASS_METRICS_DIR"] = tempfile.mkdtemp(prefix="costpass-metrics-cost-")
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    os.environ["COSTPASS_INLINE_REMOTE_SINGLE"] = "true"
    os.environ["COSTPASS_LOG_LEVEL"] = "WARNING"
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-" + "x" * 40)
    os.environ["DJANGO_DEBUG"] = "false"
    os.environ["DJANGO_SETTINGS_MODULE"] = "routerapp.settings"

    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "fake_upstream.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_port(port, upstream)
        result = measure(args, f"http://127.0.0.1:{port}/v1")
    finally:
        upstream.terminate()
        upstream.wait(timeout=20)
    print(json.dumps(result, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json_out}")


def measure(args: argparse.Namespace, upstream_url: str) -> dict:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment
    from prometheus_client import metrics as prom_metrics
    from prometheus_client import mmap_dict

    from routerapp import metrics as our_metrics
    from routerapp import middleware

    setup_test_environment()
    call_command("migrate", verbosity=0)
    raw_key = {}
    exec(
        SETUP.replace("print(raw)", "out['key'] = raw")
        % {"upstream": upstream_url, "model": "fake"},
        {"out": raw_key},
    )
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw_key['key']}")

    counts = {"writes": 0, "labels": 0, "metrics_sql": 0, "span_hooks": 0}
    hook_cpu = [0.0]

    write_value = mmap_dict.MmapedDict.write_value

    def counted_write(self, *a, **kw):  # type: ignore[no-untyped-def]
        counts["writes"] += 1
        return write_value(self, *a, **kw)

    labels = prom_metrics.MetricWrapperBase.labels

    def counted_labels(self, *a, **kw):  # type: ignore[no-untyped-def]
        counts["labels"] += 1
        return labels(self, *a, **kw)

    def timed(fn):  # type: ignore[no-untyped-def]
        @functools.wraps(fn)
        def wrapper(*a, **kw):  # type: ignore[no-untyped-def]
            t0 = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                hook_cpu[0] += time.process_time() - t0

        return wrapper

    def sql_from_metrics(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        if any(f.filename.endswith("routerapp/metrics.py") for f in traceback.extract_stack()):
            counts["metrics_sql"] += 1
        return execute(sql, params, many, context)

    # The hooks, as the request path calls them (module attributes are looked up per call).
    for name in ("record_request", "record_decision", "record_query_finished"):
        setattr(our_metrics, name, timed(getattr(our_metrics, name)))
    assert middleware.MetricsMiddleware  # the settings put it first when metrics are on

    def one() -> None:
        r = client.post("/v1/chat/completions", BODY, content_type="application/json")
        if r.status_code != 200:
            raise SystemExit(f"request failed: {r.status_code} {r.content[:300]!r}")

    for _ in range(args.warmup):
        one()
    # Timing pass: only the hooks are wrapped (process time in and around them).
    hook_cpu[0] = 0.0
    t0 = time.process_time()
    for _ in range(args.requests):
        one()
    total_cpu = time.process_time() - t0
    # Counting pass: prometheus_client's writes and look-ups, SQL issued by the metrics module,
    # and (tracing off, the default) calls into costpass's span hooks.
    from workers import tracing

    assert not tracing.enabled()
    span, enabled = tracing.span, tracing.enabled

    def counted_span(*a, **kw):  # type: ignore[no-untyped-def]
        counts["span_hooks"] += 1
        return span(*a, **kw)

    def counted_enabled():  # type: ignore[no-untyped-def]
        counts["span_hooks"] += 1
        return enabled()

    tracing.span, tracing.enabled = counted_span, counted_enabled  # type: ignore[assignment]
    mmap_dict.MmapedDict.write_value = counted_write  # type: ignore[method-assign]
    prom_metrics.MetricWrapperBase.labels = counted_labels  # type: ignore[method-assign]
    with connection.execute_wrapper(sql_from_metrics):
        for _ in range(COUNTED):
            one()
    n = args.requests
    tracing.span, tracing.enabled = span, enabled  # type: ignore[assignment]
    hook_ns = (
        min(
            timeit.repeat(
                "with span('costpass.route'): pass", globals={"span": span}, number=100_000
            )
        )
        / 100_000
        * 1e9
    )
    return {
        "tracing_off": {
            "span_hooks_per_request": counts["span_hooks"] / COUNTED,
            "ns_per_hook": round(hook_ns, 1),
            # None of the instrumentations is loaded (redis-py imports the SDK's metrics
            # module on its own when the extra is installed: import time, not per request).
            "instrumentations_imported": sorted(
                m for m in sys.modules if m.startswith("opentelemetry.instrumentation.")
            ),
        },
        "requests": n,
        "per_request": {
            "prometheus_value_writes": counts["writes"] / COUNTED,
            "prometheus_labels_lookups": counts["labels"] / COUNTED,
            "sql_statements_from_metrics": counts["metrics_sql"] / COUNTED,
            "metric_hooks_cpu_ms": round(hook_cpu[0] / n * 1000, 4),
            "request_cpu_ms": round(total_cpu / n * 1000, 3),
        },
        "metric_hooks_share_of_request_cpu": round(hook_cpu[0] / total_cpu, 4),
        "note": "one process, Django test client through the full middleware stack, inline "
        "chat path against bench/fake_upstream.py; CPU is process time of this process (the "
        "web side; the upstream runs in its own); counts from a separate pass of "
        f"{COUNTED} requests",
    }


if __name__ == "__main__":
    main()
