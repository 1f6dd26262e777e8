"""Fault injection: does every query end, and is money exact, when things break?

Starts the whole stack on its own services, so nothing here can disturb anyone else's:

- a private Postgres cluster (initdb into a temporary folder, its own port; run as the
  ``postgres`` user when started as root) and a private, non-persistent redis-server;
- bench/fake_upstream.py (an OpenAI-compatible server streaming a 20-token reply, 40 ms a
  token) and, in front of a second route to it, a fault proxy (this file) that drops the
  connection mid-stream, answers 500 or 429, or hangs past the endpoint's timeout;
- gunicorn (2 workers) as `make run` serves it; two engine workers (HTTP engines on a thread
  pool, the CPU model llama.cpp + SmolLM2-135M on a solo pool); a bookkeeping worker running
  Celery beat (the reaper, every second here).

Configurations: single and majority-of-4 on the upstream, the same on the faulty route, and
single on the CPU model. Two teams: one with a large hard budget, one with a hard budget
sized to run out mid-test. A steady load mixes the OpenAI-compatible endpoint (streaming and
not) and the jobs API, k=1 and k=4, both teams. Each fault kind is injected ``--reps`` times,
each in its own window under that load:

  worker_kill      SIGKILL of an engine worker mid-strategy, restarted a second later
  web_kill         SIGKILL of a gunicorn worker while streams are open (gunicorn respawns it)
  redis_restart    redis-server killed with queries queued and restarted empty
  postgres_restart pg_ctl restart under load
  upstream         the upstream drops streams mid-way, answers 500 / 429, or hangs
  client           clients disconnect mid-stream; jobs are cancelled mid-run

After each window the bench waits for the reaper (heartbeat stale after 3 s, lost messages
dispatched again after 3 s) and checks every query created in it, straight from the
database: terminal (else *stuck*; a query a client was given an id for and that has no row
is *lost*); a failed query carries a message; cost = sum of its samples' costs and is within
its reservation; and, per budget window, nothing left reserved once its queries ended, spent
= the sum of its queries' costs (more is *double billed*), a hard budget within its limit
(else *overspend*). Prints the table and writes the JSON:

    python bench/faults.py --json bench/results/faults.json [--reps 3] [--per-window 14]

Needs: initdb / pg_ctl and redis-server on PATH. Takes about 10 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
REPLY = (
    "Let us add two and two step by step: two plus two makes four, so the answer is 4. "
    "The answer is 4."
)
TOKEN_DELAY_MS = 40
FAST_RECOVERY = {
    "COSTPASS_QUERY_HEARTBEAT_S": "0.5",
    "COSTPASS_QUERY_STALE_S": "3",
    "COSTPASS_QUERY_REDISPATCH_S": "3",
    "COSTPASS_REAP_INTERVAL_S": "1",
}
FAULTS = ("worker_kill", "web_kill", "redis_restart", "postgres_restart", "upstream", "client")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


# --- the fault proxy -----------------------------------------------------------------------


class FaultProxy:
    """An HTTP/1.1 proxy in front of the upstream, one request per connection. With
    ``rate`` > 0 each request, at that rate, gets one fault: ``drop`` (the stream is cut after
    a few events, or the connection closed before an answer), ``500``, ``429`` or ``hang``
    (the request is read and never answered)."""

    MODES = ("drop", "500", "429", "hang")

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.rate = 0.0
        self.injected: Counter[str] = Counter()
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> FaultProxy:
        self.thread.start()
        wait_port(self.port)
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            async with server:
                await server.serve_forever()

        self.loop.run_until_complete(main())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            mode = random.choice(self.MODES) if random.random() < self.rate else ""
            if mode:
                self.injected[mode] += 1
            if mode in ("500", "429"):
                payload = json.dumps(
                    {"error": {"message": f"injected {mode}", "type": "server_error"}}
                ).encode()
                writer.write(
                    f"HTTP/1.1 {mode} Injected\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
                return
            if mode == "hang":
                await asyncio.sleep(3600)
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            head = head.replace(b"keep-alive", b"close")
            up_writer.write(head + body)
            await up_writer.drain()
            sent = 0
            # Cut a stream after a few events (the headers and some tokens went through).
            cut_after = random.randint(200, 900) if mode == "drop" else None
            while True:
                chunk = await up_reader.read(256)
                if not chunk:
                    break
                if cut_after is not None and sent + len(chunk) > cut_after:
                    writer.write(chunk[: max(0, cut_after - sent)])
                    await writer.drain()
                    break
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            up_writer.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


# --- the stack -----------------------------------------------------------------------------


SETUP = """
from decimal import Decimal
from routerapp.models import *
from routerapp.services.apikeys import api_key_create
def endpoint(name, url, timeout):
    return ModelEndpoint.objects.create(name=name, engine="openai_compat",
        engine_params={"base_url": url, "model": "fake", "tokenize": "none",
                       "timeout_s": timeout},
        input_usd_per_mtok=Decimal("0.15"), output_usd_per_mtok=Decimal("0.60"))
