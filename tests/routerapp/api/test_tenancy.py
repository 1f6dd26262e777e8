"""Teams, keys, budgets and usage over HTTP: one team cannot see or touch another's queries,
usage, keys or budgets; key and budget changes made through the API are in the audit log, and
the audit log is visible in the admin."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import pytest
from django.contrib.auth import get_user_model

from routerapp.models import ApiKey, AuditLog, BudgetPolicy, Query
from routerapp.services.apikeys import AUTH_CACHE_S, hash_key
from tests.factories import BudgetPolicyFactory
from tests.routerapp.api.conftest import make_configuration

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture
def teams(live_server, upstream_url, make_caller):  # type: ignore[no-untyped-def]
    make_configuration(upstream_url)
    alpha, beta = make_caller("alpha"), make_caller("beta")
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        yield alpha, beta, http


def _chat(http: httpx.Client, caller, **extra) -> dict:  # type: ignore[no-untyped-def]
    r = http.post(
        "/v1/chat/completions",
        json={"model": "auto", "messages": QUESTION, **extra},
        headers=caller.auth,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_a_team_cannot_see_or_touch_another_teams_queries(teams) -> None:  # type: ignore[no-untyped-def]
    alpha, beta, http = teams
    theirs = _chat(http, alpha)["costpass"]["query_id"]
    for method, path, body in [
        ("GET", f"/api/v1/queries/{theirs}", None),
        ("POST", f"/api/v1/queries/{theirs}/cancel", None),
        ("POST", f"/api/v1/queries/{theirs}/feedback", {"correct": False}),
    ]:
        r = http.request(method, path, json=body, headers=beta.auth)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["message"] == f"no query '{theirs}'"
    query = Query.objects.get(pk=theirs)
    assert query.feedback_correct is None and not query.cancel_requested
    # The owner can.
    r = http.post(f"/api/v1/queries/{theirs}/feedback", json={"correct": True}, headers=alpha.auth)
    assert r.status_code == 200 and r.json()["graded_correct"] is True


def test_usage_counts_only_the_callers_team(teams) -> None:  # type: ignore[no-untyped-def]
    alpha, beta, http = teams
    for _ in range(3):
        _chat(http, alpha, task="arith")
    _chat(http, beta, task="other")
    mine = http.get(
        "/api/v1/usage", params={"period": "day", "group_by": "task"}, headers=alpha.auth
    ).json()
    assert mine["team"] == "alpha" and mine["totals"]["queries"] == 3
    assert [g["key"] for g in mine["groups"]] == ["arith"]
    spent = sum(q.cost_usd for q in Query.objects.filter(team=alpha.team))
    assert Decimal(mine["totals"]["cost_usd"]) == spent > 0
    theirs = http.get("/api/v1/usage", headers=beta.auth).json()
    assert theirs["totals"]["queries"] == 1
    assert [
        g["key"]
        for g in http.get("/api/v1/usage", params={"group_by": "task"}, headers=beta.auth).json()[
            "groups"
        ]
    ] == ["other"]


def test_a_team_cannot_see_or_touch_another_teams_keys(teams) -> None:  # type: ignore[no-untyped-def]
    alpha, beta, http = teams
    listed = http.get("/api/v1/keys", headers=beta.auth).json()
    assert [k["prefix"] for k in listed] == [beta.key.prefix]
    for method, path in [
        ("GET", f"/api/v1/keys/{alpha.key.pk}"),
        ("GET", f"/api/v1/keys/{alpha.key.prefix}"),
        ("POST", f"/api/v1/keys/{alpha.key.pk}/revoke"),
    ]:
        r = http.request(method, path, headers=beta.auth)
        assert r.status_code == 404, r.text
    alpha.key.refresh_from_db()
    assert alpha.key.revoked_at is None


def test_a_team_cannot_see_or_touch_another_teams_budgets(teams) -> None:  # type: ignore[no-untyped-def]
    alpha, beta, http = teams
    policy = BudgetPolicyFactory(team=alpha.team, name="alpha-monthly", limit_usd=Decimal("3"))
    assert http.get("/api/v1/budgets", headers=beta.auth).json() == []
    assert http.get(f"/api/v1/budgets/{policy.pk}", headers=beta.auth).status_code == 404
    r = http.patch(f"/api/v1/budgets/{policy.pk}", json={"limit_usd": "1000"}, headers=beta.auth)
    assert r.status_code == 404
    policy.refresh_from_db()
    assert policy.limit_usd == Decimal("3")
    # A budget cannot cover another team's key.
    r = http.post(
        "/api/v1/budgets",
        json={"name": "x", "limit_usd": "1", "api_key": alpha.key.prefix},
        headers=beta.auth,
    )
    assert r.status_code == 404


def test_keys_are_shown_once_hashed_at_rest_scoped_and_revocable(teams) -> None:  # type: ignore[no-untyped-def]
    alpha, _, http = teams
    r = http.post(
        "/api/v1/keys",
        json={"name": "ci", "scopes": ["query", "usage"], "rate_limit_rpm": 100},
        headers=alpha.auth,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    raw = created["key"]
    assert raw.startswith(created["prefix"] + "_")
    stored = ApiKey.objects.get(pk=created["id"])
    assert stored.hashed_key == hash_key(raw) and raw not in stored.hashed_key
    # Never shown again.
    again = http.get(f"/api/v1/keys/{created['id']}", headers=alpha.auth).json()
    assert "key" not in again and again["prefix"] == created["prefix"]
    assert all("key" not in k for k in http.get("/api/v1/keys", headers=alpha.auth).json())
    # The new key works for what its scopes allow, and only that.
    new = {"Authorization": f"Bearer {raw}"}
    assert http.get("/api/v1/usage", headers=new).status_code == 200
    r = http.get("/api/v1/keys", headers=new)
    assert r.status_code == 403 and "'admin' scope" in r.json()["error"]["message"]
    # A scoped key cannot mint a key with more scopes than it holds.
    admin_only = http.post(
        "/api/v1/keys", json={"name": "adm", "scopes": ["admin"]}, headers=alpha.auth
    ).json()
    r = http.post(
        "/api/v1/keys",
        json={"name": "escalate", "scopes": ["admin", "query"]},
        headers={"Authorization": f"Bearer {admin_only['key']}"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "scopes"
    # Revoked: 401 from then on; a key cannot revoke itself.
    r = http.post(f"/api/v1/keys/{created['id']}/revoke", headers=alpha.auth)
    assert r.status_code == 200 and r.json()["revoked_at"]
    assert http.get("/api/v1/usage", headers=new).status_code == 401
    r = http.post(f"/api/v1/keys/{alpha.key.pk}/revoke", headers=alpha.auth)
    assert r.status_code == 409


def test_expired_key_is_401(teams) -> None:  # type: ignore[no-untyped-def]
    alpha, _, http = teams
    r = http.post(
        "/api/v1/keys",
        json={"name": "short", "expires_at": "2000-01-01T00:00:00Z"},
        headers=alpha.auth,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "expires_at"
    key = ApiKey.objects.get(pk=alpha.key.pk)
    from django.utils import timezone

    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now())
    # A change made outside the keys service (here SQL) reaches each process's key cache
    # within AUTH_CACHE_S.
    time.sleep(AUTH_CACHE_S + 0.05)
    r = http.get("/v1/models", headers=alpha.auth)
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


def test_budget_changes_through_the_api_are_audited_with_old_and_new_values(  # type: ignore[no-untyped-def]
    teams, client
) -> None:
    alpha, _, http = teams
    r = http.post(
        "/api/v1/budgets",
        json={"name": "monthly", "limit_usd": "2.5", "mode": "hard_downgrade"},
        headers=alpha.auth,
    )
    assert r.status_code == 201, r.text
    budget = r.json()
    assert budget["left_usd"] == "2.500000000000" and budget["mode"] == "hard_downgrade"
    r = http.patch(
        f"/api/v1/budgets/{budget['id']}",
        json={"limit_usd": "4", "mode": "soft"},
        headers=alpha.auth,
    )
    assert r.status_code == 200 and r.json()["limit_usd"] == "4.000000000000"
    entries = AuditLog.objects.filter(object_type="budgetpolicy", object_id=str(budget["id"]))
    created, updated = entries.get(action="create"), entries.get(action="update")
    assert created.actor_api_key_id == alpha.key.pk and created.team_id == alpha.team.pk
    assert updated.changes == {
        "limit_usd": ["2.500000000000", "4.000000000000"],
        "mode": ["hard_downgrade", "soft"],
    }
    assert BudgetPolicy.objects.get(pk=budget["id"]).mode == "soft"
    key = http.post("/api/v1/keys", json={"name": "audited"}, headers=alpha.auth).json()
    http.post(f"/api/v1/keys/{key['id']}/revoke", headers=alpha.auth)
    actions = set(
        AuditLog.objects.filter(object_type="apikey", object_id=str(key["id"])).values_list(
            "action", "actor_api_key"
        )
    )
    assert actions == {("create", alpha.key.pk), ("revoke", alpha.key.pk)}
    # Visible in the admin, old and new values included.
    admin = get_user_model().objects.create_superuser("root", "r@example.com", "pw-123456789")
    client.force_login(admin)
    page = client.get("/admin/routerapp/auditlog/").content.decode()
    assert "monthly" in page and "4.000000000000" in page and "audited" in page
    detail = client.get(f"/admin/routerapp/auditlog/{updated.pk}/change/")
    assert detail.status_code == 200 and "hard_downgrade" in detail.content.decode()


def test_usage_groups_and_bad_parameters(teams) -> None:  # type: ignore[no-untyped-def]
    alpha, _, http = teams
    _chat(http, alpha, task="a")
    _chat(http, alpha, task="b")
    for group_by, expected in [
        ("model", ["fake"]),
        ("strategy", ["single"]),
        ("configuration", ["fake/single-fake"]),
        ("key", [alpha.key.prefix]),
    ]:
        body = http.get(
            "/api/v1/usage", params={"group_by": group_by, "period": "all"}, headers=alpha.auth
        ).json()
        assert [g["key"] for g in body["groups"]] == expected
        assert body["groups"][0]["queries"] == 2 and body["groups"][0]["total_tokens"] > 0
    by_task = http.get("/api/v1/usage", params={"group_by": "task"}, headers=alpha.auth).json()
    assert sorted(g["key"] for g in by_task["groups"]) == ["a", "b"]
    assert sum(Decimal(g["cost_usd"]) for g in by_task["groups"]) == Decimal(
        by_task["totals"]["cost_usd"]
    )
    # OpenAI's `user` field is stored on the query and groups the usage ("" = none given).
    _chat(http, alpha, user="alice")
    _chat(http, alpha, user="alice")
    _chat(http, alpha, user="bob")
    by_user = http.get(
        "/api/v1/usage", params={"group_by": "user", "period": "all"}, headers=alpha.auth
    ).json()
    counts = {g["key"]: g["queries"] for g in by_user["groups"]}
    assert counts == {"alice": 2, "bob": 1, "": 2}
    assert Query.objects.filter(end_user="alice").count() == 2
    r = http.get("/api/v1/usage", params={"period": "year"}, headers=alpha.auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "period"
    r = http.get("/api/v1/usage", params={"group_by": "colour"}, headers=alpha.auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "group_by"
    r = http.get("/api/v1/usage", params={"start": "2030-01-01T00:00:00Z"}, headers=alpha.auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "start"
