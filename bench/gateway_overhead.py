"""Gateway overhead: latency costpass adds to an OpenAI-compatible call, and its saturation.

Registers a zero-latency fake OpenAI-compatible upstream (bench/fake_upstream.py, started
here on 127.0.0.1) as an `openai_compat` endpoint with the `single` strategy, the only enabled
configuration of a fresh database, with a hard team budget (so reservation and settlement
run). Then loads POST /v1/chat/completions with model="auto" (routing, budget reservation,
ledger, samples and settlement all on), and the same load against the upstream directly:

- closed loop at concurrency 1, 8, 32 (each client sends its next request when the last ends);
- open loop at 10, 25, 40 req/s (requests sent on schedule whatever the responses do; latency
  counted from the scheduled send, so queueing is not hidden);

each `--duration` seconds after a `--warmup`. It prints added latency p50/p95/p99 (gateway
minus direct, per percentile) and the saturation throughput (the best closed-loop rate), with
the gateway's processes (gunicorn, and the Celery worker in `--mode celery`) pinned to one core
(`taskset -c 0`); the upstream and the load generator share the other core. Postgres and
Redis are the machine's shared services and are not pinned.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/costpass REDIS_URL=redis://127.0.0.1:6379/0 \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/0 python bench/gateway_overhead.py [--json OUT]

The database named by DATABASE_URL gets `_bench_gateway` appended and is dropped and
re-created. `--mode celery` sends every query through the task queue (a Celery worker on the
same core) instead of serving the single call inline: the cost of the queue hop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
BODY = {"model": "auto", "messages": [{"role": "user", "content": "What is 2+2?"}]}
CLOSED = (1, 8, 32)
OPEN = (10, 25, 40)


# --- a minimal HTTP/1.1 keep-alive client (the load generator must cost far less than the
# --- gateway, so it does no more than write a request and read one Content-Length body) ----


class Conn:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        """Send one request; a kept-alive connection the server has closed meanwhile (its
        keep-alive timeout) is reopened and the request sent again, as HTTP clients do."""
        fresh = self.writer is None
        try:
            return await self._request(raw)
        except (OSError, asyncio.IncompleteReadError):
            if fresh:
                raise
            self.close()
            self.writer = None
            return await self._request(raw)

    async def _request(self, raw: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 "):
            raise asyncio.IncompleteReadError(head, None)
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def raw_request(url: str, path: str, body: dict, key: str | None) -> tuple[str, int, bytes]:
    u = urlparse(url)
    payload = json.dumps(body).encode()
    headers = [
        f"POST {path} HTTP/1.1",
        f"Host: {u.hostname}:{u.port}",
        "Content-Type: application/json",
        "Accept: application/json",
        f"Content-Length: {len(payload)}",
    ]
    if key:
        headers.append(f"Authorization: Bearer {key}")
    return (
        u.hostname or "127.0.0.1",
        u.port or 80,
        ("\r\n".join(headers) + "\r\n\r\n").encode() + payload,
    )


@dataclass
class Phase:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    completed: int = 0  # every response, warm-up included (for CPU per request)
    error_statuses: dict[int, int] = field(default_factory=dict)  # status (0: no answer): count

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


async def closed_loop(
    target: tuple[str, int, bytes], concurrency: int, seconds: float, warmup: float
) -> Phase:
    host, port, raw = target
    phase = Phase(f"c{concurrency}")
    start = time.perf_counter()
    measure_from = start + warmup
    stop = measure_from + seconds

    async def client() -> None:
        conn = Conn(host, port)
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop:
                    return
                try:
                    status = await conn.request(raw)
                except (OSError, asyncio.IncompleteReadError):
                    conn.close()
                    conn = Conn(host, port)
                    status = 0
                t1 = time.perf_counter()
                phase.completed += 1
                if t0 >= measure_from:
                    if status == 200:
                        phase.latencies_ms.append((t1 - t0) * 1000)
                    else:
                        phase.errors += 1
                        phase.error_statuses[status] = phase.error_statuses.get(status, 0) + 1
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    phase.seconds = seconds
    return phase


async def open_loop(
    target: tuple[str, int, bytes], rate: float, seconds: float, warmup: float
) -> Phase:
    host, port, raw = target
    phase = Phase(f"r{int(rate)}")
    idle: list[Conn] = []
    tasks: list[asyncio.Task] = []
    start = time.perf_counter() + 0.05
    total = int((warmup + seconds) * rate)
    measure_from = start + warmup

    async def one(scheduled: float) -> None:
        conn = idle.pop() if idle else Conn(host, port)
        try:
            status = await conn.request(raw)
            idle.append(conn)
        except (OSError, asyncio.IncompleteReadError):
            conn.close()
            status = 0
        done = time.perf_counter()
        phase.completed += 1
        if scheduled >= measure_from:
            if status == 200:
                phase.latencies_ms.append((done - scheduled) * 1000)
            else:
                phase.errors += 1
                phase.error_statuses[status] = phase.error_statuses.get(status, 0) + 1

    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(scheduled)))
    await asyncio.gather(*tasks)
    for conn in idle:
        conn.close()
    phase.seconds = seconds
    return phase


async def run_phases(
    target: tuple[str, int, bytes], seconds: float, warmup: float, rates: tuple, concs: tuple
) -> dict[str, Phase]:
    out: dict[str, Phase] = {}
    for c in concs:
        out[f"c{c}"] = await closed_loop(target, c, seconds, warmup)
        report_phase(out[f"c{c}"])
    for r in rates:
        out[f"r{r}"] = await open_loop(target, r, seconds, warmup)
        report_phase(out[f"r{r}"])
    return out


def report_phase(p: Phase) -> None:
    print(
        f"    {p.name:>4}: n={len(p.latencies_ms):6d} err={p.errors:3d} {p.rps:7.1f} req/s "
        f"p50={p.pct(50):7.2f} p95={p.pct(95):7.2f} p99={p.pct(99):7.2f} ms"
        + (f" errors by status: {p.error_statuses}" if p.errors else ""),
        flush=True,
    )


# --- the gateway under test -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process {proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on {port}")


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if shutil.which("taskset") else argv


def bench_database(env: dict[str, str], suffix: str = "_bench_gateway") -> str:
    """Drop and re-create `<DATABASE_URL's database><suffix>`; return its URL."""
    url = env.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        raise SystemExit("set DATABASE_URL to a Postgres server (the product's production setup)")
    u = urlparse(url)
    name = (u.path.lstrip("/") or "costpass") + suffix
    admin = u._replace(path="/postgres").geturl()
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return u._replace(path=f"/{name}").geturl()


SETUP = """
from decimal import Decimal
from routerapp.models import *
from routerapp.services.apikeys import api_key_create
e = ModelEndpoint.objects.create(name="fake-upstream", engine="openai_compat",
    engine_params={"base_url": "%(upstream)s", "model": "%(model)s", "tokenize": "none"},
    input_usd_per_mtok=Decimal("0.15"), output_usd_per_mtok=Decimal("0.60"))