single = StrategyConfig.objects.create(name="single", strategy="single",
    params={"temperature": 0.7, "max_tokens": 24})
maj4 = StrategyConfig.objects.create(name="maj4", strategy="majority_vote",
    params={"n": 4, "temperature": 0.7, "max_tokens": 24})
cpu1 = StrategyConfig.objects.create(name="cpu-single", strategy="single",
    params={"temperature": 0.0, "max_tokens": 12})
for e in (endpoint("fake", "%(upstream)s", 30), endpoint("flaky", "%(proxy)s", 3)):
    for s in (single, maj4):
        Configuration.objects.create(slug=f"{e.name}/{s.name}", endpoint=e, strategy=s)
cpu = ModelEndpoint.objects.create(name="smollm2", engine="llama_cpp", engine_params={},
    input_usd_per_mtok=Decimal("0.05"), output_usd_per_mtok=Decimal("0.10"))
Configuration.objects.create(slug="smollm2/cpu-single", endpoint=cpu, strategy=cpu1)
for name, limit in (("open", "1000"), ("capped", "%(capped)s")):
    t = Team.objects.create(name=name)
    BudgetPolicy.objects.create(team=t, name=name + "-hard", limit_usd=Decimal(limit),
        period="month", mode="hard_reject")
    key, raw = api_key_create(team=t, name=name)
    print(name, raw)
