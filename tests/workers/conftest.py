"""Fixtures for the engine / strategy tests: one real CPU engine per session, and a real
llama-cpp-python OpenAI-compatible server on 127.0.0.1 started once per session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def llama_engine():
    """The in-process llama_cpp engine (SmolLM2-135M, 1 thread), loaded once."""
    from workers.engines import get_engine

    return get_engine("llama_cpp", {"n_threads": 1, "n_ctx": 4096, "n_seq_max": 16})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``python -m llama_cpp.server`` with the CPU model; yields its /v1 base URL.

    ``--interrupt_requests False``: by default that server cuts a running stream as soon
    as another request queues, which would break parallel samples.
    """
    pytest.importorskip("uvicorn")
    pytest.importorskip("sse_starlette")
    pytest.importorskip("starlette_context")
    pytest.importorskip("pydantic_settings")
    from workers.engines.llama_cpp_engine import default_model_path

    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed at teardown
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "llama_cpp.server",
            "--model", default_model_path(),
            "--host", "127.0.0.1", "--port", str(port),
            "--n_threads", "1", "--n_threads_batch", "1",
            "--n_ctx", "2048",
            "--interrupt_requests", "False",
            "--verbose", "False",
        ],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(base + "/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"llama_cpp.server did not start: {log_path.read_text()[-2000:]}"
                )
            time.sleep(0.25)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def server_engine(llama_server: str):
    """An openai_compat engine against the test server (greedy parity: no repeat penalty)."""
    from workers.engines import get_engine

    return get_engine(
        "openai_compat",
        {
            "base_url": llama_server,
            "model": "smollm2",
            "api": "chat",
            "extra_body": {"repeat_penalty": 1.0},
            "timeout_s": 60,
        },
    )
