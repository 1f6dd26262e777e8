"""The OpenAI-compatible engine reads cached prompt tokens and reasoning tokens from a server's
usage (bench/fake_upstream.py with a prompt cache and hidden reasoning), on every request path."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.engines import Prompt, SamplingConfig, get_engine
from workers.engines.openai_compat import usage_details

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def reasoning_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "bench" / "fake_upstream.py"),
            "--port",
            str(port),
            "--prompt-cache",
            "--reasoning-tokens",
            "7",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert "listening" in proc.stdout.readline()
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    proc.wait(timeout=10)


def test_usage_details_are_parts_capped_at_their_whole() -> None:
    usage = {
        "prompt_tokens_details": {"cached_tokens": 30},
        "completion_tokens_details": {"reasoning_tokens": 9},
    }
    assert usage_details(usage, 40, 10) == (30, 9)
    assert usage_details(usage, 20, 5) == (20, 5)
    assert usage_details({}, 20, 5) == (0, 0)
    assert usage_details({"prompt_tokens_details": None}, 20, 5) == (0, 0)
    assert usage_details({"prompt_tokens_details": {"cached_tokens": "x"}}, 20, 5) == (0, 0)


@pytest.mark.parametrize("stream", [False, True])
def test_cached_and_reasoning_tokens_reach_the_samples(
    reasoning_upstream: str, stream: bool
) -> None:
    engine = get_engine(
        "openai_compat",
        {"base_url": reasoning_upstream, "model": "fake", "tokenize": "none"},
    )
    prompt = Prompt.of(messages=[{"role": "user", "content": f"2+2? stream={stream}"}])
    config = SamplingConfig(n=1, max_tokens=32, seed=1)
    # Token events make the engine stream (so it reads the usage of the last chunk).
    cancel = (lambda: False) if stream else None
    # The first request of a prompt fills the cache; the second of the same prompt reads it.
    first = engine.generate(prompt, config, should_cancel=cancel).samples[0]
    second = engine.generate(prompt, config, should_cancel=cancel).samples[0]
    assert first.cached_prompt_tokens == 0
    assert second.cached_prompt_tokens == second.prompt_tokens > 0
    for s in (first, second):
        assert s.reasoning_tokens == 7 and s.completion_tokens == 7 + 4
        assert s.text == "The answer is 4."