"""


@dataclass
class Stack:
    tmp: Path
    capped_usd: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    pg_port: int = 0
    redis_port: int = 0
    web_url: str = ""
    proxy: FaultProxy | None = None

    # -- Postgres (its own cluster) --
    def _as_postgres(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:  # initdb refuses to run as root
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            self._as_postgres(
                [
                    "pg_ctl",
                    "-D",
                    str(self.tmp / "pg" / "data"),
                    "-l",
                    str(self.tmp / "pg" / "log"),
                    "-w",
                    "-o",
                    f"-p {self.pg_port} -k {self.tmp / 'pg'} -c listen_addresses=127.0.0.1 "
                    "-c fsync=off -c max_connections=200",
                    *args,
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def start_postgres(self) -> None:
        (self.tmp / "pg").mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.tmp, "postgres")
            shutil.chown(self.tmp / "pg", "postgres")
        self.pg_port = free_port()
        subprocess.run(
            self._as_postgres(
                [
                    "initdb",
                    "-D",
                    str(self.tmp / "pg" / "data"),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--no-instructions",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self._pg_ctl("start")
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE costpass_faults")

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/postgres"

    @property
    def db_url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.pg_port}/costpass_faults"

    def restart_postgres(self) -> None:
        self._pg_ctl("-m", "fast", "restart")

    # -- Redis (its own server, not persistent) --
    def start_redis(self) -> None:
        self.redis_port = self.redis_port or free_port()
        self.procs["redis"] = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_port(self.redis_port, self.procs["redis"])

    def restart_redis(self) -> None:
        self.procs["redis"].send_signal(signal.SIGKILL)
        self.procs["redis"].wait()
        self.start_redis()

    # -- processes of the product --
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = self.logs.get(name) or open(self.tmp / f"{name}.log", "a")  # noqa: SIM115
        self.logs[name] = log
        proc = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def _wait_ready(self, name: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited; see {self.tmp / (name + '.log')}")
            if "ready." in (self.tmp / f"{name}.log").read_text():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} not ready")

    def start_worker(self, name: str) -> None:
        (self.tmp / f"{name}.log").write_text("")
        pools = {
            "engine-http": ["-Q", "engine.openai_compat", "--pool=threads", "--concurrency=6"],
            "engine-cpu": ["-Q", "engine.llama_cpp", "--pool=solo"],
            "bookkeeping": ["-Q", "default", "--pool=solo", "-B", "-s", str(self.tmp / "beat")],
        }
        self._spawn(
            name,
            [
                PY,
                "-m",
                "celery",
                "-A",
                "workers",
                "worker",
                *pools[name],
                "--loglevel=INFO",
                "-n",
                f"{name}-{os.getpid()}@%h",
            ],
        )
        self._wait_ready(name)

    def kill_worker(self, name: str) -> None:
        proc = self.procs[name]
        for pid in children(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def start(self) -> None:
        self.start_postgres()
        self.start_redis()
        up_port = free_port()
        self._spawn_plain(
            "upstream",
            [
                PY,
                str(REPO / "bench" / "fake_upstream.py"),
                "--port",
                str(up_port),
                "--reply",
                REPLY,
                "--token-delay-ms",
                str(TOKEN_DELAY_MS),
            ],
        )
        wait_port(up_port, self.procs["upstream"])
        self.proxy = FaultProxy(up_port).start()
        redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.env = {
            **os.environ,
            "DATABASE_URL": self.db_url,
            "CELERY_BROKER_URL": redis_url,
            "REDIS_URL": redis_url,
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": "faults-" + "x" * 40,
            "COSTPASS_SYNC_WAIT_S": "60",
            "COSTPASS_LLAMA_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **FAST_RECOVERY,
        }
        subprocess.run(
            [PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, env=self.env, check=True
        )
        out = subprocess.run(
            [
                PY,
                "manage.py",
                "shell",
                "-c",
                SETUP
                % {
                    "upstream": f"http://127.0.0.1:{up_port}/v1",
                    "proxy": f"http://127.0.0.1:{self.proxy.port}/v1",
                    "capped": self.capped_usd,
                },
            ],
            cwd=REPO,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for line in out.splitlines():
            name, _, raw = line.partition(" ")
            if name in ("open", "capped"):
                self.keys[name] = raw.strip()
        port = free_port()
        self._spawn(
            "web",
            [
                PY,
                "-m",
                "gunicorn",
                "routerapp.wsgi",
                "-b",
                f"127.0.0.1:{port}",
                "-w",
                "2",
                "-k",
                "gthread",
                "--threads",
                "16",
                "--timeout",
                "120",
            ],
        )
        wait_port(port, self.procs["web"])
        self.web_url = f"http://127.0.0.1:{port}"
        for name in ("engine-http", "engine-cpu", "bookkeeping"):
            self.start_worker(name)

    def _spawn_plain(self, name: str, argv: list[str]) -> None:
        self.procs[name] = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def web_children(self) -> list[int]:
        return children(self.procs["web"].pid)

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                kids = children(proc.pid)
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                for pid in kids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        if self.pg_port:
            with contextlib.suppress(Exception):
                self._pg_ctl("-m", "immediate", "stop")
        for log in self.logs.values():
            log.close()


def children(pid: int) -> list[int]:
    try:
        kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in children(k)]


# --- the load ------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str
    status: int | None = None
    query_id: str | None = None
    error: str = ""


QUESTION = [{"role": "user", "content": "What is 2+2? Think step by step."}]


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def request_once(stack: Stack, kind: str, team: str, route: str) -> Outcome:
    """Send one request of ``kind`` as ``team`` to configurations on ``route`` (``fake`` or
    ``flaky``); return what the client saw (the query id comes from x-costpass-query-id or
    the jobs API's body)."""
    key = stack.keys[team]
    url = stack.web_url
    out = Outcome(kind)
    try:
        with httpx.Client(timeout=90, headers=_headers(key)) as client:
            if kind in ("chat_single", "chat_k4"):
                model = f"{route}/single" if kind == "chat_single" else f"{route}/maj4"
                r = client.post(
                    f"{url}/v1/chat/completions", json={"model": model, "messages": QUESTION}
                )
                out.status, out.query_id = r.status_code, r.headers.get("x-costpass-query-id")
            elif kind in ("stream_single", "stream_k4", "disconnect"):
                model = f"{route}/single" if kind == "stream_single" else f"{route}/maj4"
                body = {"model": model, "messages": QUESTION, "stream": True}
                with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                    out.status, out.query_id = r.status_code, r.headers.get("x-costpass-query-id")
                    for i, _ in enumerate(r.iter_raw()):
                        if kind == "disconnect" and i >= 1:
                            break  # the client goes away mid-stream
            elif kind in ("jobs_k4", "jobs_cpu", "cancel"):
                model = "smollm2/cpu-single" if kind == "jobs_cpu" else f"{route}/maj4"
                r = client.post(
                    f"{url}/api/v1/queries", json={"prompt": QUESTION[0]["content"], "model": model}
                )
                out.status = r.status_code
                if r.status_code == 202:
                    out.query_id = r.json()["id"]
                    if kind == "cancel":
                        time.sleep(random.uniform(0.2, 1.0))
                        client.post(f"{url}/api/v1/queries/{out.query_id}/cancel")
    except httpx.HTTPError as exc:
        out.error = type(exc).__name__
    return out


KINDS = {
    "default": [
        ("chat_single", 3),
        ("stream_single", 2),
        ("chat_k4", 2),
        ("stream_k4", 3),
        ("jobs_k4", 3),
        ("jobs_cpu", 1),
    ],
    "client": [("disconnect", 4), ("cancel", 4), ("stream_k4", 1), ("jobs_k4", 1)],
    # Queries the web process runs itself (one remote sample), so a kill finds some mid-way.
    "web_kill": [("stream_single", 5), ("chat_single", 3), ("stream_k4", 1), ("jobs_k4", 1)],
}


def run_load(
    stack: Stack, n: int, seconds: float, fault: str, pool: ThreadPoolExecutor
) -> list[Any]:
    """Submit ``n`` requests spread over ``seconds``; return their futures."""
    kinds, weights = zip(*KINDS.get(fault, KINDS["default"]), strict=True)
    route = "flaky" if fault == "upstream" else "fake"
    futures = []
    for _ in range(n):
        kind = random.choices(kinds, weights)[0]
        team = "capped" if random.random() < 0.35 else "open"
        futures.append(pool.submit(request_once, stack, kind, team, route))
        time.sleep(seconds / n)
    return futures


# --- the checks ----------------------------------------------------------------------------


def query_rows(db_url: str, since_ids: set[str]) -> tuple[dict[str, dict], dict[str, Decimal]]:
    """Return the queries not in ``since_ids`` (id -> row with its samples' cost) and every
    query's cost (for the budget checks)."""
    import psycopg

    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            """
            SELECT q.id::text, q.status, q.error, q.cost_usd, q.reserved_usd,
                   COALESCE(SUM(s.cost_usd), 0), COUNT(s.id), q.runs,
                   COUNT(s.id) FILTER (WHERE s.finish_reason = 'lost')
            FROM routerapp_query q LEFT JOIN routerapp_sample s ON s.query_id = q.id
            GROUP BY q.id
            """
        ).fetchall()
    new = {}
    costs = {}
    for qid, status, error, cost, reserved, samples_usd, n_samples, runs, lost_samples in rows:
        costs[qid] = cost
        if qid not in since_ids:
            new[qid] = {
                "status": status,
                "error": error,
                "cost": cost,
                "reserved": reserved,
                "samples_usd": samples_usd,
                "samples": n_samples,
                "runs": runs,
                "lost_samples": lost_samples,
            }
    return new, costs