s = StrategyConfig.objects.create(name="single", strategy="single",
    params={"temperature": 0.0, "max_tokens": 64})
Configuration.objects.create(slug="fake-upstream/single", endpoint=e, strategy=s)
t = Team.objects.create(name="bench")
BudgetPolicy.objects.create(team=t, name="bench-monthly", limit_usd=Decimal("1000000"),
    period="month", mode="hard_reject")
key, raw = api_key_create(team=t, name="bench")
print(raw)
"""


def setup_upstream(
    py: str, env: dict[str, str], upstream_url: str, cwd: Path = REPO, model: str = "fake"
) -> str:
    """Register the upstream as the only configuration (SETUP; ``model``: the model name sent
    to it); return the new API key."""
    out = subprocess.run(
        [py, "manage.py", "shell", "-c", SETUP % {"upstream": upstream_url, "model": model}],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


def proc_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their children so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        for child in [pid, *children(pid)]:
            try:
                fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                pass
    return total


def children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return []
    kids = [int(x) for x in out.split()]
    return kids + [g for k in kids for g in children(k)]


SERVERS = ("gthread", "uvicorn")


def gunicorn_argv(py: str, app: str, port: int, workers: int, threads: int) -> list[str]:
    """gunicorn as `make run` starts it (gthread; an access log line per request, here to
    /dev/null), serving ``app`` on ``port``."""
    return [
        py,
        "-m",
        "gunicorn",
        app,
        "-b",
        f"127.0.0.1:{port}",
        "-w",
        str(workers),
        "-k",
        "gthread",
        "--threads",
        str(threads),
        "--timeout",
        "300",
        "--backlog",
        "2048",
        "--access-logfile",
        os.devnull,
    ]


def start_gateway(
    py: str,
    env: dict[str, str],
    args: argparse.Namespace,
    port: int,
    cwd: Path = REPO,
    server: str = "gthread",
) -> subprocess.Popen:
    """The gateway pinned to the gateway's core, serving the code of ``cwd`` (a checkout of
    the repository): gunicorn as in `make run` (gthread, access log), or, with ``server``
    "uvicorn", the same Django application as ASGI under uvicorn (one process, its views run
    in asgiref's thread pool)."""
    if server == "uvicorn":
        argv = [
            py,
            "-m",
            "uvicorn",
            "routerapp.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backlog",
            "2048",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    else:
        argv = gunicorn_argv(py, "routerapp.wsgi", port, args.workers, args.threads)
    return subprocess.Popen(
        pinned(args.gateway_cpu, argv),
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def closed_loop_round(
    gunicorn: subprocess.Popen, port: int, key: str, args: argparse.Namespace
) -> dict[str, float]:
    """Run the closed-loop phases through one gateway; return its CPU per request and each
    phase's rate and p50 / p99."""
    target = raw_request(f"http://127.0.0.1:{port}", "/v1/chat/completions", BODY, key)
    cpu0 = proc_cpu_seconds([gunicorn.pid])
    phases = asyncio.run(
        run_phases(target, args.duration, args.warmup, (), tuple(args.concurrency))
    )
    cpu = proc_cpu_seconds([gunicorn.pid]) - cpu0
    served = sum(p.completed for p in phases.values())
    row: dict[str, float] = {"cpu_ms_per_request": cpu / max(1, served) * 1000}
    for label, phase in phases.items():
        row[f"{label}_rps"] = phase.rps
        row[f"{label}_p50_ms"] = phase.pct(50)
        row[f"{label}_p99_ms"] = phase.pct(99)
    return row


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server process, killing it if it does not exit within 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Variant:
    """One way of serving the gateway in an alternating comparison."""

    env: dict[str, str]
    cwd: Path = REPO
    server: str = "gthread"
    key: str = ""
    check: Any = None  # called with (port) after the first request, e.g. to scrape /metrics


def bench_env(database_suffix: str) -> dict[str, str]:
    """The environment every benchmark serves with: its own database, production settings (a
    local .env may turn debug, i.e. query logging, on), the inline path."""
    env = dict(os.environ)
    env["DATABASE_URL"] = bench_database(env, database_suffix)
    env["COSTPASS_INLINE_REMOTE_SINGLE"] = "true"
    env["COSTPASS_LOG_LEVEL"] = env.get("COSTPASS_LOG_LEVEL", "WARNING")
    env.setdefault("DJANGO_SECRET_KEY", "bench-" + "x" * 40)
    env["DJANGO_DEBUG"] = "false"
    return env


def start_upstream(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    """The scripted upstream on the client's core; return it and its base URL."""
    port = free_port()
    upstream = subprocess.Popen(
        pinned(
            args.client_cpu,
            [sys.executable, str(REPO / "bench" / "fake_upstream.py"), "--port", str(port)],
        ),
        stdout=subprocess.DEVNULL,
    )
    wait_port(port, upstream)
    return upstream, f"http://127.0.0.1:{port}/v1"


def prepare(env: dict[str, str], up_url: str, cwd: Path = REPO, model: str = "fake") -> str:
    """Migrate the database of ``env`` with the checkout ``cwd`` and give it a configuration on
    the upstream; return the API key to call it with."""
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=cwd,
        env=env,
        check=True,
    )
    return setup_upstream(sys.executable, env, up_url, cwd=cwd, model=model)


def alternate(
    args: argparse.Namespace, variants: dict[str, Variant]
) -> dict[str, list[dict[str, float]]]:
    """Serve each variant in turn, ABBA order over ``--rounds`` rounds (a load that drifts
    during the run penalises none), a closed-loop round each; return each variant's rows."""
    import httpx

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(args.client_cpu.split(",")[0])})
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        order = list(variants.items())
        for name, v in order if round_ % 2 == 0 else order[::-1]:
            port = free_port()
            proc = start_gateway(sys.executable, v.env, args, port, cwd=v.cwd, server=v.server)
            try:
                wait_port(port, proc)
                check = httpx.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json=BODY,
                    headers={"Authorization": f"Bearer {v.key}"},
                    timeout=300,  # a first request on a saturated machine can be slow
                )
                if check.status_code != 200:
                    raise SystemExit(f"{name} gateway check failed: {check.status_code}")
                if v.check is not None:
                    v.check(port)
                print(f"  round {round_ + 1}, {name}:")
                row = closed_loop_round(proc, port, v.key, args)
            finally:
                stop(proc)
            print(f"    gateway CPU per request: {row['cpu_ms_per_request']:.2f} ms", flush=True)
            results[name].append(row)
    return results


