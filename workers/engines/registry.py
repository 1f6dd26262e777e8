"""The engine registry: a decorator fills a dict keyed by the engine's stable slug.

The slug is stored in the database (a model endpoint's ``engine``), so it never changes.
Engine modules import their heavy backend (llama_cpp, vllm) inside the engine's
constructor, so importing this registry is cheap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from workers.engines.base import Engine


class UnknownEngineError(KeyError, ValueError):
    """Raised for an engine slug that is not registered; the message lists the known ones."""

    def __init__(self, kind: str, known: list[str]) -> None:
        self.kind = kind
        self.known = known
        super().__init__(f"unknown engine kind {kind!r}; known kinds: {', '.join(known)}")

    def __str__(self) -> str:
        return str(self.args[0])


class EngineParamsError(ValueError):
    """Raised when engine params fail validation; the message names each bad field."""


@dataclass(frozen=True)
class EngineSpec:
    kind: str
    engine_class: type[Engine]
    params_model: type[BaseModel]


ENGINE_KINDS: dict[str, EngineSpec] = {}

E = TypeVar("E", bound=type[Engine])


def register_engine(kind: str, *, params: type[BaseModel]) -> Callable[[E], E]:
    """Class decorator registering an engine class under ``kind`` with its params model."""

    def decorator(cls: E) -> E:
        if kind in ENGINE_KINDS and ENGINE_KINDS[kind].engine_class is not cls:
            raise ValueError(f"engine kind {kind!r} is already registered")
        ENGINE_KINDS[kind] = EngineSpec(kind=kind, engine_class=cls, params_model=params)
        return cls

    return decorator


def get_spec(kind: str) -> EngineSpec:
    """Return the registered spec of ``kind``; raise :class:`UnknownEngineError` otherwise."""
    try:
        return ENGINE_KINDS[kind]
    except KeyError:
        raise UnknownEngineError(kind, sorted(ENGINE_KINDS)) from None


def _params_model(kind: str, params: dict[str, Any] | None) -> BaseModel:
    spec = get_spec(kind)
    try:
        return spec.params_model.model_validate(params or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(params)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise EngineParamsError(f"invalid {kind} engine params: {problems}") from exc


def validate_engine_params(kind: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """Return ``params`` validated and normalised (defaults filled) without loading anything.

    Raise :class:`UnknownEngineError` for an unknown kind and :class:`EngineParamsError`
    (a ``ValueError``) naming each bad field otherwise.
    """
    return _params_model(kind, params).model_dump()


_CACHE: dict[tuple[str, str], Engine] = {}
_CACHE_LOCK = threading.Lock()


def _cache_key(kind: str, normalised: dict[str, Any]) -> tuple[str, str]:
    import json

    return kind, json.dumps(normalised, sort_keys=True, default=str)


def get_engine(kind: str, params: dict[str, Any] | None = None) -> Engine:
    """Return the engine for (kind, params), loading it on first use in this process.

    The same (kind, normalised params) returns the same loaded engine, so a worker loads
    its model once and reuses it across queries.
    """
    model = _params_model(kind, params)
    key = _cache_key(kind, model.model_dump())
    with _CACHE_LOCK:
        engine = _CACHE.get(key)
        if engine is None:
            engine = get_spec(kind).engine_class(model)  # type: ignore[call-arg]
            _CACHE[key] = engine
        return engine


def clear_engine_cache() -> None:
    """Close and forget every cached engine (tests, worker shutdown)."""
    with _CACHE_LOCK:
        engines = list(_CACHE.values())
        _CACHE.clear()
    for engine in engines:
        engine.close()