def budget_check(db_url: str) -> dict[str, Any]:
    """Per budget window: left reserved (with every query ended it must be 0), spent vs the
    sum of the costs of the queries it covers, and spent over a hard limit."""
    import psycopg

    with psycopg.connect(db_url) as conn:
        windows = conn.execute(
            """
            SELECT u.id, p.name, p.mode, p.limit_usd, u.spent_usd, u.reserved_usd,
                   (SELECT COALESCE(SUM(q.cost_usd), 0) FROM routerapp_query q
                     WHERE q.budget_windows @> to_jsonb(u.id)),
                   (SELECT COALESCE(SUM(q.reserved_usd), 0) FROM routerapp_query q
                     WHERE q.budget_windows @> to_jsonb(u.id)
                       AND q.status IN ('queued', 'running'))
            FROM routerapp_budgetusage u JOIN routerapp_budgetpolicy p ON p.id = u.policy_id
            """
        ).fetchall()
    out = []
    for _, name, mode, limit, spent, reserved, costs, open_reserved in windows:
        out.append(
            {
                "budget": name,
                "hard": mode.startswith("hard"),
                "limit": limit,
                "spent": spent,
                "reserved": reserved,
                "queries_cost": costs,
                "open_reserved": open_reserved,
            }
        )
    return {"windows": out}


def wait_settled(
    db_url: str, ids: Callable[[], set[str]], before: set[str], timeout: float
) -> None:
    """Wait until every query created since ``before`` has ended (or ``timeout``)."""
    import psycopg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(db_url) as conn:
                (open_,) = conn.execute(
                    "SELECT COUNT(*) FROM routerapp_query WHERE status IN ('queued', 'running')"
                ).fetchone()
            if open_ == 0:
                return
        except psycopg.OperationalError:
            pass
        time.sleep(0.5)


