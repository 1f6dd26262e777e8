"""A zero-latency OpenAI-compatible server: the upstream of the gateway benchmark and tests.

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
    ):
        self.reply = reply
        self.tokens = _tokens(reply)
        self.delay = token_delay_s
        self.requests = 0
        self.prompt_cache = prompt_cache
        self.reasoning_tokens = reasoning_tokens
        self.seen_prompts: set[str] = set()

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
        max_tokens = int(body.get("max_tokens") or 10_000)
        reasoning = min(self.reasoning_tokens, max_tokens)
        tokens = self.tokens[: max_tokens - reasoning]
        finish = "stop" if len(tokens) == len(self.tokens) else "length"
        usage = self.usage(body, reasoning, len(tokens))
        created = int(time.time())
        if not body.get("stream"):
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
        for i, tok in enumerate(tokens):
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
    port: int, reply: str, token_delay_s: float, prompt_cache: bool = False, reasoning: int = 0
) -> None:
    upstream = Upstream(reply, token_delay_s, prompt_cache=prompt_cache, reasoning_tokens=reasoning)
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
        )
    )


if __name__ == "__main__":
    main()
