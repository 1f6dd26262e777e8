"""Budget alerts over HTTP: spend crossing 50 / 80 / 100 % of a budget raises one alert per
threshold per period, delivered to a local webhook receiver (JSON, HMAC-signed; a failed delivery
is retried without mailing twice) and by email (locmem backend); visible in the API and the UI."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from django.core import mail

from routerapp.models import BudgetAlert, Query, Team
from tests.routerapp.api.conftest import make_configuration
from workers.tasks import budget_alerts_deliver

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "webhook-test-secret"


class Receiver:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.fail_next = 0


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if state.fail_next:
                state.fail_next -= 1
                self.send_response(500)
                self.end_headers()
                return
            state.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def _verify(headers: dict[str, str], body: bytes) -> None:
    parts = dict(p.split("=", 1) for p in headers["x-costpass-signature"].split(","))
    expected = hmac.new(SECRET.encode(), parts["t"].encode() + b"." + body, hashlib.sha256)
    assert hmac.compare_digest(parts["sha256"], expected.hexdigest())


def test_thresholds_alert_once_by_webhook_and_email(  # type: ignore[no-untyped-def]
    live_server, upstream_url, make_caller, receiver, settings, monkeypatch
) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.ALERT_WEBHOOK_SECRET = SECRET
    # Raising an alert enqueues its delivery; here the test delivers itself, in this process
    # (locmem mail), so the session's Celery worker must not race it for the same alerts.
    enqueued: list[int] = []
    monkeypatch.setattr("routerapp.services.alerts._enqueue_delivery", lambda: enqueued.append(1))
    state, url = receiver
    make_configuration(upstream_url)
    caller = make_caller("alerted", scopes=["query", "admin", "usage"])
    body = {"model": "auto", "messages": [{"role": "user", "content": "What is 2+2?"}]}
    with httpx.Client(base_url=live_server.url, timeout=60, headers=caller.auth) as http:

        def ask() -> Decimal:
            r = http.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            budget_alerts_deliver.apply().get()
            return Decimal(r.json()["costpass"]["cost_usd"])

        cost = ask()  # before any budget: the price of one query
        r = http.post(
            "/api/v1/budgets",
            json={
                "name": "monthly",
                "limit_usd": str(cost * Decimal("2.5")),
                "mode": "soft",
                "alert_webhook_url": url,
                "alert_emails": "ops@example.com, finance@example.com",
            },
        )
        assert r.status_code == 201, r.text
        budget_id = r.json()["id"]
        ask()  # 40 %: nothing
        assert not state.calls and not mail.outbox and not enqueued
        state.fail_next = 1  # the receiver is down once
        ask()  # 80 %: the 50 % and 80 % alerts; the first webhook fails, emails go
        assert [json.loads(b)["threshold_percent"] for _, b in state.calls] == [80]
        assert enqueued  # the settlement that crossed them asked for a delivery
        assert len(mail.outbox) == 2
        failed = BudgetAlert.objects.filter(delivered_at__isnull=True)
        assert failed.count() == 1 and failed.get().webhook_status.startswith("failed")
        budget_alerts_deliver.apply().get()  # retried: the webhook now, no second email
        ask()  # 120 %: the 100 % alert
        ask()  # 160 %: nothing new
        thresholds = sorted(json.loads(b)["threshold_percent"] for _, b in state.calls)
        assert thresholds == [50, 80, 100]
        for headers, raw in state.calls:
            _verify(headers, raw)
            payload = json.loads(raw)
            assert payload["team"] == "alerted" and payload["budget"] == "monthly"
            assert Decimal(payload["limit_usd"]) == cost * Decimal("2.5")
        assert len(mail.outbox) == 3
        assert set(mail.outbox[0].to) == {"ops@example.com", "finance@example.com"}
        assert "reached 50%" in mail.outbox[0].subject
        assert BudgetAlert.objects.count() == 3
        assert not BudgetAlert.objects.filter(delivered_at__isnull=True).exists()
        # Visible in the API and in the dashboards' spend panel.
        budget = http.get(f"/api/v1/budgets/{budget_id}").json()
        assert [a["threshold_percent"] for a in budget["alerts"]] == [50, 80, 100]
        assert all(a["delivered"] for a in budget["alerts"])
    from django.test import Client

    from tests.factories import MembershipFactory, UserFactory

    member = MembershipFactory(team=Team.objects.get(name="alerted"), user=UserFactory())
    client = Client()
    client.force_login(member.user)
    panel = client.get("/dashboards/panel/spend").content.decode()
    assert "monthly reached 80%" in panel and "monthly reached 100%" in panel
    assert Query.objects.filter(team__name="alerted").count() == 5