def all_ids(db_url: str) -> set[str]:
    import psycopg

    for _ in range(60):
        try:
            with psycopg.connect(db_url) as conn:
                return {r[0] for r in conn.execute("SELECT id::text FROM routerapp_query")}
        except psycopg.OperationalError:
            time.sleep(0.5)
    raise RuntimeError("database unreachable")


# --- one window ----------------------------------------------------------------------------


def in_flight(db_url: str) -> dict[str, int]:
    """Queries queued, running on a worker, and running in the web process, right now."""
    import psycopg

    try:
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                """
                SELECT COUNT(*) FILTER (WHERE status = 'queued'),
                       COUNT(*) FILTER (WHERE status = 'running' AND runs > 0),
                       COUNT(*) FILTER (WHERE status = 'running' AND runs = 0)
                FROM routerapp_query
                """
            ).fetchone()
    except psycopg.OperationalError:
        return {"queued": 0, "running_worker": 0, "running_inline": 0}
    return {"queued": row[0], "running_worker": row[1], "running_inline": row[2]}


# What each fault should hit: it is injected once the database shows one (or after 5 s).
TARGET = {
    "worker_kill": "running_worker",
    "web_kill": "running_inline",
    "redis_restart": "queued",
    "postgres_restart": "running_worker",
}


def wait_target(stack: Stack, fault: str) -> dict[str, int]:
    deadline = time.monotonic() + 5
    while True:
        now = in_flight(stack.db_url)
        if fault not in TARGET or now[TARGET[fault]] > 0 or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def inject(stack: Stack, fault: str, rep: int) -> str:
    """Inject one fault; return what was done."""
    if fault == "worker_kill":
        name = "engine-http" if rep % 3 != 2 else "engine-cpu"
        stack.kill_worker(name)
        time.sleep(1.0)
        stack.start_worker(name)
        return f"SIGKILL {name}, restarted"
    if fault == "web_kill":
        kids = stack.web_children()
        if not kids:
            return "no gunicorn worker to kill"
        victim = random.choice(kids)
        os.kill(victim, signal.SIGKILL)
        return f"SIGKILL gunicorn worker {victim}"
    if fault == "redis_restart":
        stack.restart_redis()
        return "redis-server SIGKILLed and restarted empty"
    if fault == "postgres_restart":
        t0 = time.monotonic()
        stack.restart_postgres()
        return f"pg_ctl restart -m fast ({time.monotonic() - t0:.2f} s)"
    return ""


