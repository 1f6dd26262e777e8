"""Celery queues. Split by the resource a task holds, so one slow pool never starves another."""

from __future__ import annotations

from enum import StrEnum


class Queue(StrEnum):
    # Light bookkeeping (rollups, housekeeping): must never wait behind a generation.
    DEFAULT = "default"
    # In-process llama.cpp: CPU-bound, one query per worker process, sized to the cores.
    LLAMA_CPP = "engine.llama_cpp"
    # In-process vLLM: one process per GPU (CUDA cannot live in a forked child: --pool=solo).
    VLLM = "engine.vllm"
    # Remote OpenAI-compatible servers: I/O-bound, many in flight per process (--pool=threads).
    OPENAI_COMPAT = "engine.openai_compat"
    # Router training and benchmark orchestration: long jobs that must not block queries.
    TRAINING = "training"


ENGINE_QUEUES = {
    "llama_cpp": Queue.LLAMA_CPP,
    "vllm": Queue.VLLM,
    "openai_compat": Queue.OPENAI_COMPAT,
}


def queue_for_engine(engine: str, override: str = "") -> str:
    """Return the queue a query on this engine goes to; an endpoint's own queue wins."""
    if override:
        return override
    try:
        return ENGINE_QUEUES[engine].value
    except KeyError:
        known = ", ".join(sorted(ENGINE_QUEUES))
        raise ValueError(f"unknown engine {engine!r}; known engines: {known}") from None
