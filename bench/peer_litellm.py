"""costpass vs LiteLLM's proxy, back to back in one sitting (issue 11).

Runs the peer kit (``../shared/peer-litellm/``: its zero-latency fake upstream, its asyncio
load generator, its pinning protocol) against LiteLLM 1.108.7 and against costpass, alternating
L, C, L, C (``--rounds`` pairs), and prints for each gateway and their ratio costpass / LiteLLM:
added p50 / p99 at concurrency 1, added p50 at 10 / 25 / 40 req/s (open loop), saturation (the
best closed-loop rate), CPU-ms per request (the gateway's process tree; for costpass also every
Postgres and Redis server process, whose work it causes) and the gateway's RSS. "Added" is the
gateway's percentile minus the direct baseline's (load generator straight to the upstream), taken
at the start of the sitting.

Placement (the kit's protocol, 2 cores): CPU 0 runs the load generator and the upstream, CPU 1
the gateway under test (LiteLLM: one uvicorn process, master-key auth, no database; costpass:
gunicorn gthread as ``make run``, router on, a hard team budget, ledger on, on a fresh database
``<DATABASE_URL's database>_bench_peer``). Postgres and Redis are the machine's shared services,
not pinned. Medians over rounds are reported.

Setup (once, outside the repository; see the kit's README):

    python3.11 -m venv /work/peer/.venv && /work/peer/.venv/bin/pip install 'litellm[proxy]==1.108.7'
    python3.11 -m venv /work/peer/.venv-tools && \\
        /work/peer/.venv-tools/bin/pip install -r ../shared/peer-litellm/pip-freeze-tools.txt

Run (``--short``: 8 s windows, 2 s warm-up, concurrency 1, 8, 32: about 7 minutes):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/costpass REDIS_URL=redis://127.0.0.1:6379/0 \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/0 python bench/peer_litellm.py --short \\
        --json bench/results/peer_litellm.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import (  # noqa: E402
    REPO,
    bench_env,
    free_port,
    pinned,
    prepare,
    start_gateway,
    stop,
    wait_port,
)

LITELLM_KEY = "sk-litellm-bench-master-key"
# The kit's default body (what LiteLLM gets), with the router choosing for costpass.
BODY = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(names: tuple[str, ...]) -> float:
    """CPU seconds (user + system) of every process whose command is one of ``names``, plus
    what their exited children used (a Postgres backend that ended is in the postmaster's)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        if not any(comm.startswith(n) for n in names):
            continue
        fields = text.rsplit(")", 1)[1].split()
        total += sum(int(f) for f in fields[11:15]) / CLK_TCK
    return total


class Kit:
    """The peer kit's tools: its upstream and load generator, run with its tools venv."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.dir = Path(args.kit).resolve()
        self.py = str(Path(args.tools_venv) / "bin" / "python")
        self.args = args
        self.work = work

    def loadgen(
        self, url: str, label: str, levels: str, open_loop: bool, watch: list[int], key: str | None
    ) -> list[dict[str, Any]]:
        out = self.work / f"{label}-{'open' if open_loop else 'closed'}-{time.monotonic_ns()}.json"
        argv = [
            self.py,
            str(self.dir / "loadgen.py"),
            "--url",
            url,
            "--rates" if open_loop else "-c",
            levels,
            "-d",
            str(self.args.duration),
            "-w",
            str(self.args.warmup),
            "--label",
            label,
            "--body",
            json.dumps(BODY | {"model": "auto" if label == "costpass" else "fake-model"}),
            "--out",
            str(out),
        ]
        if key:
            argv += ["--key", key]
        for pid in watch:
            argv += ["--watch-pid", str(pid)]
        subprocess.run(pinned(self.args.client_cpu, argv), check=True, cwd=self.work)
        return json.loads(out.read_text())


def sweep(kit: Kit, url: str, label: str, watch: list[int], key: str | None) -> dict[str, Any]:
    args = kit.args
    closed = kit.loadgen(url, label, args.concurrency, False, watch, key)
    opened = kit.loadgen(url, label, args.rates, True, watch, key)
    return {"closed": closed, "open": opened}


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants (MiB)."""
    from gateway_overhead import children

    total = 0
    for p in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def warm(url: str, key: str, model: str) -> None:
    """A first request (checked), then a few more so lazy imports and caches are done."""
    with httpx.Client(timeout=300) as client:
        for i in range(30):
            r = client.post(
                url, json=BODY | {"model": model}, headers={"Authorization": f"Bearer {key}"}
            )
            if r.status_code != 200 or "choices" not in r.json():
                raise SystemExit(f"{url} check {i} failed: {r.status_code} {r.text[:400]}")


def run_litellm(kit: Kit, up_port: int, up_pid: int) -> dict[str, Any]:
    config = kit.work / "litellm.yaml"
    config.write_text(
        (kit.dir / "config.yaml")
        .read_text()
        .replace("http://127.0.0.1:18000/v1", f"http://127.0.0.1:{up_port}/v1")
    )
    port = free_port()
    # As the kit runs it: no database, no Redis (LiteLLM reads DATABASE_URL / REDIS_* itself).
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
        and not k.startswith("REDIS_")
    }
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    log = open(kit.work / "litellm.log", "a")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        pinned(
            kit.args.gateway_cpu,
            [
                str(Path(kit.args.litellm_venv) / "bin" / "litellm"),
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
        ),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=kit.work,
    )
    try:
        wait_port(port, proc, timeout=180)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        warm(url, LITELLM_KEY, "fake-model")
        result = sweep(kit, url, "litellm", [proc.pid, up_pid], LITELLM_KEY)
        result["rss_mib"] = rss_mib(proc.pid)
        result["server_cpu_s"] = 0.0  # no database, no Redis in this configuration
        return result
    finally:
        stop(proc)
        log.close()


