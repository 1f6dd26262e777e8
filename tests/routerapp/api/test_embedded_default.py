"""The OpenAI-compatible API on the embedded default: SQLite, the filesystem broker, no Redis.
Token streaming then goes through the Django file cache between the worker and the web
process; the `openai` client must still see the answer token by token and its real cost."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from tests.conftest import REPO
from tests.routerapp.api.conftest import free_port, stop

pytestmark = [pytest.mark.worker, pytest.mark.model, pytest.mark.slow]

SETUP = """
from decimal import Decimal
from routerapp.models import *
from routerapp.services.apikeys import api_key_create
e = ModelEndpoint.objects.create(name="smollm2-135m", engine="llama_cpp", engine_params={},
    input_usd_per_mtok=Decimal("0.05"), output_usd_per_mtok=Decimal("0.10"))
s = StrategyConfig.objects.create(name="greedy-short", strategy="single",
    params={"temperature": 0.0, "max_tokens": 24})
Configuration.objects.create(slug="smollm2-135m/greedy-short", endpoint=e, strategy=s)
key, raw = api_key_create(team=Team.objects.create(name="embedded"), name="k")
print(raw)
"""


def _embedded_env(var_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL"}
    }
    env.update(
        COSTPASS_VAR_DIR=str(var_dir),
        COSTPASS_LLAMA_THREADS="1",
        DJANGO_DEBUG="false",
        PYTHONUNBUFFERED="1",
        DJANGO_SETTINGS_MODULE="routerapp.settings",
    )
    return env


def test_streaming_on_the_embedded_default(tmp_path: Path) -> None:
    env = _embedded_env(tmp_path / "var")
    run = {"cwd": REPO, "env": env, "check": True, "capture_output": True, "text": True}
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], **run)
    raw = subprocess.run([sys.executable, "manage.py", "shell", "-c", SETUP], **run)
    key = raw.stdout.strip().splitlines()[-1]
    worker_log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "worker",
            "-Q",
            "engine.llama_cpp",
            "--pool=solo",
            "--loglevel=INFO",
            "-n",
            f"embedded-{os.getpid()}@%h",
        ],
        cwd=REPO,
        env=env,
        stdout=open(worker_log, "w"),  # noqa: SIM115 - open as long as the worker
        stderr=subprocess.STDOUT,
    )
    port = free_port()
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "routerapp.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            "1",
            "-k",
            "gthread",
            "--threads",
            "8",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while "ready." not in worker_log.read_text():
            assert worker.poll() is None, worker_log.read_text()[-2000:]
            assert time.monotonic() < deadline, "worker did not start"
            time.sleep(0.5)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=5, timeout=120
        )
        messages = [{"role": "user", "content": "Name three colours."}]
        chunks = list(
            client.chat.completions.create(
                model="auto", messages=messages, stream=True, stream_options={"include_usage": True}
            )
        )
        deltas = [
            c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
        ]
        assert len(deltas) >= 3, deltas  # several pieces, as the worker generated them
        usage, ext = chunks[-1].usage, chunks[-1].model_extra["costpass"]
        assert 0 < usage.completion_tokens <= 24
        expected = (
            Decimal(usage.prompt_tokens) * Decimal("0.05")
            + Decimal(usage.completion_tokens) * Decimal("0.10")
        ) / Decimal(1_000_000)
        assert Decimal(ext["cost_usd"]) == expected > 0
        completion = client.chat.completions.create(model="auto", messages=messages)
        assert completion.choices[0].message.content == "".join(deltas)  # greedy: same text
    finally:
        stop(web)
        stop(worker)