def run_window(
    stack: Stack, fault: str, rep: int, n: int, pool: ThreadPoolExecutor
) -> dict[str, Any]:
    before = all_ids(stack.db_url)
    assert stack.proxy is not None
    stack.proxy.rate = 0.6 if fault == "upstream" else 0.0
    load_s = 6.0
    futures: list[Any] = []
    loader = threading.Thread(
        target=lambda: futures.extend(run_load(stack, n, load_s, fault, pool))
    )
    loader.start()
    time.sleep(load_s * 0.3)
    hit = wait_target(stack, fault)
    action = inject(stack, fault, rep)
    loader.join()
    outcomes = [f.result() for f in futures]
    stack.proxy.rate = 0.0
    wait_settled(stack.db_url, lambda: set(), before, timeout=90)
    rows, _ = query_rows(stack.db_url, before)
    given = {o.query_id for o in outcomes if o.query_id}
    lost = sorted(given - set(rows))
    stuck = [q for q, r in rows.items() if r["status"] in ("queued", "running")]
    failed = [r for r in rows.values() if r["status"] == "failed"]
    violations: list[str] = []
    double = 0
    for qid, r in rows.items():
        if r["status"] == "failed" and not r["error"]:
            violations.append(f"{qid}: failed without a message")
        if r["cost"] != r["samples_usd"]:
            violations.append(f"{qid}: cost {r['cost']} != samples {r['samples_usd']}")
            if r["cost"] > r["samples_usd"]:
                double += 1
        if r["cost"] > r["reserved"]:
            violations.append(f"{qid}: cost {r['cost']} > reserved {r['reserved']}")
    budgets = budget_check(stack.db_url)
    overspend = Decimal(0)
    for w in budgets["windows"]:
        if w["reserved"] != w["open_reserved"]:
            violations.append(
                f"budget {w['budget']}: reserved {w['reserved']} left, open queries hold {w['open_reserved']}"
            )
        if w["spent"] != w["queries_cost"]:
            violations.append(
                f"budget {w['budget']}: spent {w['spent']} != its queries' cost {w['queries_cost']}"
            )
            if w["spent"] > w["queries_cost"]:
                double += 1
        if w["hard"] and w["spent"] > w["limit"]:
            overspend += w["spent"] - w["limit"]
    statuses = Counter(o.status for o in outcomes)
    return {
        "fault": fault,
        "rep": rep,
        "action": action
        or (f"proxy faults {dict(stack.proxy.injected)}" if fault == "upstream" else "clients"),
        "requests": len(outcomes),
        "http": {str(k): v for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))},
        "client_errors": dict(Counter(o.error for o in outcomes if o.error)),
        "queries": len(rows),
        "finished": sum(r["status"] == "done" for r in rows.values()),
        "cancelled": sum(r["status"] == "cancelled" for r in rows.values()),
        "failed_with_message": sum(bool(r["error"]) for r in failed),
        "in_flight_at_fault": hit,
        "rerun": sum(r["runs"] > 1 for r in rows.values()),
        "bound_billed_samples": sum(r["lost_samples"] for r in rows.values()),
        "lost": len(lost),
        "stuck": len(stuck),
        "double_billed": double,
        "overspend_usd": overspend,
        "invariant_violations": len(violations),
        "violations": violations[:20],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="fault-injection benchmark")
    parser.add_argument("--json", default=None, help="write the results there")
    parser.add_argument("--reps", type=int, default=3, help="windows per fault kind")
    parser.add_argument("--per-window", type=int, default=14, help="requests per window")
    parser.add_argument("--capped-usd", default="0.0015", help="the capped team's hard budget")
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    random.seed(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="costpass-faults-"))
    stack = Stack(tmp, args.capped_usd)
    windows = []
    try:
        t0 = time.monotonic()
        stack.start()
        print(f"stack up in {time.monotonic() - t0:.0f} s ({tmp})", flush=True)
        with ThreadPoolExecutor(max_workers=12) as pool:
            for rep in range(args.reps):
                for fault in args.faults.split(","):
                    w = run_window(stack, fault, rep, args.per_window, pool)
                    windows.append(w)
                    print(
                        f"{fault:17s} rep {rep}: {w['queries']:3d} queries, {w['action']} "
                        f"(in flight: {w['in_flight_at_fault']}); "
                        f"lost {w['lost']} stuck {w['stuck']} double {w['double_billed']} "
                        f"overspend {w['overspend_usd']} violations {w['invariant_violations']}",
                        flush=True,
                    )
                    for v in w["violations"][:5]:
                        print("   ", v, flush=True)
    finally:
        stack.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    report(windows, args)


COLUMNS = (
    "queries",
    "finished",
    "cancelled",
    "failed_with_message",
    "rerun",
    "bound_billed_samples",
    "lost",
    "stuck",
    "double_billed",
    "overspend_usd",
    "invariant_violations",
)


def report(windows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    faults: dict[str, dict[str, Any]] = {}
    for w in windows:
        f = faults.setdefault(w["fault"], {c: 0 for c in COLUMNS} | {"windows": 0, "actions": []})
        f["windows"] += 1
        f["actions"].append(w["action"])
        for c in COLUMNS:
            f[c] += w[c]
    totals = {
        c: sum((f[c] for f in faults.values()), Decimal(0) if c == "overspend_usd" else 0)
        for c in (
            "queries",
            "lost",
            "stuck",
            "double_billed",
            "overspend_usd",
            "invariant_violations",
        )
    }
    header = ["fault", *COLUMNS]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for name, f in faults.items():
        print("| " + " | ".join([name, *(str(f[c]) for c in COLUMNS)]) + " |")
    print("| **total** | " + " | ".join(str(totals.get(c, "")) for c in COLUMNS) + " |")
    if args.json:

        def plain(value: Any) -> Any:
            return str(value) if isinstance(value, Decimal) else value

        payload = {
            "faults": {n: {k: plain(v) for k, v in f.items()} for n, f in faults.items()},
            "totals": {k: plain(v) for k, v in totals.items()},
            "windows": [{k: plain(v) for k, v in w.items()} for w in windows],
            "settings": {
                "reps": args.reps,
                "per_window": args.per_window,
                "capped_usd": args.capped_usd,
                **FAST_RECOVERY,
            },
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
