"""Fixtures of the API tests: a real OpenAI-compatible upstream (bench/fake_upstream.py in its
own process), configurations on it, teams with keys, and a real gunicorn serving the test
database (for what the in-process live server cannot show: other processes, dead services)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from routerapp.models import ApiKey, Configuration, ModelEndpoint, StrategyConfig, Team
from routerapp.services.apikeys import api_key_create
from tests.conftest import REPO
from tests.scripted_upstream import spawn_fake_upstream, wait_listening

FAKE_REPLY = "The answer is 4."
FAKE_PRICE_IN = Decimal("1.5")
FAKE_PRICE_OUT = Decimal("2.25")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_upstream(
    tmp: Path,
    token_delay_ms: float = 0.0,
    extra_args: tuple[str, ...] = (),
    replies: list[str] | None = None,
) -> tuple[subprocess.Popen, str]:
    return spawn_fake_upstream(
        tmp,
        reply=FAKE_REPLY,
        token_delay_ms=token_delay_ms,
        extra_args=extra_args,
        replies=replies,
    )


@pytest.fixture(scope="session")
def upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A zero-latency OpenAI-compatible server (a real HTTP server in its own process)."""
    proc, url = start_upstream(tmp_path_factory.mktemp("upstream"))
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def slow_upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same server, 150 ms between tokens: streaming must show them one by one."""
    proc, url = start_upstream(tmp_path_factory.mktemp("slow-upstream"), token_delay_ms=150)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def scripted_upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The upstream with replies that disagree (4, 4, 5 by seed), so sampling fields and
    votes change what comes back."""
    proc, url = start_upstream(tmp_path_factory.mktemp("scripted-upstream"), replies=REPLIES)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


REPLIES = ["The answer is 4.", "The answer is 4.", "The answer is 5."]


def make_configuration(
    base_url: str,
    *,
    name: str = "fake",
    strategy: str = "single",
    strategy_name: str = "single-fake",
    params: dict | None = None,
    queue: str = "",
    **endpoint_fields: object,
) -> Configuration:
    endpoint, _ = ModelEndpoint.objects.get_or_create(
        name=name,
        defaults={
            "engine": ModelEndpoint.Engine.OPENAI_COMPAT,
            "engine_params": {"base_url": base_url, "model": "fake", "tokenize": "none"},
            "input_usd_per_mtok": FAKE_PRICE_IN,
            "output_usd_per_mtok": FAKE_PRICE_OUT,
            "queue": queue,
            **endpoint_fields,
        },
    )
    config, _ = StrategyConfig.objects.get_or_create(
        name=strategy_name,
        defaults={"strategy": strategy, "params": params or {"max_tokens": 16}},
    )
    configuration, _ = Configuration.objects.get_or_create(
        endpoint=endpoint, strategy=config, defaults={"slug": f"{name}/{strategy_name}"}
    )
    return configuration


@dataclass
class Caller:
    team: Team
    key: ApiKey
    raw: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.raw}"}


@pytest.fixture
def make_caller() -> Callable[..., Caller]:
    """Create a team (or reuse one by name) and a key for it."""

    def make(team: str = "alpha", **key_fields: object) -> Caller:
        t, _ = Team.objects.get_or_create(name=team)
        key, raw = api_key_create(team=t, name=f"key-{team}", **key_fields)  # type: ignore[arg-type]
        return Caller(t, key, raw)

    return make


def test_db_url() -> str:
    """The URL of the test database, for server processes started by a test."""
    from django.conf import settings
    from django.db import connection

    db = settings.DATABASES["default"]
    name = connection.settings_dict["NAME"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{name}"
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{name}"


test_db_url.__test__ = False  # type: ignore[attr-defined]


@dataclass
class Gunicorn:
    url: str
    proc: subprocess.Popen
    log: Path


def start_gunicorn(
    tmp: Path, env_overrides: dict[str, str], workers: int = 1, threads: int = 8
) -> Gunicorn:
    """Start the production web server (as `make run` does) on the test database."""
    port = free_port()
    env = dict(os.environ)
    env.update({"DATABASE_URL": test_db_url(), "PYTHONUNBUFFERED": "1", "DJANGO_DEBUG": "false"})
    env.update(env_overrides)
    log = tmp / f"gunicorn-{port}.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "routerapp.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            str(workers),
            "-k",
            "gthread",
            "--threads",
            str(threads),
            "--timeout",
            "120",
        ],
        cwd=REPO,
        env=env,
        stdout=open(log, "w"),  # noqa: SIM115 - lives as long as the process
        stderr=subprocess.STDOUT,
    )
    wait_listening(port, proc, log)
    url = f"http://127.0.0.1:{port}"
    # Workers import the app lazily: wait until one answers.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/v1/models", timeout=5)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    return Gunicorn(url, proc, log)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(autouse=True, scope="session")
def _fresh_rate_limit_counters() -> None:
    """Key ids restart with each test database; counters of an earlier run must not count."""
    from routerapp.services.streaming import redis_client

    client = redis_client()
    if client is not None:
        for key in client.scan_iter("costpass:rl:*"):
            client.delete(key)
