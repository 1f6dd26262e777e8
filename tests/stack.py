"""Pieces of the real stack that fault tests start, kill and restart themselves: a private
redis-server (so a test may restart it without touching the shared one) and Celery workers
with their own settings, on the test database."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO, _worker_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on {port}")


def children(pid: int) -> list[int]:
    """Pids of a process's children (a prefork pool, gunicorn's workers)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class PrivateRedis:
    """A non-persistent redis-server on its own port (as the default install runs it)."""

    port: int
    workdir: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, self.proc, "redis-server")
        return self

    def kill(self) -> None:
        """SIGKILL: everything it held (queued messages, event streams) is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()


def start_redis(workdir: Path) -> PrivateRedis:
    return PrivateRedis(free_port(), workdir).start()


@dataclass
class Worker:
    proc: subprocess.Popen
    log: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def children(self) -> list[int]:
        """Pids of the pool's child processes (prefork)."""
        return children(self.proc.pid)

    def stop(self) -> None:
        children = self.children()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid in children:  # prefork children a killed parent left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def start_worker(
    tmp: Path,
    *,
    db_name: str,
    queues: str,
    env: dict[str, str],
    pool: str = "solo",
    concurrency: int = 1,
    beat: bool = False,
    name: str = "faults",
) -> Worker:
    """Start `celery worker` on the test database with ``env`` on top of the test settings;
    return once it is ready."""
    full_env = _worker_env(db_name)
    full_env.update(env)
    log = tmp / f"worker-{name}-{free_port()}.log"
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers",
        "worker",
        "-Q",
        queues,
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        "--loglevel=INFO",
        "-n",
        f"{name}-{os.getpid()}-{log.stem}@%h",
        *(["-B", "-s", str(tmp / f"beat-{log.stem}")] if beat else []),
    ]
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        env=full_env,
        stdout=open(log, "w"),  # noqa: SIM115 - lives as long as the process
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker exited: {log.read_text()[-3000:]}")
        if "ready." in log.read_text():
            return Worker(proc, log, args, full_env)
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"celery worker did not start: {log.read_text()[-3000:]}")
