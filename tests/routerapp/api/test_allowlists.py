"""Who may call what, over HTTP: per-key and per-team allowlists narrow what the router
considers, a request naming a forbidden model gets 403 naming it, /v1/models lists only what the
key may call, the allowlists are managed through the API (audited, a key cannot grant more than
it holds) and the playground offers only what the team may use."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from routerapp.models import AuditLog, ModelEndpoint, Query, Team
from tests.routerapp.api.conftest import make_configuration

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture
def two_models(live_server, upstream_url):  # type: ignore[no-untyped-def]
    """`cheap` and `dear` on the same upstream; without an allowlist `auto` picks `cheap`."""
    make_configuration(upstream_url, name="cheap")
    make_configuration(upstream_url, name="dear")
    ModelEndpoint.objects.filter(name="dear").update(
        input_usd_per_mtok=Decimal("30"), output_usd_per_mtok=Decimal("60")
    )
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        yield http


def _chat(http: httpx.Client, caller, model: str = "auto") -> httpx.Response:  # type: ignore[no-untyped-def]
    return http.post(
        "/v1/chat/completions", json={"model": model, "messages": QUESTION}, headers=caller.auth
    )


def _model_ids(http: httpx.Client, caller) -> set[str]:  # type: ignore[no-untyped-def]
    r = http.get("/v1/models", headers=caller.auth)
    assert r.status_code == 200, r.text
    return {m["id"] for m in r.json()["data"]}


def test_key_allowlist_narrows_routing_and_forbids_by_name(two_models, make_caller) -> None:  # type: ignore[no-untyped-def]
    http = two_models
    free = make_caller("alpha")
    assert _chat(http, free).json()["costpass"]["model"] == "cheap"
    limited = make_caller("alpha", allowed_models=["dear"])
    # The router only considers what the key may use, although `cheap` costs less.
    r = _chat(http, limited)
    assert r.status_code == 200, r.text
    assert r.json()["costpass"]["model"] == "dear"
    for model in ("cheap", "cheap/single-fake"):
        r = _chat(http, limited, model=model)
        assert r.status_code == 403, r.text
        error = r.json()["error"]
        assert error["code"] == "model_not_allowed" and repr(model) in error["message"]
        assert error["type"] == "permission_error"
    # A model that does not exist is still "not found", not a 403.
    assert _chat(http, limited, model="nope").status_code == 404
    assert Query.objects.filter(api_key=limited.key).count() == 1  # nothing written on 403
    assert _model_ids(http, limited) == {"auto", "dear", "dear/single-fake"}
    assert {"cheap", "cheap/single-fake", "dear"} <= _model_ids(http, free)
    auto = next(
        m for m in http.get("/v1/models", headers=limited.auth).json()["data"] if m["id"] == "auto"
    )
    assert auto["costpass"]["configurations"] == ["dear/single-fake"]
    assert http.get("/v1/models/cheap", headers=limited.auth).status_code == 404
    assert http.get("/v1/models/dear", headers=limited.auth).status_code == 200


def test_team_allowlist_applies_to_every_key_with_patterns(two_models, make_caller) -> None:  # type: ignore[no-untyped-def]
    http = two_models
    caller = make_caller("beta")
    Team.objects.filter(name="beta").update(allowed_models=["de*"])
    assert _chat(http, caller).json()["costpass"]["model"] == "dear"
    assert _chat(http, caller, model="cheap").status_code == 403
    assert _model_ids(http, caller) == {"auto", "dear", "dear/single-fake"}
    # A key list inside the team's: both must allow it; nothing left is a 403 for `auto`.
    narrow = make_caller("beta", allowed_models=["cheap"])
    r = _chat(http, narrow)
    assert r.status_code == 403 and "any enabled configuration" in r.json()["error"]["message"]
    assert _model_ids(http, narrow) == {"auto"}
    # Another team is not limited.
    assert _chat(http, make_caller("gamma")).json()["costpass"]["model"] == "cheap"


def test_allowlists_through_the_keys_api_are_audited_and_bounded(two_models, make_caller) -> None:  # type: ignore[no-untyped-def]
    http = two_models
    admin = make_caller("alpha", scopes=["admin", "query"])
    r = http.post(
        "/api/v1/keys",
        json={"name": "dear-only", "scopes": ["query"], "allowed_models": ["dear"]},
        headers=admin.auth,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["allowed_models"] == ["dear"]
    key_auth = {"Authorization": f"Bearer {created['key']}"}
    r = http.post(
        "/v1/chat/completions", json={"model": "cheap", "messages": QUESTION}, headers=key_auth
    )
    assert r.status_code == 403
    r = http.patch(
        f"/api/v1/keys/{created['id']}", json={"allowed_models": ["cheap"]}, headers=admin.auth
    )
    assert r.status_code == 200 and r.json()["allowed_models"] == ["cheap"]
    r = http.post(
        "/v1/chat/completions", json={"model": "cheap", "messages": QUESTION}, headers=key_auth
    )
    assert r.status_code == 200, r.text
    audit = AuditLog.objects.filter(object_type="apikey", action="update").get()
    assert audit.changes == {"allowed_models": [["dear"], ["cheap"]]}
    assert audit.actor_api_key_id == admin.key.pk
    # A key allowed only `dear` cannot mint or widen a key beyond `dear`.
    bounded = make_caller("alpha", scopes=["admin", "query"], allowed_models=["dear"])
    for body in ({"name": "wide"}, {"name": "wide", "allowed_models": ["cheap"]}):
        r = http.post("/api/v1/keys", json={**body, "scopes": ["query"]}, headers=bounded.auth)
        assert r.status_code == 400 and r.json()["error"]["param"] == "allowed_models"
    r = http.patch(
        f"/api/v1/keys/{created['id']}", json={"allowed_models": []}, headers=bounded.auth
    )
    assert r.status_code == 400
    r = http.patch(
        f"/api/v1/keys/{created['id']}", json={"allowed_models": "dear"}, headers=admin.auth
    )
    assert r.status_code == 400