def report_pair(
    args: argparse.Namespace,
    results: dict[str, list[dict[str, float]]],
    base: str,
    other: str,
    extra: dict[str, Any],
) -> None:
    """Print and (``--json``) write the medians over rounds of two variants and their ratio
    other / base."""
    import statistics

    names = list(results[base][0])
    median = {
        name: {k: round(statistics.median(r[k] for r in rows), 2) for k in names}
        for name, rows in results.items()
    }
    ratio = {k: round(median[other][k] / median[base][k], 3) for k in names if median[base][k]}
    print(f"\nmedians over rounds ({base} | {other} | {other}/{base}):")
    for k in names:
        print(f"  {k:>22} {median[base][k]:9.2f} {median[other][k]:9.2f} {ratio.get(k, 0):7.3f}")
    if args.json_out:
        out = {
            **{name: median[name] for name in results},
            **extra,
            f"ratio_{other}_{base}": ratio,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "raw": results,
        }
        Path(args.json_out).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json_out}")


def compare_trees(args: argparse.Namespace) -> None:
    """Gateway overhead of two checkouts of the product (e.g. main before and after a change),
    served alternately in one run, each on its own fresh database; medians over rounds and the
    ratio new / old (the machine's load drifts: only the ratio is comparable)."""
    trees = {"old": Path(args.compare_trees[0]), "new": Path(args.compare_trees[1])}
    upstream, up_url = start_upstream(args)
    try:
        variants = {}
        for name, tree in trees.items():
            env = bench_env(f"_bench_{name}")
            key = prepare(env, up_url, cwd=tree.resolve())
            variants[name] = Variant(env, tree.resolve(), key=key)
        results = alternate(args, variants)
    finally:
        upstream.terminate()
        upstream.wait(timeout=20)
    report_pair(
        args,
        results,
        "old",
        "new",
        {
            "trees": {k: str(v.resolve()) for k, v in trees.items()},
            "labels": args.labels,
        },
    )


