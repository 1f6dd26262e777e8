"""What `make run`'s first-start calibration does now: batches of generated problems x every
bootstrap configuration on the real CPU model, a router version trained after each batch, its
floor check against the best single configuration (paired bootstrap CI on the cost-of-pass
difference), and more batches while the check is undecided, up to the cap.

It runs the same pieces as `make run` (bootstrap --calibrate, a solo worker on the llama.cpp
queue and a thread worker on default + training) against the database and broker in
DATABASE_URL / CELERY_BROKER_URL, after emptying that database's router versions, benchmark
runs and queries (use your own database). Prints one line per batch and per version and writes
bench/results/calibration_floor.json.

    DATABASE_URL=postgres://.../costpass_x CELERY_BROKER_URL=redis://127.0.0.1:6379/N \\
        python bench/calibration_floor.py [--timeout-min 40]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "routerapp.settings")


def _workers(log_dir: Path) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("COSTPASS_LLAMA_THREADS", "1")
    celery = [sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel=INFO"]
    specs = [
        ("cpu", ["-Q", "engine.llama_cpp", "--pool=solo"]),
        ("io", ["-Q", "default,engine.openai_compat,training", "--pool=threads",
                "--concurrency=4"]),
    ]  # fmt: skip
    procs = []
    for name, args in specs:
        log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 (lives as long as the worker)
        procs.append(
            subprocess.Popen(
                [*celery, *args, "-n", f"bench-{name}-{os.getpid()}@%h"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        )
    return procs


def _version_row(v: Any) -> dict[str, Any]:
    sig = v.significance or {}
    router = ((v.evaluation or {}).get("policies") or {}).get("router") or {}
    best = ((v.evaluation or {}).get("policies") or {}).get("best_single_cop") or {}
    return {
        "version": v.pk,
        "name": v.name,
        "status": v.status,
        "active": v.is_active,
        "prompts": (v.trained_on or {}).get("prompts"),
        "held_out_eval_prompts": (v.evaluation or {}).get("n_prompts"),
        "held_out_router_cop": router.get("cop"),
        "held_out_best_single_cop": best.get("cop"),
        "held_out_gap_closed": router.get("gap_closed"),
        "floor_prompts": sig.get("n_prompts"),
        "floor_method": sig.get("method"),
        "single_config": sig.get("single_config"),
        "router_cop": sig.get("router_cop"),
        "single_cop": sig.get("single_cop"),
        "diff": sig.get("diff"),
        "ci_95": [sig.get("ci_low"), sig.get("ci_high")],
        "verdict": sig.get("verdict"),
        "passes": sig.get("passes"),
        "prompts_needed": sig.get("prompts_needed"),
        "calibration": sig.get("calibration"),
        "serve_config": sig.get("serve_config"),
        "error": v.error or None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout-min", type=float, default=40.0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "calibration_floor.json"))
    args = parser.parse_args()

    import django

    django.setup()
    from django.core.management import call_command

    from routerapp.models import BenchmarkRun, Query, RouterVersion
    from routerapp.services import routers as svc
    from workers.celery import app

    call_command("migrate", verbosity=0)
    RouterVersion.objects.all().delete()
    Query.objects.all().delete()
    BenchmarkRun.objects.all().delete()
    with app.connection_for_write() as conn:
        for queue in ("default", "engine.llama_cpp", "engine.openai_compat", "training"):
            with contextlib.suppress(Exception):  # a queue that does not exist yet
                conn.default_channel.queue_purge(queue)
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"calibration-floor-{os.getpid()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = _workers(log_dir)
    t0 = time.monotonic()
    batches: dict[int, dict[str, Any]] = {}
    seen_versions: dict[int, dict[str, Any]] = {}
    try:
        time.sleep(8)  # workers load the CPU model
        call_command("bootstrap", "--calibrate", admin_username="bench-admin")
        deadline = t0 + args.timeout_min * 60
        while time.monotonic() < deadline:
            for run in BenchmarkRun.objects.filter(purpose=svc.CALIBRATION_NAME).order_by("pk"):
                b = batches.setdefault(run.pk, {"items": len(run.items or []),
                                                "started_s": round(time.monotonic() - t0, 1)})  # fmt: skip
                if run.status in ("done", "failed", "cancelled") and "ended_s" not in b:
                    b.update(status=run.status, ended_s=round(time.monotonic() - t0, 1))
                    print(f"[{b['ended_s']:7.1f}s] batch {run.pk}: {b['items']} problems "
                          f"x {run.configurations.count()} configurations {run.status}")  # fmt: skip
            for v in RouterVersion.objects.exclude(status="training").order_by("pk"):
                if v.pk not in seen_versions:
                    row = _version_row(v)
                    row["ready_s"] = round(time.monotonic() - t0, 1)
                    seen_versions[v.pk] = row
                    print(f"[{row['ready_s']:7.1f}s] version {v.pk} {v.status}: "
                          f"{json.dumps(row, default=str)}")  # fmt: skip
            busy = (
                BenchmarkRun.objects.filter(
                    purpose=svc.CALIBRATION_NAME, status__in=["queued", "running"]
                ).exists()
                or RouterVersion.objects.filter(status="training").exists()
            )
            if not busy and seen_versions:
                # Wait for calibration_extend to record its decision (it runs after the fit).
                time.sleep(3)
                if not BenchmarkRun.objects.filter(
                    purpose=svc.CALIBRATION_NAME, status__in=["queued", "running"]
                ).exists():
                    break
            _result(args, t0, batches, finished=False)
            time.sleep(5)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    result = _result(args, t0, batches, finished=True)
    print(json.dumps({k: result[k] for k in ("serving", "wall_s")}))
    print(f"wrote {args.out}; worker logs in {log_dir}")


def _result(
    args: argparse.Namespace, t0: float, batches: dict[int, dict[str, Any]], *, finished: bool
) -> dict[str, Any]:
    """Write (and return) the figures so far: a run cut short still leaves them."""
    from routerapp.models import BenchmarkRun, Query, RouterVersion
    from routerapp.services import routers as svc

    versions = [_version_row(v) for v in RouterVersion.objects.order_by("pk")]
    active = RouterVersion.objects.filter(is_active=True).first()
    for run in BenchmarkRun.objects.filter(pk__in=list(batches)):
        batches[run.pk].update(done=run.done, planned=run.planned, status=run.status)
    result = {
        "finished": finished,
        "queries_done": Query.objects.filter(status="done").count(),
        "command": "python bench/calibration_floor.py",
        "cores": os.cpu_count(),
        "note": "2 cores shared with other engineers' runs: wall times are noisy",
        "first_batch_items": svc.CALIBRATION_ITEMS,
        "cap_items": svc.CALIBRATION_MAX_ITEMS,
        "floor": {
            "confidence": svc.FLOOR_CONFIDENCE,
            "margin": svc.FLOOR_MARGIN,
            "folds": svc.FLOOR_FOLDS,
        },  # fmt: skip
        "batches": list(batches.values()),
        "versions": versions,
        "serving": (
            f"router version {active.pk}"
            if active
            else f"best single configuration {versions[-1]['serve_config'] if versions else None}"
        ),  # fmt: skip
        "wall_s": round(time.monotonic() - t0, 1),
    }
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
