"""The fake upstream (bench/fake_upstream.py) with faults it really commits, set at run time, and
an embeddings route: the upstream of the fault tests and of resilience benchmarks.

    python bench/faulty_upstream.py --port 18002 [--reply "The answer is 4."]

Faults are set with ``POST /_faults`` (JSON) and apply to completion and embedding requests:

- ``{"mode": "ok"}``: answer normally (the default).
- ``{"mode": "error", "status": 503, "count": N}``: answer the next N requests (all, without
  ``count``) with that HTTP status and an OpenAI error body, before any token.
- ``{"mode": "429", "retry_after": 1.5, "count": N}``: answer 429 with ``Retry-After``.
- ``{"mode": "flap", "status": 500}``: every other request fails (the first one fails).
- ``{"mode": "slow", "delay_s": 5, "count": N}``: wait before answering (headers included).
- ``{"mode": "drop", "after_tokens": 2}``: a streamed answer sends that many tokens, then the
  connection is cut (no [DONE], no usage); a non-streamed one is cut before any answer.

``GET /_stats`` returns how many completion / embedding requests arrived and how many were
answered with a fault since the faults were last set. ``POST /v1/embeddings`` answers deterministic unit vectors (one per
input, from a hash of the text) with ``usage.prompt_tokens`` = characters / 4 rounded up per input.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_upstream import REPLY, Upstream  # noqa: E402

EMBEDDING_DIM = 8


def embedding_of(text: str, dim: int = EMBEDDING_DIM) -> list[float]:
    """A deterministic unit vector for a text (what the embeddings route answers)."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:dim]]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


def embedding_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


class FaultyUpstream(Upstream):
    def __init__(self, reply: str) -> None:
        super().__init__(reply, 0.0)
        self.fault: dict[str, Any] = {"mode": "ok"}
        self.stats = {"completions": 0, "embeddings": 0, "faults": 0}
        self._flip = False

    def _take_fault(self) -> dict[str, Any] | None:
        """Return the fault that applies to this request (and count it down), or None."""
        fault = self.fault
        mode = fault.get("mode", "ok")
        if mode == "ok":
            return None
        if mode == "flap":
            self._flip = not self._flip
            return fault if self._flip else None
        if "count" in fault:
            if fault["count"] <= 0:
                return None
            fault["count"] -= 1
        return fault

    async def route(self, method: str, path: str, raw: bytes, writer: asyncio.StreamWriter) -> None:
        if path == "/_faults" and method == "POST":
            self.fault = json.loads(raw or b"{}")
            self._flip = False
            self.stats = {"completions": 0, "embeddings": 0, "faults": 0}
            self._send_json(writer, 200, {"fault": self.fault})
            await writer.drain()
            return
        if path == "/_stats":
            self._send_json(writer, 200, self.stats)
            await writer.drain()
            return
        embeddings = method == "POST" and path.endswith("/embeddings")
        completion = method == "POST" and path.endswith(("/chat/completions", "/completions"))
        if not (embeddings or completion):
            await super().route(method, path, raw, writer)
            return
        self.stats["embeddings" if embeddings else "completions"] += 1
        fault = self._take_fault()
        if fault is not None:
            self.stats["faults"] += 1
            mode = fault["mode"]
            if mode in ("error", "flap"):
                self._send_error(writer, int(fault.get("status", 503)))
                await writer.drain()
                return
            if mode == "429":
                self._send_error(writer, 429, retry_after=fault.get("retry_after", 1))
                await writer.drain()
                return
            if mode == "slow":
                await asyncio.sleep(float(fault.get("delay_s", 5)))
            if mode == "drop":
                await self._drop(raw, writer, int(fault.get("after_tokens", 2)))
                return
        if embeddings:
            await self._embeddings(raw, writer)
            return
        await super().route(method, path, raw, writer)

    def _send_error(
        self, writer: asyncio.StreamWriter, status: int, retry_after: float | None = None
    ) -> None:
        body = json.dumps(
            {"error": {"message": f"scripted fault {status}", "type": "server_error"}}
        ).encode()
        extra = f"Retry-After: {retry_after:g}\r\n" if retry_after is not None else ""
        writer.write(
            f"HTTP/1.1 {status} Fault\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n".encode()
            + body
        )

    async def _drop(self, raw: bytes, writer: asyncio.StreamWriter, after: int) -> None:
        body = json.loads(raw or b"{}")
        if body.get("stream"):
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
            )
            for i, tok in enumerate(self.tokens[:after]):
                chunk = {
                    "id": "fake-1",
                    "object": "chat.completion.chunk",
                    "model": "fake",
                    "choices": [
                        {
                            "index": 0,
                            "delta": ({"role": "assistant"} if i == 0 else {}) | {"content": tok},
                            "finish_reason": None,
                        }
                    ],
                }
                data = f"data: {json.dumps(chunk)}\n\n".encode()
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.transport.abort()  # cut: no terminating chunk, no [DONE]
        raise ConnectionResetError("scripted drop")

    async def _embeddings(self, raw: bytes, writer: asyncio.StreamWriter) -> None:
        body = json.loads(raw or b"{}")
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        data = [
            {"object": "embedding", "index": i, "embedding": embedding_of(str(t))}
            for i, t in enumerate(texts)
        ]
        tokens = sum(embedding_tokens(str(t)) for t in texts)
        self._send_json(
            writer,
            200,
            {
                "object": "list",
                "data": data,
                "model": body.get("model", "fake-embed"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )
        await writer.drain()


async def serve(port: int, reply: str) -> None:
    upstream = FaultyUpstream(reply)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", port, backlog=1024)
    print(f"listening on http://127.0.0.1:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=18002)
    parser.add_argument("--reply", default=REPLY)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.reply))


if __name__ == "__main__":
    main()