def compare_metrics(args: argparse.Namespace) -> None:
    """Gateway overhead with metrics off and on, alternating in one run (the machine's load
    drifts; alternating rounds and taking medians keeps the ratio fair)."""
    import tempfile

    import httpx

    env = bench_env("_bench_metrics")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    metrics_dir = tempfile.mkdtemp(prefix="costpass-metrics-")
    upstream, up_url = start_upstream(args)

    def scrapes(expected: int) -> Any:
        def check(port: int) -> None:
            scrape = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
            if scrape.status_code != expected:
                raise SystemExit(f"/metrics answered {scrape.status_code}, not {expected}")

        return check

    try:
        key = prepare(env, up_url)
        on = {**env, "COSTPASS_METRICS": "true", "COSTPASS_METRICS_DIR": metrics_dir}
        results = alternate(
            args,
            {
                "off": Variant({**env, "COSTPASS_METRICS": "false"}, key=key, check=scrapes(404)),
                "on": Variant(on, key=key, check=scrapes(200)),
            },
        )
    finally:
        upstream.terminate()
        upstream.wait(timeout=20)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    report_pair(args, results, "off", "on", {})


def compare_servers(args: argparse.Namespace) -> None:
    """The same checkout served by gunicorn gthread (as ``make run``) and by uvicorn (ASGI),
    alternating in one run on one database; medians over rounds and the ratio uvicorn /
    gthread."""
    env = bench_env("_bench_servers")
    upstream, up_url = start_upstream(args)
    try:
        key = prepare(env, up_url)
        results = alternate(args, {name: Variant(env, server=name, key=key) for name in SERVERS})
    finally:
        upstream.terminate()
        upstream.wait(timeout=20)
    report_pair(args, results, "gthread", "uvicorn", {})


