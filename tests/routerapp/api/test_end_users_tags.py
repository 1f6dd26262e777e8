"""End users and tags over HTTP: OpenAI's `user` field and the x-costpass-tags header are stored
on each query; usage groups and filters by them (JSON and CSV); a budget can cover one end user;
a bad header is a 400 naming it with nothing written."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import httpx
import pytest

from routerapp.models import Query, QueryTag
from tests.routerapp.api.conftest import make_configuration

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture
def api(live_server, upstream_url, make_caller):  # type: ignore[no-untyped-def]
    make_configuration(upstream_url)
    caller = make_caller("tagged", scopes=["query", "usage", "admin"])
    with httpx.Client(base_url=live_server.url, timeout=60, headers=caller.auth) as http:
        yield http


def _chat(http: httpx.Client, user: str | None, tags: str | None) -> httpx.Response:
    body: dict = {"model": "auto", "messages": QUESTION}
    if user is not None:
        body["user"] = user
    headers = {"x-costpass-tags": tags} if tags is not None else {}
    return http.post("/v1/chat/completions", json=body, headers=headers)


def test_user_and_tags_are_stored_grouped_and_filtered(api) -> None:  # type: ignore[no-untyped-def]
    r = _chat(api, "alice", "search, env=prod, search")
    assert r.status_code == 200, r.text
    assert r.json()["costpass"]["tags"] == ["search", "env=prod"]
    assert _chat(api, "bob", "search").status_code == 200
    assert _chat(api, None, None).status_code == 200
    r = api.post(
        "/api/v1/queries",
        json={"prompt": "3+3?", "user": "carol"},
        headers={"x-costpass-tags": "batch"},
    )
    assert r.status_code == 202, r.text
    assert r.json()["end_user"] == "carol" and r.json()["tags"] == ["batch"]
    alice = Query.objects.get(end_user="alice")
    assert alice.tags == ["search", "env=prod"]
    assert sorted(QueryTag.objects.filter(query=alice).values_list("tag", flat=True)) == [
        "env=prod",
        "search",
    ]
    chat = Query.objects.filter(source=Query.Source.CHAT)

    def cost(**filters: object) -> str:
        total = sum((q.cost_usd for q in chat.filter(**filters)), Decimal(0))
        return str(total)

    by_tag = api.get("/api/v1/usage", params={"group_by": "tag"}).json()
    groups = {g["key"]: g for g in by_tag["groups"]}
    assert groups["search"]["queries"] == 2
    assert Decimal(groups["search"]["cost_usd"]) == Decimal(cost(end_user__in=["alice", "bob"]))
    assert groups["env=prod"]["queries"] == 1 and groups["batch"]["queries"] == 1
    assert groups[""]["queries"] == 1  # the untagged one
    by_user = api.get("/api/v1/usage", params={"group_by": "user"}).json()
    users = {g["key"]: g["queries"] for g in by_user["groups"]}
    assert users == {"alice": 1, "bob": 1, "carol": 1, "": 1}
    only = api.get("/api/v1/usage", params={"tag": "search", "user": "bob"}).json()
    assert only["totals"]["queries"] == 1
    assert Decimal(only["totals"]["cost_usd"]) == Decimal(cost(end_user="bob"))
    assert only["filters"] == {"user": "bob", "tag": "search"}
    assert api.get("/api/v1/usage", params={"tag": "nope"}).json()["totals"]["queries"] == 0
    # CSV for spreadsheets and chargeback: one row per group.
    r = api.get("/api/v1/usage", params={"group_by": "user", "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {row["user"]: int(row["queries"]) for row in rows} == users
    assert Decimal(next(row for row in rows if row["user"] == "alice")["cost_usd"]) == Decimal(
        cost(end_user="alice")
    )
    r = api.get("/api/v1/usage", params={"tag": "search", "format": "csv"})
    assert list(csv.DictReader(io.StringIO(r.text)))[0]["queries"] == "2"


@pytest.mark.parametrize(
    "header", [",".join(f"t{i}" for i in range(11)), "ok, bad\u0007tag", "x" * 65]
)
def test_bad_tags_are_a_400_naming_the_header(api, header: str) -> None:  # type: ignore[no-untyped-def]
    r = _chat(api, "alice", header)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "x-costpass-tags"
    assert not Query.objects.exists() and not QueryTag.objects.exists()


def test_a_budget_can_cover_one_end_user(api) -> None:  # type: ignore[no-untyped-def]
    r = api.post(
        "/api/v1/budgets",
        json={"name": "alice-cap", "limit_usd": "0.000000001", "end_user": "alice"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["end_user"] == "alice"
    r = _chat(api, "alice", None)
    assert r.status_code == 402, r.text
    assert "alice-cap" in r.json()["error"]["message"]
    r = api.post("/api/v1/queries", json={"prompt": "3+3?", "user": "alice"})
    assert r.status_code == 402
    assert _chat(api, "bob", None).status_code == 200
    assert _chat(api, None, None).status_code == 200
    assert not Query.objects.filter(end_user="alice").exists()


def test_dashboard_panels_by_end_user_and_tag(api) -> None:  # type: ignore[no-untyped-def]
    from django.test import Client

    from routerapp.models import Team
    from tests.factories import MembershipFactory, UserFactory

    assert _chat(api, "alice", "search").status_code == 200
    assert _chat(api, "alice", "search, env=prod").status_code == 200
    assert _chat(api, "bob", None).status_code == 200
    member = MembershipFactory(team=Team.objects.get(name="tagged"), user=UserFactory())
    client = Client()
    client.force_login(member.user)
    page = client.get("/dashboards/panel/end-users").content.decode()
    assert "alice" in page and "bob" in page
    r = client.get("/dashboards/panel/tags", {"format": "csv"})
    rows = {row["tag"]: row for row in csv.DictReader(io.StringIO(r.content.decode()))}
    assert rows["search"]["queries"] == "2" and rows["env=prod"]["queries"] == "1"
    assert rows["(untagged)"]["queries"] == "1"
    alice_usd = sum(q.cost_usd for q in Query.objects.filter(end_user="alice"))
    r = client.get("/dashboards/panel/end-users", {"format": "csv"})
    users = {row["end user"]: row for row in csv.DictReader(io.StringIO(r.content.decode()))}
    assert users["alice"]["queries"] == "2" and alice_usd > 0