def run_costpass(
    kit: Kit, env: dict[str, str], key: str, up_pid: int, gw_args: argparse.Namespace
) -> dict[str, Any]:
    port = free_port()
    proc = start_gateway(sys.executable, env, gw_args, port)
    try:
        wait_port(port, proc)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        warm(url, key, "auto")
        servers0 = server_cpu_seconds(("postgres", "redis-server"))
        result = sweep(kit, url, "costpass", [proc.pid, up_pid], key)
        result["server_cpu_s"] = server_cpu_seconds(("postgres", "redis-server")) - servers0
        result["rss_mib"] = rss_mib(proc.pid)
        return result
    finally:
        stop(proc)


def figures(run: dict[str, Any], direct: dict[str, Any], gw_pid_index: int = 0) -> dict[str, float]:
    """The comparison's figures of one gateway run against the direct baseline."""

    def by_level(rows: list[dict[str, Any]]) -> dict[float, dict[str, Any]]:
        return {float(r["level"]): r for r in rows}

    closed, d_closed = by_level(run["closed"]), by_level(direct["closed"])
    opened, d_open = by_level(run["open"]), by_level(direct["open"])
    out: dict[str, float] = {}
    c1, d1 = closed[1.0]["latency_ms"], d_closed[1.0]["latency_ms"]
    out["added_p50_c1_ms"] = c1["p50"] - d1["p50"]
    out["added_p99_c1_ms"] = c1["p99"] - d1["p99"]
    for rate, row in opened.items():
        out[f"added_p50_r{int(rate)}_ms"] = (
            row["latency_ms"]["p50"] - d_open[rate]["latency_ms"]["p50"]
        )
    out["saturation_rps"] = max(r["rps"] for r in run["closed"])
    gateway_cpu = responses = 0.0
    for row in [*run["closed"], *run["open"]]:
        gateway_cpu += list(row["watched"].values())[gw_pid_index]["cpu_s"]
        responses += row["total_responses"]
    out["gateway_cpu_ms_per_request"] = gateway_cpu * 1000 / responses
    out["servers_cpu_ms_per_request"] = run["server_cpu_s"] * 1000 / responses
    out["cpu_ms_per_request"] = (gateway_cpu + run["server_cpu_s"]) * 1000 / responses
    out["rss_mib"] = run["rss_mib"]
    out["errors"] = sum(r["errors"] for r in [*run["closed"], *run["open"]])
    return out


