"""Tokens generated vs billed when a request goes wrong (issue 9, first half).

Runs the engine and strategy layers (what a worker runs; Django-free, so the same script runs
against older code for a before/after) in front of bench/fake_upstream.py, which really streams,
really drops connections, and records what it generated. For each scenario it prints the
completion tokens the upstream generated and those the run hands to the runner to bill: every
sample passed on to ``on_event`` (the worker writes each as it ends) plus the tokens a failure
carries (``UpstreamError.partial``, billed by the runner as a sample of its own).

    python bench/billing_holes.py [--json bench/results/billing_holes.json]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from workers.engines import get_engine  # noqa: E402
from workers.strategies import SampleFinished, get_strategy  # noqa: E402

REPLY = "Let me think step by step about this sum: two plus two makes four, so the answer is 4."
MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]


def _start(delay_ms: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "fake_upstream.py"), "--port", str(port), "--reply", REPLY,
         "--token-delay-ms", str(delay_ms)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(100):
        try:
            httpx.get(url + "/models", timeout=0.5)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("upstream did not start")


def _generated(url: str, since: int) -> tuple[int, int]:
    rows = httpx.get(url + "/fake/stats", timeout=5).json()["requests"]
    return sum(r["tokens"] for r in rows[since:]), len(rows)


def run(url: str, name: str, strategy: str, params: dict, fault: dict, then: str) -> dict:
    """``then``: "" (let it run), "time_limit" (the consumer raises at the first token, as a
    Celery soft time limit does), "cancel" (the caller cancels at the first token)."""
    engine = get_engine(
        "openai_compat",
        {"base_url": url, "model": "fake", "tokenize": "none", "max_retries": 0,
         "extra_body": {"fake_fault": {**fault, "tag": name}}},
    )  # fmt: skip
    since = len(httpx.get(url + "/fake/stats", timeout=5).json()["requests"])
    passed_on: list = []
    streamed = 0
    state = {"raised": False}

    def on_event(ev):  # type: ignore[no-untyped-def]
        nonlocal streamed
        if isinstance(ev, SampleFinished):
            passed_on.append(ev.candidate)
        elif getattr(ev, "text", ""):
            streamed += 1
            if then == "time_limit" and not state["raised"]:
                state["raised"] = True
                raise TimeoutError("the query ran past its time limit")

    error = ""
    carried = 0
    try:
        get_strategy(strategy).run(
            engine,
            messages=MESSAGES,
            params=params,
            on_event=on_event,
            should_cancel=(lambda: streamed > 0) if then == "cancel" else None,
        )
    except Exception as exc:  # noqa: BLE001 - the failure is the scenario
        error = type(exc).__name__
        partial = getattr(exc, "partial", None)
        carried = int(partial[1]) if partial else 0
    time.sleep(0.3)  # let the upstream notice closed connections and record them
    generated, _ = _generated(url, since)
    billed = sum(c.completion_tokens for c in passed_on) + carried
    return {
        "generated": generated,
        "streamed": streamed,
        "billed": billed,
        "samples_billed": len(passed_on) + (1 if carried else 0),
        "error": error,
    }


SCENARIOS = [
    ("single, stream drops after 12 tokens", "single", {"max_tokens": 32}, {"drop_after": 12}, ""),
    ("majority-3, one stream drops after 6", "majority_vote", {"n": 3, "max_tokens": 32},
     {"drop_after": 6, "seeds": [1]}, ""),
    ("majority-3, all three drop after 12", "majority_vote", {"n": 3, "max_tokens": 32},
     {"drop_after": 12}, ""),
    ("single, error event after 5 tokens", "single", {"max_tokens": 32}, {"error_after": 5}, ""),
    ("single, cancelled, 2 tokens per chunk", "single", {"max_tokens": 32},
     {"tokens_per_chunk": 2}, "cancel"),
    ("majority-3, time limit at first token", "majority_vote", {"n": 3, "max_tokens": 32}, {},
     "time_limit"),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    proc, url = _start(delay_ms=20)
    try:
        results = {name: run(url, name, *rest) for name, *rest in SCENARIOS}
    finally:
        proc.terminate()
    print(f"{'scenario':42} {'generated':>9} {'streamed':>8} {'billed':>6} {'samples':>7}  error")
    for name, r in results.items():
        print(
            f"{name:42} {r['generated']:>9} {r['streamed']:>8} {r['billed']:>6} "
            f"{r['samples_billed']:>7}  {r['error']}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"scenarios": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
