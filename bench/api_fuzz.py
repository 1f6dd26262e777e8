"""Fuzz the API from its own OpenAPI schema with schemathesis, against the production server.

Starts what `make run` serves, on a fresh database (DATABASE_URL + `_fuzz`): gunicorn with the
fake OpenAI-compatible upstream (bench/fake_upstream.py) as the only model, so generated
requests that are valid really run (routed, reserved, served inline, priced, settled); a team
with an all-scopes key and a budget. Then runs

    schemathesis run http://127.0.0.1:PORT/api/schema/ -H "Authorization: Bearer KEY" \\
        --checks all --max-time SECONDS ...

and prints schemathesis' summary. The product's promise is zero 5xx responses
(check `not_a_server_error`); the other checks (schema conformance, negative data rejection,
...) are reported as they come. Then it sends the hostile bodies of bench/hostile_inputs.py
(deep nesting, lone surrogates, NUL, invalid UTF-8, huge numbers, NaN, duplicate keys, wrong
content types: what a schema-driven generator does not produce) to both request endpoints and
prints each status; any 5xx, or a status other than the expected 4xx, fails the run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/costpass REDIS_URL=redis://127.0.0.1:6379/0 \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/0 python bench/api_fuzz.py [--max-time 300]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_overhead import (  # noqa: E402
    REPO,
    bench_database,
    free_port,
    gunicorn_argv,
    setup_upstream,
    wait_port,
)
from hostile_inputs import CASES  # noqa: E402


def hostile(base_url: str, key: str) -> int:
    """Send every hostile body; print its status; return how many did not get the 4xx due."""
    import httpx

    bad = 0
    print(f"\nhostile bodies ({len(CASES)} cases):")
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for name, path, body, ctype, expected in CASES:
            content_type = "application/json" if ctype == "json" else ctype
            r = client.post(
                path,
                content=body,
                headers={"Authorization": f"Bearer {key}", "Content-Type": content_type},
            )
            ok = r.status_code == expected
            bad += not ok
            print(f"  {'ok ' if ok else 'BAD'} {r.status_code} (want {expected}) {path:22s} {name}")
    print(f"hostile bodies: {len(CASES) - bad}/{len(CASES)} answered as expected")
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description="schemathesis against the running server")
    parser.add_argument("--max-time", type=int, default=300)
    parser.add_argument("--checks", default="all")
    parser.add_argument("--workers", default="2")
    parser.add_argument("--report-dir", default=None, help="write a JUnit report there")
    parser.add_argument("extra", nargs="*", help="more schemathesis options (after --)")
    args = parser.parse_args()
    env = dict(os.environ)
    env["DATABASE_URL"] = bench_database(env, suffix="_fuzz")
    env.setdefault("DJANGO_SECRET_KEY", "fuzz-" + "x" * 40)
    env["DJANGO_DEBUG"] = "false"  # production error pages, whatever a local .env says
    env["COSTPASS_SYNC_WAIT_S"] = env.get("COSTPASS_SYNC_WAIT_S", "10")
    py = sys.executable
    procs: list[subprocess.Popen] = []
    try:
        up_port = free_port()
        procs.append(
            subprocess.Popen(
                [py, str(REPO / "bench" / "fake_upstream.py"), "--port", str(up_port)],
                stdout=subprocess.DEVNULL,
            )
        )
        wait_port(up_port, procs[-1])
        subprocess.run(
            [py, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, env=env, check=True
        )
        key = setup_upstream(py, env, f"http://127.0.0.1:{up_port}/v1")
        port = free_port()
        log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"fuzz-gunicorn-{port}.log", "w")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                gunicorn_argv(py, "routerapp.wsgi", port, workers=2, threads=16),
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        wait_port(port, procs[-1])
        command = [
            str(Path(py).parent / "schemathesis"),
            "--config-file",
            str(REPO / "bench" / "schemathesis.toml"),
            "run",
            f"http://127.0.0.1:{port}/api/schema/",
            "-H",
            f"Authorization: Bearer {key}",
            "--checks",
            args.checks,
            "--max-time",
            str(args.max_time),
            "--workers",
            args.workers,
            "--request-timeout",
            "30",
            "--suppress-health-check",
            "all",
            *(["--report", "junit", "--report-dir", args.report_dir] if args.report_dir else []),
            *args.extra,
        ]
        shown = " ".join(
            c if "Bearer" not in c else "'Authorization: Bearer $KEY'" for c in command
        )
        print(f"$ {shown}", flush=True)
        result = subprocess.run(command, cwd=REPO, env=env)
        bad = hostile(f"http://127.0.0.1:{port}", key)
        log.flush()
        text = Path(log.name).read_text()
        print(f"gunicorn log: {log.name}; tracebacks in it: {text.count('Traceback')}")
        sys.exit(result.returncode or int(bad > 0))
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
