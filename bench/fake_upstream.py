"""A zero-latency scripted OpenAI-compatible server: the upstream of the gateway benchmark
and of the API and compatibility tests.

Answers POST /v1/chat/completions and /v1/completions (JSON, or server-sent events with
`stream: true`, honouring `stream_options.include_usage`) and GET /v1/models at once. Plain
asyncio over HTTP/1.1 keep-alive, so a single core serves thousands of requests a second and
never is the bottleneck of a measurement.

It really does what the OpenAI fields ask, so tests can check that each one reached it:

- replies: ``--replies "A|B|C"`` (default: ``--reply``). At ``temperature`` 0 (or with
  ``top_p`` < 0.5: the nucleus holds only the likeliest reply) a request gets the first;
  otherwise reply ``(seed + i) % len`` for choice ``i`` (a random one without a seed), so
  samples disagree and votes are real;
- ``max_tokens`` / ``max_completion_tokens`` cut the reply (finish_reason "length");
  ``stop`` cuts it before the first stop string (finish_reason "stop");
- ``n`` returns n choices (choice i as if seeded ``seed + i``); usage sums them;
- ``response_format`` json_object / json_schema: the reply becomes a JSON object (for a
  schema: its properties, typed: numbers take the reply's last number), formatted
  differently from sample to sample (spacing, key order), so canonical votes matter;
- ``tools``: calls the tool ``tool_choice`` names (else the first; none with "none"),
  arguments built from its parameter schema like JSON replies; finish_reason "tool_calls";
  streamed as OpenAI's tool-call deltas;
- ``logprobs`` / ``top_logprobs`` (chat) and ``logprobs`` (completions): per token, a
  deterministic log-prob and the top alternatives, in OpenAI's shapes;
- ``--fail-after N``: requests past the Nth answer 500 (for failure tests);
- ``--prompt-cache``: a prompt seen before is served from a prompt cache, reported as
  ``usage.prompt_tokens_details.cached_tokens`` (all its tokens);
- ``--reasoning-tokens N``: the model "thinks" N hidden tokens per choice before it answers,
  as reasoning models do: they count in ``completion_tokens`` (and against ``max_tokens``)
  and are reported as ``usage.completion_tokens_details.reasoning_tokens``, with no text.

Tokens are word-ish pieces of the reply (they join back to it exactly).

Scripted faults, for the billing and fault tests: a request body may carry a ``fake_fault``
object (an endpoint sends it through its ``extra_body``), and ``--fault '{"drop_after": 6}'``
sets the default one. Its fields:

- ``drop_after``: close the connection (no final chunk, no usage, no ``[DONE]``) after that many
  streamed tokens, as a crashed server or a proxy would (a non-streamed answer is generated,
  then the connection is cut before it is sent);
- ``error_after``: after that many tokens send an error event in the stream (vLLM's shape,
  ``data: {"error": {...}}``) and end it without a finish reason;
- ``status``: answer this HTTP status with an OpenAI error body instead of generating;
- ``finish_reason``: the finish reason reported at the end (e.g. ``content_filter``);
- ``tokens_per_chunk``: tokens per streamed chunk (default 1; usage still counts tokens);
- ``seeds``: apply the fault only to requests with one of these seeds (default: all);
- ``match_max_tokens``: apply it only to requests with this ``max_tokens`` (e.g. 1: the
  verifier's scoring calls);
- ``skip``: serve the first ``skip`` matching requests normally (counted per fault object).

``GET /fake/stats`` returns what was generated, per request (``seed``, ``max_tokens``,
``tokens``: tokens generated, reasoning included, ``finished``): the truth a billing test
compares with.

    python bench/fake_upstream.py --port 18001 [--token-delay-ms 0] [--reply "The answer is 4."]
        [--replies "The answer is 4.|The answer is 5."] [--prompt-cache] [--reasoning-tokens N]
        [--fault '{"drop_after": 6}']

Prints "listening on http://127.0.0.1:PORT/v1" once ready.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import time
from typing import Any

REPLY = "The answer is 4."


def _tokens(text: str) -> list[str]:
    """Split a reply into word-ish tokens that join back to the text."""
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        out.append(word if i == 0 else " " + word)
    return out


def _content_text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def _prompt_tokens(body: dict) -> int:
    if "messages" in body:
        msgs = body.get("messages") or []
        text = " ".join(_content_text(m.get("content")) for m in msgs)
        return max(1, len(text) // 4) + 4 * len(msgs) + 3
    return max(1, len(str(body.get("prompt", ""))) // 4)


def _number(text: str) -> float | int:
    found = re.findall(r"-?\d+(?:\.\d+)?", text)
    if not found:
        return 0
    value = float(found[-1])
    return int(value) if value.is_integer() else value


def _value(schema: dict, reply: str) -> Any:
    """A value of the JSON schema's type, derived from the reply."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if "enum" in schema:
        return schema["enum"][int(abs(_number(reply))) % len(schema["enum"])]
    if kind == "object":
        props = schema.get("properties") or {"answer": {"type": "number"}}
        return {name: _value(sub, reply) for name, sub in props.items()}
    if kind == "array":
        return [_value(schema.get("items") or {"type": "number"}, reply)]
    if kind == "integer":
        return int(_number(reply))
    if kind == "number":
        return _number(reply)
    if kind == "boolean":
        return int(_number(reply)) % 2 == 0
    return reply


