"""`make run` on the embedded default (SQLite, filesystem broker, CPU model): start it as the
README says, create a key as the README says, and run the README's curl flow against it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.worker, pytest.mark.model, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _embedded_env(var_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "CELERY_BROKER_URL",
            "CELERY_RESULT_BACKEND",
            "REDIS_URL",
            "DJANGO_SETTINGS_MODULE",
        }
    }
    env["COSTPASS_VAR_DIR"] = str(var_dir)
    env["COSTPASS_LLAMA_THREADS"] = "1"
    return env


def _curl(*args: str) -> dict:
    out = subprocess.run(
        ["curl", "-sS", *args], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(out.stdout)


def test_make_run_serves_admin_and_api_on_the_embedded_default(tmp_path: Path) -> None:
    port = _free_port()
    env = _embedded_env(tmp_path / "var")
    log_path = tmp_path / "make-run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["make", "run", f"PORT={port}"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-4000:]
            text = log_path.read_text()
            if text.count("ready.") >= 2 and "Listening at" in text:
                break
            time.sleep(0.5)
        else:
            pytest.fail("make run did not start:\n" + log_path.read_text()[-4000:])
        # The admin answers (login page) and health is green on SQLite + filesystem broker.
        admin = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"{base}/admin/login/"],
            capture_output=True,
            text=True,
        )
        assert admin.stdout == "200"
        assert _curl(f"{base}/healthz") == {"status": "ok", "database": "ok", "broker": "ok"}
        # The README's flow: create a key, post a query, poll it.
        key = (
            subprocess.run(
                [str(REPO / ".venv/bin/python"), "manage.py", "create_api_key", "--team", "demo"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        auth = f"Authorization: Bearer {key}"
        created = _curl(
            "-X",
            "POST",
            f"{base}/api/v1/queries",
            "-H",
            auth,
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"prompt": "What is 2 + 2?", "task": "arithmetic"}',
        )
        assert created["status"] == "queued", created
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            body = _curl(f"{base}/api/v1/queries/{created['id']}", "-H", auth)
            if body["status"] in ("done", "failed", "cancelled"):
                break
            time.sleep(1)
        assert body["status"] == "done", body
        assert body["answer"] and body["ledger"]["completion_tokens"] > 0
        assert float(body["cost_usd"]) > 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        # make may exit before every child it started has (a celery beat was once left
        # running for hours): whatever is left of the group goes.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
