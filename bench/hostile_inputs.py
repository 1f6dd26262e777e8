"""Hostile request bodies (not schema-valid cases: schemathesis generates those): deep
nesting, lone surrogates, NUL, invalid UTF-8, huge numbers, NaN, duplicate keys, wrong content
types, on both request endpoints. Each must get a 4xx in OpenAI's error shape and write nothing.

Shared by tests/routerapp/api/test_hostile_input.py (in-process, fast) and bench/api_fuzz.py
(against the production server). Pure data: no Django import.
"""

from __future__ import annotations

CHAT = "/v1/chat/completions"
JOBS = "/api/v1/queries"


def _chat(content: str) -> bytes:
    return (
        '{"model": "auto", "messages": [{"role": "user", "content": "' + content + '"}]}'
    ).encode()


def _jobs(prompt: str) -> bytes:
    return ('{"prompt": "' + prompt + '"}').encode()


DEEP = 50_000
# (name, endpoint, body, content type, expected status)
CASES: list[tuple[str, str, bytes, str, int]] = [
    *(
        (f"nested {DEEP} levels", path, b'{"x": ' + b"[" * DEEP + b"]" * DEEP + b"}", "json", 400)
        for path in (CHAT, JOBS)
    ),
    (
        "messages nested 100 levels",
        CHAT,
        b'{"model": "auto", "messages": [{"role": "user", "content": '
        + b"[" * 100
        + b"]" * 100
        + b"}]}",
        "json",
        400,
    ),
    ("lone surrogate in messages", CHAT, _chat("\\ud800 hi"), "json", 400),
    ("lone low surrogate in messages", CHAT, _chat("hi \\udfff"), "json", 400),
    ("lone surrogate in prompt", JOBS, _jobs("2+2? \\ud83d"), "json", 400),
    (
        "lone surrogate in content parts",
        CHAT,
        b'{"model": "auto", "messages": [{"role": "user", "content": '
        b'[{"type": "text", "text": "\\udc00"}]}]}',
        "json",
        400,
    ),
    ("surrogate in a key", JOBS, b'{"prompt": "hi", "\\ud800": 1}', "json", 400),
    ("NUL in messages", CHAT, _chat("a\\u0000b"), "json", 400),
    ("NUL in prompt", JOBS, _jobs("a\\u0000b"), "json", 400),
    ("NUL in task", JOBS, b'{"prompt": "hi", "task": "t\\u0000"}', "json", 400),
    ("invalid UTF-8", CHAT, _chat("caf")[:-3] + b'\xff\xfe"}]}', "json", 400),
    ("invalid UTF-8 in prompt", JOBS, b'{"prompt": "\xc3\x28"}', "json", 400),
    ("overlong UTF-8", JOBS, b'{"prompt": "\xc0\xaf"}', "json", 400),
    ("huge float", CHAT, _chat("hi")[:-1] + b', "max_tokens": 1e999}', "json", 400),
    (
        "huge integer",
        CHAT,
        _chat("hi")[:-1] + b', "max_tokens": ' + b"9" * 5000 + b"}",
        "json",
        400,
    ),
    ("big integer", JOBS, b'{"prompt": "hi", "max_cost_usd": ' + b"9" * 400 + b"}", "json", 400),
    ("NaN", CHAT, _chat("hi")[:-1] + b', "temperature": NaN}', "json", 400),
    ("Infinity", JOBS, b'{"prompt": "hi", "max_cost_usd": -Infinity}', "json", 400),
    ("duplicate keys", CHAT, b'{"model": "auto", "model": "x", "messages": []}', "json", 400),
    ("duplicate prompt", JOBS, b'{"prompt": "a", "prompt": "b"}', "json", 400),
    ("not an object", CHAT, b"[1, 2, 3]", "json", 400),
    ("a bare string", JOBS, b'"hello"', "json", 400),
    ("truncated", CHAT, b'{"model": "auto", "messages": [', "json", 400),
    ("whitespace only", JOBS, b"   \n ", "json", 400),
    # The jobs API takes JSON only; the OpenAI-compatible one reads any body as JSON, as
    # OpenAI's does (views_openai.JSONOnlyNegotiation), so the same refusals apply there.
    ("text/plain", JOBS, _jobs("hi"), "text/plain", 415),
    ("form-encoded", JOBS, b"prompt=hi", "application/x-www-form-urlencoded", 415),
    ("multipart", JOBS, b"--x\r\n\r\nhi\r\n--x--", "multipart/form-data; boundary=x", 415),
    ("text/plain, surrogate", CHAT, _chat("\\ud800"), "text/plain", 400),
    (
        "form-encoded chat",
        CHAT,
        b"model=auto&messages=hi",
        "application/x-www-form-urlencoded",
        400,
    ),
    ("multipart chat", CHAT, b"--x\r\n\r\nhi\r\n--x--", "multipart/form-data; boundary=x", 400),
    ("UTF-8 bytes labelled UTF-16", JOBS, _jobs("hi!"), "application/json; charset=utf-16", 400),
    ("json in latin-1 bytes", JOBS, _jobs("caf")[:-2] + b'\xe9"}', "json", 400),
]
