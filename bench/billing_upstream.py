"""A scripted OpenAI-compatible server for the billing tests and bench/billing_holes.py: a fixed
reply, streamed or not, with scripted faults per request and a record of what it generated.
(It began as bench/fake_upstream.py, which has since grown n / seed / tools support; the fault
scripting could move there.)

Answers POST /v1/chat/completions and /v1/completions (JSON, or server-sent events with
`stream: true`, honouring `stream_options.include_usage`) and GET /v1/models with a fixed
reply, at once. Plain asyncio over HTTP/1.1 keep-alive, so a single core serves thousands of
requests a second and never is the bottleneck of a measurement.

    python bench/fake_upstream.py --port 18001 [--token-delay-ms 0] [--reply "The answer is 4."]
        [--prompt-cache] [--reasoning-tokens N]

``--prompt-cache``: a prompt seen before is served from a prompt cache, reported as
``usage.prompt_tokens_details.cached_tokens`` (all its tokens). ``--reasoning-tokens N``: the
model "thinks" N hidden tokens before it answers, as reasoning models do: they count in
``completion_tokens`` (and against ``max_tokens``) and are reported as
``usage.completion_tokens_details.reasoning_tokens``, with no text.

Prints "listening on http://127.0.0.1:PORT/v1" once ready.

Scripted faults, for the billing and fault tests: a request body may carry a ``fake_fault``
object (an endpoint sends it through its ``extra_body``), and the command line sets the
default one (``--fault '{"drop_after": 6}'``). Its fields:

- ``drop_after``: close the connection (no final chunk, no usage, no ``[DONE]``) after that many
  streamed tokens, as a crashed server or a proxy would;
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
``tokens``: tokens generated, ``finished``): the truth a billing test compares with.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time

REPLY = "The answer is 4."


def _tokens(text: str) -> list[str]:
    """Split a reply into word-ish tokens that join back to the text."""
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        out.append(word if i == 0 else " " + word)
    return out


def _prompt_tokens(body: dict) -> int:
    if "messages" in body:
        text = " ".join(str(m.get("content", "")) for m in body.get("messages") or [])
        return max(1, len(text) // 4) + 4 * len(body.get("messages") or []) + 3
    return max(1, len(str(body.get("prompt", ""))) // 4)


class Upstream:
    def __init__(
        self,
        reply: str,
        token_delay_s: float,
        echo_path: bool = False,
        prompt_cache: bool = False,
        reasoning_tokens: int = 0,
        fault: dict | None = None,
    ):
        self.reply = reply
        self.tokens = _tokens(reply)
        self.delay = token_delay_s
        self.requests = 0
        self.prompt_cache = prompt_cache
        self.reasoning_tokens = reasoning_tokens
        self.seen_prompts: set[str] = set()
        self.fault = fault or {}
        self.matched: dict[str, int] = {}
        self.log: list[dict] = []

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

    def fault_of(self, body: dict) -> dict:
        """Return the fault scripted for this request ({} when none applies)."""
        fault = body.get("fake_fault")
        fault = self.fault if not isinstance(fault, dict) else fault
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
        max_tokens = int(body.get("max_tokens") or 10_000)
        reasoning = min(self.reasoning_tokens, max_tokens)
        tokens = self.tokens[: max_tokens - reasoning]
        record = {"seed": body.get("seed"), "max_tokens": max_tokens, "tokens": reasoning}
        record["finished"] = False
        self.log.append(record)
        finish = "stop" if len(tokens) == len(self.tokens) else "length"
        finish = str(fault.get("finish_reason") or finish)
        usage = self.usage(body, reasoning, len(tokens))
        created = int(time.time())
        if not body.get("stream"):
            if fault.get("drop_after") is not None:
                record["tokens"] = reasoning + len(tokens)
                writer.transport.abort()  # generated, then the connection broke: no answer
                return
            record["tokens"], record["finished"] = reasoning + len(tokens), True
            text = "".join(tokens)
            choice = (
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
                if chat
                else {"index": 0, "text": text, "finish_reason": finish}
            )
            self._send_json(
                writer,
                200,
                {
                    "id": "fake-1",
                    "object": "chat.completion" if chat else "text_completion",
                    "created": created,
                    "model": body.get("model", "fake"),
                    "choices": [choice],
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
        per_chunk = max(1, int(fault.get("tokens_per_chunk") or 1))
        drop_after = fault.get("drop_after")
        error_after = fault.get("error_after")
        sent = 0
        for i in range(0, len(tokens), per_chunk):
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
            tok = "".join(tokens[i : i + per_chunk])
            sent += len(tokens[i : i + per_chunk])
            record["tokens"] = reasoning + sent
            choice = (
                {
                    "index": 0,
                    "delta": ({"role": "assistant"} if i == 0 else {}) | {"content": tok},
                    "finish_reason": None,
                }
                if chat
                else {"index": 0, "text": tok, "finish_reason": None}
            )
            event(
                {
                    "id": "fake-1",
                    "object": obj,
                    "created": created,
                    "model": "fake",
                    "choices": [choice],
                }
            )
            if self.delay:
                await writer.drain()
                await asyncio.sleep(self.delay)
        record["finished"] = True
        last = (
            {"index": 0, "delta": {}, "finish_reason": finish}
            if chat
            else {"index": 0, "text": "", "finish_reason": finish}
        )
        event(
            {"id": "fake-1", "object": obj, "created": created, "model": "fake", "choices": [last]}
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
    prompt_cache: bool = False,
    reasoning: int = 0,
    fault: dict | None = None,
) -> None:
    upstream = Upstream(
        reply, token_delay_s, prompt_cache=prompt_cache, reasoning_tokens=reasoning, fault=fault
    )
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", port, backlog=1024)
    print(f"listening on http://127.0.0.1:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=18001)
    parser.add_argument("--reply", default=REPLY)
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--prompt-cache", action="store_true")
    parser.add_argument("--reasoning-tokens", type=int, default=0)
    parser.add_argument("--fault", default="", help="default scripted fault (JSON object)")
    args = parser.parse_args()
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
            prompt_cache=args.prompt_cache,
            reasoning=args.reasoning_tokens,
            fault=json.loads(args.fault) if args.fault else None,
        )
    )


if __name__ == "__main__":
    main()