def _dump(value: Any, variant: int) -> str:
    """JSON text whose formatting (not content) varies with ``variant``."""
    if variant % 2 and isinstance(value, dict):
        value = dict(reversed(list(value.items())))
    if variant % 3 == 1:
        return json.dumps(value, indent=2)
    return json.dumps(value, separators=(",", ":") if variant % 3 == 2 else (", ", ": "))


def _logprob(i: int, token: str) -> float:
    return -round(0.05 + (len(token) % 5) * 0.1 + (i % 3) * 0.01, 4)


def _top(i: int, token: str, k: int) -> list[tuple[str, float]]:
    lp = _logprob(i, token)
    alts = [(token, lp)] + [(f"{token.strip()}~{j}", lp - 1.0 - j) for j in range(1, k)]
    return alts[:k]


class Choice:
    """One generated choice: its text or tool calls, tokens, finish reason."""

    def __init__(
        self, body: dict, chat: bool, reply: str, variant: int, reasoning: int = 0
    ) -> None:
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        limit = int(limit) if limit else 10_000
        # Hidden reasoning tokens come first and count against the limit.
        self.reasoning = min(reasoning, limit)
        limit -= self.reasoning
        self.tool_calls: list[dict] | None = None
        text = reply
        fmt = (body.get("response_format") or {}).get("type")
        tool = self._tool(body) if chat else None
        if tool is not None:
            params = (tool.get("function") or {}).get("parameters") or {"type": "object"}
            args = _dump(_value({"type": "object", **params}, reply), variant)
            self.tool_calls = [
                {
                    "id": f"call_{variant}_{abs(hash(args)) % 10_000}",
                    "type": "function",
                    "function": {"name": tool["function"]["name"], "arguments": args},
                }
            ]
            text = ""
        elif fmt == "json_object":
            text = _dump({"answer": _number(reply), "text": reply}, variant)
        elif fmt == "json_schema":
            schema = ((body.get("response_format") or {}).get("json_schema") or {}).get(
                "schema"
            ) or {"type": "object"}
            text = _dump(_value(schema, reply), variant)
        self.finish = "tool_calls" if self.tool_calls else "stop"
        stops = body.get("stop")
        stops = [stops] if isinstance(stops, str) else list(stops or [])
        cut = min((text.find(s) for s in stops if s and s in text), default=-1)
        if cut >= 0:
            text = text[:cut]
        tokens = _tokens(text) if text else []
        if self.tool_calls:
            # Tool-call arguments are generated tokens too (billed in usage).
            tokens = _tokens(self.tool_calls[0]["function"]["arguments"])
        if len(tokens) > limit or (self.reasoning and limit == 0):
            tokens = tokens[:limit]
            self.finish = "length"
            if not self.tool_calls:
                text = "".join(tokens)
        self.text = text
        self.tokens = tokens

    @staticmethod
    def _tool(body: dict) -> dict | None:
        tools = [t for t in body.get("tools") or [] if t.get("type") == "function"]
        choice = body.get("tool_choice")
        if not tools or choice == "none":
            return None
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            return next((t for t in tools if t["function"]["name"] == name), tools[0])
        return tools[0]

    def chat_logprobs(self, k: int) -> dict:
        return {
            "content": [
                {
                    "token": tok,
                    "logprob": _logprob(i, tok),
                    "bytes": list(tok.encode()),
                    "top_logprobs": [
                        {"token": t, "logprob": lp, "bytes": list(t.encode())}
                        for t, lp in _top(i, tok, k)
                    ],
                }
                for i, tok in enumerate(self.tokens)
            ],
            "refusal": None,
        }

    def text_logprobs(self, k: int) -> dict:
        offsets, at = [], 0
        for tok in self.tokens:
            offsets.append(at)
            at += len(tok)
        return {
            "tokens": list(self.tokens),
            "token_logprobs": [_logprob(i, t) for i, t in enumerate(self.tokens)],
            "top_logprobs": [dict(_top(i, t, max(k, 1))) for i, t in enumerate(self.tokens)],
            "text_offset": offsets,
        }


