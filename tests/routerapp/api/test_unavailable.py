"""A dead broker or a dead database: the production server (gunicorn) answers 503 in OpenAI's
error JSON with a clear message, and leaves nothing half-written."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from routerapp.models import BudgetUsage, Query
from tests.factories import BudgetPolicyFactory, ConfigurationFactory
from tests.routerapp.api.conftest import free_port, start_gunicorn, stop

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "What is 2+2?"}]


def _dead_url(scheme: str, path: str) -> str:
    return f"{scheme}://127.0.0.1:{free_port()}/{path}"  # nothing listens there


def test_dead_broker_is_503_and_nothing_is_written(tmp_path, make_caller) -> None:  # type: ignore[no-untyped-def]
    ConfigurationFactory()  # the CPU model: its queries go through the task queue
    caller = make_caller("alpha")
    BudgetPolicyFactory(team=caller.team, name="monthly", limit_usd=Decimal("5"))
    dead = _dead_url("redis", "0")
    server = start_gunicorn(tmp_path, {"CELERY_BROKER_URL": dead, "CELERY_RESULT_BACKEND": dead})
    try:
        with httpx.Client(base_url=server.url, headers=caller.auth, timeout=60) as http:
            for path, body in [
                ("/v1/chat/completions", {"model": "auto", "messages": QUESTION}),
                ("/v1/chat/completions", {"model": "auto", "messages": QUESTION, "stream": True}),
                ("/api/v1/queries", {"prompt": "What is 2+2?"}),
            ]:
                r = http.post(path, json=body)
                assert r.status_code == 503, r.text
                error = r.json()["error"]
                assert error["code"] == "broker_unavailable"
                assert "task queue is unavailable" in error["message"]
                assert "nothing was queued or billed" in error["message"]
    finally:
        stop(server.proc)
    assert Query.objects.count() == 0
    usage = BudgetUsage.objects.get()
    assert usage.reserved_usd == 0 and usage.spent_usd == 0


def test_dead_database_is_503(tmp_path, make_caller) -> None:  # type: ignore[no-untyped-def]
    caller = make_caller("alpha")
    server = start_gunicorn(tmp_path, {"DATABASE_URL": _dead_url("postgres", "costpass")})
    try:
        with httpx.Client(base_url=server.url, headers=caller.auth, timeout=60) as http:
            for method, path in [
                ("POST", "/v1/chat/completions"),
                ("GET", "/v1/models"),
                ("GET", "/api/v1/usage"),
                ("POST", "/api/v1/queries"),
            ]:
                r = http.request(method, path, json={"model": "auto", "messages": QUESTION})
                assert r.status_code == 503, r.text
                error = r.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert error["code"] == "database_unavailable"
                assert "database is unavailable" in error["message"]
    finally:
        stop(server.proc)
