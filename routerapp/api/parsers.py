"""The API's JSON parser: hostile bodies are refused with a 400 naming the problem, before any
serializer (whatever it becomes) sees them.

Python's ``json`` accepts things that later turn into 500s or silently lost data: a body nested
thousands of levels deep (RecursionError in the parser, or in whatever walks it next), lone
UTF-16 surrogates (``"\\ud800"`` decodes to a ``str`` that cannot be encoded back to UTF-8),
NUL characters (Postgres cannot store them in text), ``NaN`` / ``Infinity`` and numbers too
large for a float (not JSON), and duplicate keys (the last one silently wins). Each is a
``ParseError`` here, turned into OpenAI's error shape by ``errors.openai_exception_handler``.
"""

from __future__ import annotations

import codecs
import json
import math
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

# Deeper than any request of this API needs (chat messages with content parts and tool
# schemas are well under 32), far below Python's recursion limit.
MAX_DEPTH = 64


class HostileInput(ParseError):
    """A body that is valid enough to read but refused (depth, surrogates, NUL, duplicates)."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise HostileInput(f"duplicate key {key!r} in a JSON object")
        out[key] = value
    return out


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise HostileInput(f"number {text[:40]} is too large")
    return value


def _constant(name: str) -> float:
    raise HostileInput(f"{name} is not valid JSON")


def _path(parts: list[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "body"


def _check_string(text: str, parts: list[str | int]) -> None:
    if "\x00" in text:
        raise HostileInput(f"{_path(parts)} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise HostileInput(f"{_path(parts)} contains a lone UTF-16 surrogate") from None


def check_document(data: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise HostileInput when a parsed JSON document nests deeper than ``max_depth`` or holds
    a string (key or value) with a NUL or a lone surrogate. Iterative: no recursion to blow."""
    stack: list[tuple[Any, list[str | int]]] = [(data, [])]
    while stack:
        node, parts = stack.pop()
        if len(parts) > max_depth:
            raise HostileInput(f"the JSON body is nested deeper than {max_depth} levels")
        if isinstance(node, str):
            _check_string(node, parts)
        elif isinstance(node, dict):
            for key, value in node.items():
                _check_string(key, parts)
                stack.append((value, [*parts, key]))
        elif isinstance(node, list):
            stack.extend((value, [*parts, i]) for i, value in enumerate(node))


def _depth_before_parsing(raw: str, max_depth: int) -> None:
    """Refuse a body whose brackets nest too deep without handing it to the recursive parser
    (brackets inside strings count too: an over-estimate that only errs on absurd strings)."""
    depth = 0
    for char in raw:
        if char in "[{":
            depth += 1
            if depth > max_depth:
                raise HostileInput(f"the JSON body is nested deeper than {max_depth} levels")
        elif char in "]}":
            depth -= 1


class StrictJSONParser(JSONParser):
    """DRF's JSONParser with the refusals above; strict UTF-8 (a body that is not valid
    UTF-8 is a 400, not a replacement character in the prompt)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", "utf-8")
        try:
            raw = stream.read() if stream is not None else b""
            text = codecs.decode(raw, encoding, errors="strict")
        except (UnicodeDecodeError, LookupError) as exc:
            raise ParseError(f"the body is not valid {encoding}: {exc}") from None
        if not text.strip():
            raise ParseError("the body is empty; send a JSON object")
        _depth_before_parsing(text, MAX_DEPTH)
        try:
            data = json.loads(
                text,
                object_pairs_hook=_pairs,
                parse_float=_float,
                parse_constant=_constant,
            )
        except HostileInput:
            raise
        except RecursionError:
            raise HostileInput("the JSON body is nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
            raise ParseError(str(exc)) from None
        check_document(data)
        return data