class Upstream:
    def __init__(
        self,
        reply: str,
        token_delay_s: float,
        replies: list[str] | None = None,
        fail_after: int | None = None,
        prompt_cache: bool = False,
        reasoning_tokens: int = 0,
        fault: dict | None = None,
    ):
        self.replies = replies or [reply]
        # The first reply and its tokens (what bench/faulty_upstream.py sends before a cut).
        self.reply = self.replies[0]
        self.tokens = _tokens(self.reply)
        self.delay = token_delay_s
        self.requests = 0
        self.fail_after = fail_after
        self.prompt_cache = prompt_cache
        self.reasoning_tokens = reasoning_tokens
        self.seen_prompts: set[str] = set()
        self.default_fault = fault or {}
        self.matched: dict[str, int] = {}
        self.log: list[dict] = []

    def fault_of(self, body: dict) -> dict:
        """Return the fault scripted for this request ({} when none applies)."""
        fault = body.get("fake_fault")
        fault = self.default_fault if not isinstance(fault, dict) else fault
        if not fault:
            return {}
        seeds = fault.get("seeds")
        if seeds is not None and body.get("seed") not in seeds:
            return {}
        wanted = fault.get("match_max_tokens")
        if wanted is not None and body.get("max_tokens") != wanted:
            return {}
        key = json.dumps(fault, sort_keys=True)
        self.matched[key] = self.matched.get(key, 0) + 1
        if self.matched[key] <= int(fault.get("skip") or 0):
            return {}
        return fault

    def usage(self, body: dict, reasoning: int, visible: int) -> dict:
        prompt = _prompt_tokens(body)
        usage: dict = {
            "prompt_tokens": prompt,
            "completion_tokens": reasoning + visible,
            "total_tokens": prompt + reasoning + visible,
        }
        if self.prompt_cache:
            key = hashlib.sha256(
                json.dumps([body.get("messages"), body.get("prompt")], sort_keys=True).encode()
            ).hexdigest()
            cached = prompt if key in self.seen_prompts else 0
            self.seen_prompts.add(key)
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        if self.reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        return usage

    def _replies(self, body: dict) -> list[tuple[str, int]]:
        """The reply and formatting variant of each of the request's n choices."""
        n = int(body.get("n") or 1)
        temperature = body.get("temperature")
        temperature = 1.0 if temperature is None else float(temperature)
        seed = body.get("seed")
        base = int(seed) if seed is not None else random.randrange(2**31)
        # The first reply is the most likely one: a small top-p nucleus holds only it.
        nucleus = body.get("top_p") is not None and float(body["top_p"]) < 0.5
        out = []
        for i in range(n):
            pick = 0 if temperature == 0 or nucleus else (base + i) % len(self.replies)
            out.append((self.replies[pick], base + i if temperature else i))
        return out

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                raw = await reader.readexactly(length) if length else b""
                self.requests += 1
                await self.route(method, path.split("?", 1)[0], raw, writer)
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _send_json(writer: asyncio.StreamWriter, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        writer.write(
            f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n".encode()
            + body
        )

    async def route(self, method: str, path: str, raw: bytes, writer: asyncio.StreamWriter) -> None:
        if method == "GET" and path.endswith("/fake/stats"):
            self._send_json(writer, 200, {"requests": self.log[-1000:]})
            await writer.drain()
            return
        if method == "GET" and path.endswith("/models"):
            self._send_json(
                writer, 200, {"object": "list", "data": [{"id": "fake", "object": "model"}]}
            )
            await writer.drain()
            return
        if method != "POST" or not path.endswith(("/chat/completions", "/completions")):
            self._send_json(writer, 404, {"error": {"message": "not found", "type": "x"}})
            await writer.drain()
            return
        if self.fail_after is not None and self.requests > self.fail_after:
            self._send_json(writer, 500, {"error": {"message": "scripted failure", "type": "x"}})
            await writer.drain()
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(writer, 400, {"error": {"message": "bad json", "type": "x"}})
            await writer.drain()
            return
        chat = path.endswith("/chat/completions")
        fault = self.fault_of(body)
        if fault.get("status"):
            self._send_json(
                writer,
                int(fault["status"]),
                {"error": {"message": "scripted failure", "type": "server_error", "code": None}},
            )
            await writer.drain()
            return
        choices = [
            Choice(body, chat, reply, variant, self.reasoning_tokens)
            for reply, variant in self._replies(body)
        ]
        usage = self.usage(
            body, sum(c.reasoning for c in choices), sum(len(c.tokens) for c in choices)
        )
        want_lp = bool(body.get("logprobs")) if chat else body.get("logprobs") is not None
        k = int(body.get("top_logprobs") or 0) if chat else int(body.get("logprobs") or 0)
        created = int(time.time())
        if fault.get("finish_reason"):
            for c in choices:
                c.finish = str(fault["finish_reason"])
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 10_000
        record = {"seed": body.get("seed"), "max_tokens": int(max_tokens), "finished": False}
        record["tokens"] = sum(c.reasoning for c in choices)
        self.log.append(record)
        generated = record["tokens"] + sum(len(c.tokens) for c in choices)
        if not body.get("stream"):
            record["tokens"] = generated
            if fault.get("drop_after") is not None:
                writer.transport.abort()  # generated, then the connection broke: no answer
                return
            record["finished"] = True
            out = []
            for i, c in enumerate(choices):
                if chat:
                    message: dict[str, Any] = {"role": "assistant", "content": c.text or None}
                    if c.tool_calls:
                        message["tool_calls"] = c.tool_calls
                    else:
                        message["content"] = c.text
                    entry: dict[str, Any] = {"index": i, "message": message}
                    entry["logprobs"] = c.chat_logprobs(k) if want_lp else None
                else:
                    entry = {"index": i, "text": c.text}
                    entry["logprobs"] = c.text_logprobs(k) if want_lp else None
                entry["finish_reason"] = c.finish
                out.append(entry)
            self._send_json(
                writer,
                200,
                {
                    "id": "fake-1",
                    "object": "chat.completion" if chat else "text_completion",
                    "created": created,
                    "model": body.get("model", "fake"),
                    "choices": out,
                    "usage": usage,
                },
            )
            await writer.drain()
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
        )

        def event(payload: dict | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            chunk = f"data: {data}\n\n".encode()
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")

        obj = "chat.completion.chunk" if chat else "text_completion"

        def emit(choice: dict) -> None:
            event(
                {
                    "id": "fake-1",
                    "object": obj,
                    "created": created,
                    "model": "fake",
                    "choices": [choice],
                }
            )

        per_chunk = max(1, int(fault.get("tokens_per_chunk") or 1))
        drop_after = fault.get("drop_after")
        error_after = fault.get("error_after")
        sent = 0
        for ci, c in enumerate(choices):
            if c.tool_calls:
                call = c.tool_calls[0]
                args = call["function"]["arguments"]
                half = len(args) // 2
                pieces = [
                    {
                        "index": 0,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": args[:half]},
                    },
                    {"index": 0, "function": {"arguments": args[half:]}},
                ]
                for j, piece in enumerate(pieces):
                    delta = ({"role": "assistant"} if j == 0 else {}) | {"tool_calls": [piece]}
                    emit({"index": ci, "delta": delta, "finish_reason": None})
                    if self.delay:  # a call's pieces come over time, as tokens do
                        await writer.drain()
                        await asyncio.sleep(self.delay)
                record["tokens"] += len(c.tokens)
                continue
            lp = c.chat_logprobs(k)["content"] if (want_lp and chat) else None
            tlp = c.text_logprobs(k) if (want_lp and not chat) else None
            for i in range(0, len(c.tokens), per_chunk):
                if drop_after is not None and sent >= int(drop_after):
                    await writer.drain()
                    writer.transport.abort()  # no final chunk: the client sees a broken stream
                    return
                if error_after is not None and sent >= int(error_after):
                    event({"error": {"message": "scripted failure", "type": "InternalServerError"}})
                    event("[DONE]")
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    return
                piece_tokens = c.tokens[i : i + per_chunk]
                sent += len(piece_tokens)
                record["tokens"] += len(piece_tokens)
                tok = "".join(piece_tokens)
                if chat:
                    choice: dict[str, Any] = {
                        "index": ci,
                        "delta": ({"role": "assistant"} if i == 0 else {}) | {"content": tok},
                        "logprobs": {"content": lp[i : i + per_chunk]} if lp else None,
                        "finish_reason": None,
                    }
                else:
                    choice = {"index": ci, "text": tok, "finish_reason": None, "logprobs": None}
                    if tlp:
                        choice["logprobs"] = {
                            key: tlp[key][i : i + per_chunk]
                            for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")
                        }
                emit(choice)
                if self.delay:
                    await writer.drain()
                    await asyncio.sleep(self.delay)
        record["finished"] = True
        for ci, c in enumerate(choices):
            emit(
                {"index": ci, "delta": {}, "finish_reason": c.finish}
                if chat
                else {"index": ci, "text": "", "finish_reason": c.finish}
            )
        if (body.get("stream_options") or {}).get("include_usage"):
            event(
                {
                    "id": "fake-1",
                    "object": obj,
                    "created": created,
                    "model": "fake",
                    "choices": [],
                    "usage": usage,
                }
            )
        event("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def serve(
    port: int,
    reply: str,
    token_delay_s: float,
    replies: list[str] | None = None,
    fail_after: int | None = None,
    prompt_cache: bool = False,
    reasoning: int = 0,
    fault: dict | None = None,
) -> None:
    upstream = Upstream(
        reply,
        token_delay_s,
        replies,
        fail_after,
        prompt_cache=prompt_cache,
        reasoning_tokens=reasoning,
        fault=fault,
    )
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", port, backlog=1024)
    print(f"listening on http://127.0.0.1:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=18001)
    parser.add_argument("--reply", default=REPLY)
    parser.add_argument("--replies", default="", help="replies separated by |")
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--fail-after", type=int, default=None)
    parser.add_argument("--prompt-cache", action="store_true")
    parser.add_argument("--reasoning-tokens", type=int, default=0)
    parser.add_argument("--fault", default="", help="default scripted fault (JSON object)")
    args = parser.parse_args()
    replies = [r for r in args.replies.split("|") if r] or None
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(
        serve(
            args.port,
            args.reply,
            args.token_delay_ms / 1000,
            replies,
            args.fail_after,
            prompt_cache=args.prompt_cache,
            reasoning=args.reasoning_tokens,
            fault=json.loads(args.fault) if args.fault else None,
        )
    )


if __name__ == "__main__":
    main()
