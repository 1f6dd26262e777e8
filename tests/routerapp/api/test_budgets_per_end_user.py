"""Budgets per end user: one policy gives each end user (OpenAI's `user`) of a team or key their
own limit per period, with the same guarantees as any hard budget. Proved over real HTTP against
the production server (several processes, many threads) and the real database: concurrent
requests of one user never overspend that user's share, another user's requests are not
charged to it, and requests that name no user share one window."""

from __future__ import annotations

import csv
import io
import threading
from decimal import Decimal

import httpx
import pytest

from routerapp.models import BudgetAlert, BudgetPolicy, BudgetUsage, Query
from routerapp.services.pricing import prompt_token_bound, worst_case_cost
from tests.factories import ConfigurationFactory
from tests.routerapp.api.conftest import make_configuration, start_gunicorn, stop

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = "What is 2+2?"
MESSAGES = [{"role": "user", "content": PROMPT}]
PER_USER = 20  # requests per end user, all at once
COVERED = 4  # what each end user's budget covers
PARKED_QUEUE = "test.parked.per-user"  # no worker reads it: jobs stay reserved


def _fire(url: str, path: str, bodies: list[dict], auth: dict) -> list[httpx.Response]:
    """Send every body at the same instant, one thread each; return every response."""
    barrier = threading.Barrier(len(bodies))
    responses: list[httpx.Response | BaseException] = [RuntimeError("not sent")] * len(bodies)

    def one(i: int) -> None:
        with httpx.Client(base_url=url, headers=auth, timeout=120) as http:
            barrier.wait()
            try:
                responses[i] = http.post(path, json=bodies[i])
            except httpx.HTTPError as exc:
                responses[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lost = [r for r in responses if not isinstance(r, httpx.Response)]
    assert not lost, f"requests without an answer: {lost[:3]}"
    return responses  # type: ignore[return-value]


def _create_policy(url: str, auth: dict, **fields: object) -> dict:
    r = httpx.post(f"{url}/api/v1/budgets", json=fields, headers=auth, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()


def test_concurrent_jobs_of_each_end_user_reserve_within_their_own_share(  # type: ignore[no-untyped-def]
    tmp_path, make_caller
) -> None:
    config = ConfigurationFactory()
    config.endpoint.queue = PARKED_QUEUE
    config.endpoint.save()
    caller = make_caller("per-user", scopes=["query", "usage", "admin"])
    per_query = worst_case_cost(config, prompt_token_bound(PROMPT, None))
    limit = per_query * COVERED
    server = start_gunicorn(tmp_path, {}, workers=2, threads=16)
    try:
        created = _create_policy(
            server.url,
            caller.auth,
            name="each-user",
            limit_usd=str(limit),
            per_end_user=True,
            period="day",
        )
        assert created["per_end_user"] is True and created["end_users"] == []
        bodies = [
            {"prompt": PROMPT, **({"user": user} if user else {})}
            for user in ["alice", "bob", None]
            for _ in range(PER_USER)
        ]
        responses = _fire(server.url, "/api/v1/queries", bodies, caller.auth)
        status = httpx.get(
            f"{server.url}/api/v1/budgets/{created['id']}", headers=caller.auth, timeout=30
        ).json()
    finally:
        stop(server.proc)
        from workers.celery import app

        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(PARKED_QUEUE)
    policy = BudgetPolicy.objects.get(pk=created["id"])
    for user, group in (
        ("alice", responses[:PER_USER]),
        ("bob", responses[PER_USER : 2 * PER_USER]),
        ("", responses[2 * PER_USER :]),
    ):
        accepted = [r for r in group if r.status_code == 202]
        rejected = [r for r in group if r.status_code == 402]
        assert len(accepted) + len(rejected) == PER_USER, {r.status_code for r in group}
        # Exactly what the user's own share covers, whatever the others did meanwhile.
        assert len(accepted) == COVERED, user
        window = BudgetUsage.objects.get(policy=policy, end_user=user)
        assert window.reserved_usd == per_query * COVERED
        assert window.spent_usd + window.reserved_usd <= limit
        who = f"end user '{user}'" if user else "requests naming no end user"
        for r in rejected:
            error = r.json()["error"]
            assert error["code"] == "budget_exceeded"
            assert f"budget 'each-user' (per day, {who}" in error["message"], error["message"]
        queries = Query.objects.filter(team=caller.team, end_user=user)
        assert sorted(str(q.pk) for q in queries) == sorted(r.json()["id"] for r in accepted)
        assert sum(q.reserved_usd for q in queries) == window.reserved_usd
        assert all(q.budget_windows == [window.pk] for q in queries)
    # The API lists each user's window; the figures above are the one with the least left.
    assert {u["end_user"] for u in status["end_users"]} == {"alice", "bob", ""}
    assert status["left_usd"] == "0E-12" or Decimal(status["left_usd"]) == 0


def test_concurrent_chat_calls_settle_within_each_end_users_share(  # type: ignore[no-untyped-def]
    tmp_path, make_caller, upstream_url
) -> None:
    """Through the OpenAI endpoint, served inline: each user's queries reserve, run and settle
    in that user's window while the others do too; a team budget above holds the sum."""
    config = make_configuration(upstream_url)
    caller = make_caller("per-user-chat", scopes=["query", "usage", "admin"])
    per_query = worst_case_cost(config, prompt_token_bound("", MESSAGES))
    limit = per_query * COVERED
    per_user = BudgetPolicy.objects.create(
        team=caller.team,
        name="each-user",
        limit_usd=limit,
        per_end_user=True,
        alert_thresholds=[10],
    )
    team_cap = BudgetPolicy.objects.create(team=caller.team, name="team", limit_usd=limit * 10)
    server = start_gunicorn(tmp_path, {}, workers=2, threads=16)
    try:
        bodies = [
            {"model": "auto", "messages": MESSAGES, "user": user}
            for user in ("alice", "bob")
            for _ in range(PER_USER)
        ]
        responses = _fire(server.url, "/v1/chat/completions", bodies, caller.auth)
    finally:
        stop(server.proc)
    spent_total = Decimal(0)
    for user, group in (("alice", responses[:PER_USER]), ("bob", responses[PER_USER:])):
        ok = [r for r in group if r.status_code == 200]
        rejected = [r for r in group if r.status_code == 402]
        assert len(ok) + len(rejected) == PER_USER, {r.status_code for r in group}
        assert len(ok) >= COVERED  # real costs are below the worst case: room frees up
        assert all(f"end user '{user}'" in r.json()["error"]["message"] for r in rejected)
        window = BudgetUsage.objects.get(policy=per_user, end_user=user)
        assert window.reserved_usd == 0  # every query settled
        assert window.spent_usd <= limit
        queries = list(Query.objects.filter(team=caller.team, end_user=user))
        assert len(queries) == len(ok)
        assert sum(q.cost_usd for q in queries) == window.spent_usd
        assert window.spent_usd == sum(Decimal(r.headers["x-costpass-cost-usd"]) for r in ok)
        spent_total += window.spent_usd
        print(
            f"\nper-end-user chat proof: {user}: {len(ok)} x 200, {len(rejected)} x 402, "
            f"spent ${window.spent_usd} of ${limit}"
        )
        # Each user's window crossed 10 % on its own (at least COVERED queries ran): one alert each, naming the user.
        alert = BudgetAlert.objects.get(policy=per_user, end_user=user, threshold=10)
        assert alert.spent_usd * 10 >= limit
    team_window = BudgetUsage.objects.get(policy=team_cap)
    assert team_window.spent_usd == spent_total and team_window.reserved_usd == 0


def test_per_end_user_budget_in_api_usage_and_dashboard(  # type: ignore[no-untyped-def]
    live_server, make_caller, upstream_url
) -> None:
    from django.test import Client

    from tests.factories import MembershipFactory, UserFactory

    make_configuration(upstream_url)
    caller = make_caller("per-user-ui", scopes=["query", "usage", "admin"])
    with httpx.Client(base_url=live_server.url, timeout=60, headers=caller.auth) as api:
        # One end user or each end user, not both: a 400 naming the field, nothing written.
        r = api.post(
            "/api/v1/budgets",
            json={"name": "x", "limit_usd": "1", "per_end_user": True, "end_user": "alice"},
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "per_end_user"
        r = api.post("/api/v1/budgets", json={"name": "x", "limit_usd": "1", "per_end_user": 1})
        assert r.status_code == 400, r.text
        assert not BudgetPolicy.objects.filter(team=caller.team).exists()
        created = _create_policy(
            live_server.url, caller.auth, name="each", limit_usd="1", per_end_user=True
        )
        for user in ("alice", "alice", "bob"):
            body = {"model": "auto", "messages": MESSAGES, "user": user}
            assert api.post("/v1/chat/completions", json=body).status_code == 200
        status = api.get(f"/api/v1/budgets/{created['id']}").json()
        usage = api.get("/api/v1/usage", params={"group_by": "user"}).json()
    spent = {u: sum(q.cost_usd for q in Query.objects.filter(end_user=u)) for u in ("alice", "bob")}
    assert spent["alice"] > spent["bob"] > 0
    assert [(u["end_user"], Decimal(u["spent_usd"])) for u in status["end_users"]] == [
        ("alice", spent["alice"]),
        ("bob", spent["bob"]),
    ]
    assert Decimal(status["left_usd"]) == 1 - spent["alice"]
    groups = {g["key"]: g for g in usage["groups"]}
    assert Decimal(groups["alice"]["cost_usd"]) == spent["alice"]

    member = MembershipFactory(team=caller.team, user=UserFactory())
    client = Client()
    client.force_login(member.user)
    page = client.get("/dashboards/panel/end-users").content.decode()
    assert "budget left this period" in page and "each" in page
    page = client.get("/dashboards/panel/spend").content.decode()
    assert "Per-end-user budgets (each) are shown per user" in page
    r = client.get("/dashboards/panel/end-users", {"format": "csv"})
    rows = {row["end user"]: row for row in csv.DictReader(io.StringIO(r.content.decode()))}
    assert Decimal(rows["alice"]["budget left this period"].lstrip("$")) == pytest.approx(
        1 - spent["alice"], abs=Decimal("0.0001")
    )

    # The admin lists the policy and each user's window.
    from django.contrib.auth import get_user_model

    admin_user = get_user_model().objects.create_superuser("root", "r@example.com", "pw")
    client.force_login(admin_user)
    page = client.get(f"/admin/routerapp/budgetpolicy/{created['id']}/change/").content.decode()
    assert "alice" in page and "bob" in page and "per_end_user" in page
    # Both "each end user" and one end user in the admin form: a form error, nothing saved.
    r = client.post(
        "/admin/routerapp/budgetpolicy/add/",
        {
            "team": caller.team.pk,
            "name": "both",
            "end_user": "alice",
            "per_end_user": "on",
            "period": "month",
            "limit_usd": "1",
            "mode": "hard_reject",
            "enabled": "on",
            "alert_thresholds": "[]",
            "usage-TOTAL_FORMS": "0",
            "usage-INITIAL_FORMS": "0",
        },
    )
    assert r.status_code == 200
    assert "either each end user or one end user" in r.content.decode()
    assert not BudgetPolicy.objects.filter(name="both").exists()