def main() -> None:
    parser = argparse.ArgumentParser(description="gateway overhead benchmark")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--mode", choices=["inline", "celery"], default="inline")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=16, help="threads per gunicorn worker")
    parser.add_argument("--concurrency", type=int, nargs="*", default=list(CLOSED))
    parser.add_argument("--rates", type=int, nargs="*", default=list(OPEN))
    parser.add_argument(
        "--without-rollup",
        action="store_true",
        help="diagnostic: serve with the dashboards' per-query rollup refresh turned off",
    )
    parser.add_argument("--gateway-cpu", default="0")
    parser.add_argument("--client-cpu", default="1")
    parser.add_argument(
        "--compare-metrics",
        action="store_true",
        help="serve alternately with Prometheus metrics off and on (COSTPASS_METRICS) and "
        "report both and their ratio (closed loop at each --concurrency, --rounds times)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--compare-trees",
        nargs=2,
        metavar=("OLD", "NEW"),
        help="serve two checkouts of the product alternately (each on its own database) and "
        "report both and their ratio new / old (closed loop at each --concurrency)",
    )
    parser.add_argument("--labels", nargs=2, default=["old", "new"], help="what OLD and NEW are")
    parser.add_argument(
        "--compare-servers",
        action="store_true",
        help="serve alternately with gunicorn gthread and uvicorn (ASGI) and report both and "
        "their ratio (closed loop at each --concurrency, --rounds times)",
    )
    args = parser.parse_args()
    if args.compare_servers:
        compare_servers(args)
        return
    if args.compare_trees:
        compare_trees(args)
        return
    if args.compare_metrics:
        compare_metrics(args)
        return

    env = bench_env("_bench_gateway")
    env["COSTPASS_INLINE_REMOTE_SINGLE"] = "true" if args.mode == "inline" else "false"
    py = sys.executable
    procs: list[subprocess.Popen] = []
    try:
        up_port = free_port()
        upstream = subprocess.Popen(
            pinned(
                args.client_cpu,
                [py, str(REPO / "bench" / "fake_upstream.py"), "--port", str(up_port)],
            ),
            stdout=subprocess.DEVNULL,
        )
        procs.append(upstream)
        wait_port(up_port, upstream)
        up_url = f"http://127.0.0.1:{up_port}/v1"
        subprocess.run(
            [py, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, env=env, check=True
        )
        key = setup_upstream(py, env, up_url)
        gw_port = free_port()
        gunicorn = subprocess.Popen(
            pinned(
                args.gateway_cpu,
                gunicorn_argv(
                    py,
                    "bench.wsgi_without_rollup" if args.without_rollup else "routerapp.wsgi",
                    gw_port,
                    args.workers,
                    args.threads,
                ),
            ),
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(gunicorn)
        gateway_pids = [gunicorn.pid]
        if args.mode == "celery":
            worker = subprocess.Popen(
                pinned(
                    args.gateway_cpu,
                    [
                        py,
                        "-m",
                        "celery",
                        "-A",
                        "workers",
                        "worker",
                        "-Q",
                        "engine.openai_compat",
                        "--pool=threads",
                        "--concurrency=16",
                        "--loglevel=WARNING",
                        "-n",
                        "bench@%h",
                    ],
                ),
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(worker)
            gateway_pids.append(worker.pid)
            time.sleep(8)
        wait_port(gw_port, gunicorn)
        gateway = raw_request(f"http://127.0.0.1:{gw_port}", "/v1/chat/completions", BODY, key)
        direct = raw_request(up_url, "/v1/chat/completions", {**BODY, "model": "fake"}, None)
        # The load generator runs in this process: pin it next to the upstream.
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {int(args.client_cpu.split(",")[0])})
        # Check the gateway answers a real completion before measuring anything.
        import httpx

        check = httpx.post(
            f"http://127.0.0.1:{gw_port}/v1/chat/completions",
            json=BODY,
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        if check.status_code != 200:
            raise SystemExit(f"gateway check failed: {check.status_code} {check.text[:500]}")
        served = check.json()["costpass"]
        print(
            f"gateway on core {args.gateway_cpu} ({args.mode}, gunicorn gthread "
            f"-w {args.workers} --threads {args.threads}); upstream + load on core "
            f"{args.client_cpu}; served by {served['configuration']}, cost ${served['cost_usd']}"
        )
        print("  direct (upstream alone):")
        direct_ph = asyncio.run(
            run_phases(
                direct, args.duration, args.warmup, tuple(args.rates), tuple(args.concurrency)
            )
        )
        print("  gateway:")
        cpu0 = proc_cpu_seconds(gateway_pids)
        t0 = time.perf_counter()
        gateway_ph = asyncio.run(
            run_phases(
                gateway, args.duration, args.warmup, tuple(args.rates), tuple(args.concurrency)
            )
        )
        wall = time.perf_counter() - t0
        cpu = proc_cpu_seconds(gateway_pids) - cpu0
        served_n = sum(p.completed for p in gateway_ph.values())
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()

    added = {}
    print("\nadded latency (gateway - direct), ms:")
    print(f"  {'load':>5} {'p50':>8} {'p95':>8} {'p99':>8}   gateway req/s  errors")
    for name in gateway_ph:
        g, d = gateway_ph[name], direct_ph[name]
        added[name] = {
            q: round(g.pct(n) - d.pct(n), 2) for q, n in (("p50", 50), ("p95", 95), ("p99", 99))
        }
        print(
            f"  {name:>5} {added[name]['p50']:8.2f} {added[name]['p95']:8.2f} {added[name]['p99']:8.2f}"
            f"   {g.rps:13.1f}  {g.errors}"
        )
    closed = [gateway_ph[f"c{c}"].rps for c in args.concurrency if f"c{c}" in gateway_ph]
    saturation = max(closed) if closed else float("nan")
    cpu_ms = cpu / max(1, served_n) * 1000
    print(f"\nsaturation: {saturation:.1f} req/s on one core (best closed loop)")
    print(
        f"gateway CPU per request: {cpu_ms:.2f} ms (all gateway processes; {cpu:.1f} s CPU over "
        f"{wall:.0f} s)"
    )
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "added_ms": added,
                    "saturation_rps": round(saturation, 1),
                    "gateway_cpu_ms_per_request": round(cpu_ms, 2),
                    "mode": args.mode,
                    "direct_ms": {
                        k: {"p50": round(v.pct(50), 2), "p99": round(v.pct(99), 2)}
                        for k, v in direct_ph.items()
                    },
                    "gateway_ms": {
                        k: {
                            "p50": round(v.pct(50), 2),
                            "p95": round(v.pct(95), 2),
                            "p99": round(v.pct(99), 2),
                            "rps": round(v.rps, 1),
                            "errors": v.errors,
                        }
                        for k, v in gateway_ph.items()
                    },
                },
                indent=2,
            )
        )
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
