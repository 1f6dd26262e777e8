"""Shared fixtures: real database, a real Celery worker process, the real CPU model."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _worker_env(db_name: str) -> dict[str, str]:
    """The environment of a worker subprocess: same settings, but the test database."""
    from django.conf import settings

    env = dict(os.environ)
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{db_name}"
    else:
        env["DATABASE_URL"] = (
            f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db_name}"
        )
    env["COSTPASS_LLAMA_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def celery_worker_process(
    django_db_setup: None, django_db_blocker: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[str]]:
    """A real `celery worker` process on the real broker, reading the test database.

    Tests that use it must be `transaction=True` so the worker sees committed rows.
    """
    from django.db import connection

    from workers.celery import app

    # A queue left over from an interrupted run must not feed this worker stale ids.
    with app.connection_for_write() as conn:
        for queue in ("default", "engine.llama_cpp", "engine.openai_compat", "training"):
            with contextlib.suppress(Exception):  # the queue may not exist yet
                conn.default_channel.queue_purge(queue)
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    log = open(log_path, "w")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "worker",
            "-Q",
            "default,engine.llama_cpp,engine.openai_compat,training",
            "--pool=solo",
            "--loglevel=INFO",
            "-n",
            f"test-{os.getpid()}@%h",
        ],
        cwd=REPO,
        env=_worker_env(connection.settings_dict["NAME"]),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker exited: {log_path.read_text()[-3000:]}")
        if "ready." in log_path.read_text():
            break
        time.sleep(0.3)
    else:
        proc.terminate()
        raise RuntimeError(f"celery worker did not start: {log_path.read_text()[-3000:]}")
    proc.log_path = log_path  # type: ignore[attr-defined]
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def wait_for(predicate, timeout: float = 120.0, interval: float = 0.25):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns a truthy value; return it or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def pytest_configure(config: pytest.Config) -> None:
    """Retry the teardown flush of transactional tests when Postgres reports a deadlock.

    The session's real Celery worker may still be writing (a debounced rollup refresh, a
    budget alert) while a test's teardown TRUNCATEs every table; Postgres then aborts one
    of the two with a deadlock. The worker's task retries on its own; the flush retries here.
    """
    from django.core.management.commands import flush
    from django.db import OperationalError

    handle = flush.Command.handle
    if getattr(handle, "_retries_deadlocks", False):
        return

    def handle_retrying(self, **options):  # type: ignore[no-untyped-def]
        from django.core.management.base import CommandError

        for attempt in range(5):
            try:
                return handle(self, **options)
            except (CommandError, OperationalError) as exc:
                cause = exc.__cause__ or exc
                if "deadlock detected" not in str(cause) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        return None

    handle_retrying._retries_deadlocks = True  # type: ignore[attr-defined]
    flush.Command.handle = handle_retrying  # type: ignore[method-assign]