# Lower is better for all but saturation.
HIGHER_IS_BETTER = {"saturation_rps"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kit", default=str(REPO.parent / "shared" / "peer-litellm"))
    parser.add_argument("--litellm-venv", default="/work/peer/.venv")
    parser.add_argument("--tools-venv", default="/work/peer/.venv-tools")
    parser.add_argument("--rounds", type=int, default=2, help="L, C pairs")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--rates", default="10,25,40")
    parser.add_argument("--short", action="store_true", help="8 s windows, 2 s warm-up, c 1,8,32")
    parser.add_argument("--gateway-cpu", default="1")
    parser.add_argument("--client-cpu", default="0")
    parser.add_argument("--threads", type=int, default=16, help="gunicorn threads (costpass)")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    if args.short:
        args.duration, args.warmup, args.concurrency = 8.0, 2.0, "1,8,32"
    for tool in (
        Path(args.litellm_venv) / "bin" / "litellm",
        Path(args.tools_venv) / "bin" / "python",
    ):
        if not tool.exists():
            raise SystemExit(f"{tool} is missing: see this script's docstring for the setup")

    work = Path(tempfile.mkdtemp(prefix="costpass-peer-"))
    kit = Kit(args, work)
    env = bench_env("_bench_peer")
    gw_args = argparse.Namespace(gateway_cpu=args.gateway_cpu, workers=1, threads=args.threads)
    up_port = free_port()
    upstream = subprocess.Popen(
        pinned(
            args.client_cpu,
            [kit.py, str(kit.dir / "fake_upstream.py"), "--port", str(up_port)],
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs: dict[str, list[dict[str, Any]]] = {"litellm": [], "costpass": []}
    try:
        wait_port(up_port, upstream)
        up_url = f"http://127.0.0.1:{up_port}/v1"
        # The upstream is asked for "fake-model", as LiteLLM's configuration asks it.
        key = prepare(env, up_url, model="fake-model")
        print("direct (load generator -> upstream):", flush=True)
        direct = sweep(kit, f"{up_url}/chat/completions", "direct", [upstream.pid], None)
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}: LiteLLM", flush=True)
            runs["litellm"].append(run_litellm(kit, up_port, upstream.pid))
            print(f"round {round_ + 1}: costpass", flush=True)
            runs["costpass"].append(run_costpass(kit, env, key, upstream.pid, gw_args))
    finally:
        stop(upstream)
        shutil.rmtree(work, ignore_errors=True)

    rows = {name: [figures(r, direct) for r in rs] for name, rs in runs.items()}
    median = {
        name: {k: round(statistics.median(r[k] for r in rs), 2) for k in rs[0]}
        for name, rs in rows.items()
    }
    ratio = {
        k: round(median["costpass"][k] / median["litellm"][k], 3)
        for k in median["costpass"]
        if median["litellm"][k] and k != "errors"
    }
    print(f"\nmedians over {args.rounds} alternations (LiteLLM | costpass | costpass/LiteLLM):")
    for k in median["costpass"]:
        note = "(>= 1 is better)" if k in HIGHER_IS_BETTER else ""
        print(
            f"  {k:>28} {median['litellm'][k]:9.2f} {median['costpass'][k]:9.2f} "
            f"{ratio.get(k, float('nan')):7.3f} {note}"
        )
    d = {float(r["level"]): r for r in direct["closed"]}
    print(
        f"direct baseline: {max(r['rps'] for r in direct['closed']):.0f} req/s saturation, "
        f"c1 p50 {d[1.0]['latency_ms']['p50']:.2f} ms"
    )
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "litellm": median["litellm"],
                    "costpass": median["costpass"],
                    "ratio_costpass_litellm": ratio,
                    "direct_saturation_rps": round(max(r["rps"] for r in direct["closed"]), 1),
                    "direct_c1_p50_ms": round(d[1.0]["latency_ms"]["p50"], 3),
                    "rounds": args.rounds,
                    "duration_s": args.duration,
                    "warmup_s": args.warmup,
                    "concurrency": args.concurrency,
                    "rates": args.rates,
                    "per_round": rows,
                    "load_average": os.getloadavg(),
                },
                indent=2,
            )
        )
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
