"""A stand-in for a process reward model behind vLLM's pooling API, with vLLM's exact request
and response shapes (``POST /pooling``, ``PoolingResponse``), for tests of step search."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class PRMHandler(BaseHTTPRequestHandler):
    """vLLM's ``POST /pooling`` for a step-tagged PRM: one [p_bad, p_good] row per
    ``<extra_0>``; a step that says "7" is good. Usage: whitespace tokens of the messages."""

    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's hook name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        if self.path != "/pooling" or "messages" not in body:
            self.send_response(404)
            self.end_headers()
            return
        reply = body["messages"][-1]["content"]
        steps = reply.split("<extra_0>")[:-1]
        rows = [[0.1, 0.9] if re.search(r"\b7\b", s) else [0.8, 0.2] for s in steps]
        tokens = sum(len(m["content"].split()) for m in body["messages"]) + 3 * len(
            body["messages"]
        )
        out = {"id": "pool-1", "object": "list", "created": 0, "model": body["model"],
               "data": [{"index": 0, "object": "pooling", "data": rows}],
               "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}}  # fmt: skip
        raw = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        return None


@contextlib.contextmanager
def serve_prm() -> Iterator[str]:
    """Serve the stand-in on a free port; yield its base URL (requests are recorded)."""
    PRMHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), PRMHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
