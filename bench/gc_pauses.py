"""Garbage-collection pauses on the request path, with and without ``gc.freeze()``.

Serves ``POST /v1/chat/completions`` (router, hard budget, ledger on; the only configuration is
``bench/fake_upstream.py``) through Django's whole handler in a fresh process per mode, warms
it up, then times ``--requests`` requests one by one while ``gc.callbacks`` times every
collection. Mode ``plain`` leaves the collector as CPython runs it; ``frozen`` does what a web
process does after its warm-up (``routerapp.server_gc``: ``gc.collect(); gc.freeze()``).
Prints, per mode, the latency p50 / p99 / max and each generation's collections (count, mean,
max); ``--json`` writes them.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/costpass REDIS_URL=redis://127.0.0.1:6379/3 \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/3 .venv/bin/python bench/gc_pauses.py \\
        --requests 2000 --json bench/results/gc_pauses.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import BODY, REPO, bench_env, prepare, start_upstream  # noqa: E402

MODES = ("plain", "frozen")


def measure(mode: str, key: str, requests: int, warmup: int) -> dict[str, Any]:
    """In this process: warm up, then time ``requests`` requests and every collection."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "routerapp.settings"
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.test import Client

    client = Client(HTTP_HOST="127.0.0.1")
    headers = {"Authorization": f"Bearer {key}"}

    def one() -> None:
        r = client.post(
            "/v1/chat/completions", BODY, content_type="application/json", headers=headers
        )
        if r.status_code != 200:
            raise SystemExit(f"request failed: {r.status_code} {r.content[:300]!r}")

    for _ in range(warmup):
        one()
    if mode == "frozen":
        gc.collect()
        gc.freeze()
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    gc.callbacks.append(timed)
    latency = []
    for _ in range(requests):
        t = time.perf_counter()
        one()
        latency.append(time.perf_counter() - t)
    gc.callbacks.remove(timed)
    ms = np.asarray(latency) * 1e3
    return {
        "tracked_objects": len(gc.get_objects()),
        "frozen_objects": gc.get_freeze_count(),
        "latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 3),
            "p99": round(float(np.percentile(ms, 99)), 3),
            "max": round(float(ms.max()), 3),
        },
        "collections": {
            f"gen{g}": {
                "count": len(v),
                "mean_ms": round(float(np.mean(v)) * 1e3, 3) if v else None,
                "max_ms": round(float(np.max(v)) * 1e3, 3) if v else None,
            }
            for g, v in pauses.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one child's mode
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args.mode, args.key, args.requests, args.warmup)))
        return
    env = bench_env("_bench_gc")
    upstream, up_url = start_upstream(argparse.Namespace(client_cpu="0"))
    try:
        key = prepare(env, up_url)
        results = {}
        for mode in MODES:  # each in a fresh process: the same heap to start from
            out = subprocess.run(
                [sys.executable, __file__, "--mode", mode, "--key", key]
                + ["--requests", str(args.requests), "--warmup", str(args.warmup)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[mode] = json.loads(out.strip().splitlines()[-1])
    finally:
        upstream.terminate()
        upstream.wait(timeout=20)
    for mode, r in results.items():
        lat = r["latency_ms"]
        print(
            f"{mode:>6}: {r['tracked_objects']} tracked, {r['frozen_objects']} frozen objects; "
            f"latency p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} max {lat['max']:.2f} ms"
        )
        for g, c in r["collections"].items():
            if c["count"]:
                print(
                    f"        {g}: {c['count']} collections, mean {c['mean_ms']:.2f} ms, "
                    f"max {c['max_ms']:.2f} ms"
                )
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"requests": args.requests, "warmup": args.warmup, **results}, indent=1)
            + "\n"
        )
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
