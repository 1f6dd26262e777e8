"""Engines: one interface (:mod:`workers.engines.base`), three backends.

``llama_cpp`` (in-process CPU, parallel decoding), ``openai_compat`` (any OpenAI-compatible
HTTP server) and ``vllm`` (in-process AsyncLLM on a GPU). Look engines up by slug with
:func:`get_engine`; heavy backends are imported only when an engine is constructed.
"""

from workers.engines import llama_cpp_engine, openai_compat, vllm_engine  # noqa: F401 - registers
from workers.engines.base import (
    Engine,
    GenerationResult,
    GenerationStream,
    Prompt,
    SampleDone,
    SampleOutput,
    SamplingConfig,
    TokenEvent,
)
from workers.engines.registry import (
    ENGINE_KINDS,
    EngineParamsError,
    UnknownEngineError,
    clear_engine_cache,
    get_engine,
    register_engine,
    validate_engine_params,
)

__all__ = [
    "ENGINE_KINDS",
    "Engine",
    "EngineParamsError",
    "GenerationResult",
    "GenerationStream",
    "Prompt",
    "SampleDone",
    "SampleOutput",
    "SamplingConfig",
    "TokenEvent",
    "UnknownEngineError",
    "clear_engine_cache",
    "get_engine",
    "register_engine",
    "validate_engine_params",
]
