"""The cold-start page: propose a mapping, confirm it, see what the prior was trained on."""

from __future__ import annotations

import pytest
from django.test import Client

from routerapp.models import RouterVersion, TeamMembership
from routerapp.services.routers import router_version_fit
from tests.routerapp.services.test_coldstart import install_endpoints, write_public_suite

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(settings, tmp_path):  # type: ignore[no-untyped-def]
    from django.contrib.auth import get_user_model

    settings.SHARED_DATA_DIR = str(tmp_path)
    source = write_public_suite(tmp_path)
    install_endpoints()
    user = get_user_model().objects.get(username="admin")
    client = Client()
    client.force_login(user)
    return client, source, user


def _mapping_post(source: str, **models: str) -> dict[str, str]:
    from routerapp.models import ModelEndpoint

    data = {"source": source, "name": "seeded", "activate": "on"}
    for ep in ModelEndpoint.objects.all():
        data[f"map__{ep.pk}"] = models.get(ep.name.replace("-", "_").replace(".", "_"), "")
    return data


def test_seed_page_proposes_then_seeds_and_the_version_page_names_the_prior(admin_client) -> None:  # type: ignore[no-untyped-def]
    client, source, _ = admin_client
    page = client.get("/routers/").content.decode()
    assert 'id="seed-link"' in page
    html = client.get("/routers/seed", {"source": source}).content.decode()
    assert 'data-endpoint="gpt-4" data-how="alias"' in html
    assert 'data-endpoint="claude-instant-v1" data-how="exact"' in html
    assert 'data-endpoint="llama-3.1-8b-local" data-how="nearest"' in html
    assert '<option value="gpt-4-1106-preview" selected>' in html
    assert "same family (llama)" in html
    data = _mapping_post(
        source,
        gpt_4="gpt-4-1106-preview",
        claude_instant_v1="claude-instant-v1",
        llama_3_1_8b_local="meta/llama-2-70b-chat",
    )
    r = client.post("/routers/seed", data)
    assert r.status_code == 302
    version = RouterVersion.objects.get(name="seeded")
    assert version.trained_on["prior"]["source"] == source
    router_version_fit(version_id=version.pk)
    html = client.get(r["Location"]).content.decode()
    assert 'id="prior"' in html and f"Seeded from <code>{source}</code>" in html
    assert "<code>meta/llama-2-70b-chat</code>" in html
    assert 'data-verdict="better"' in html and 'id="active-badge"' in html
    # The online adaptation curve of the held-out prompts, on the version's page and on the
    # Routers page (for the active version).
    assert 'id="online-curve"' in html and "fig-online-curve" in html
    page = client.get("/routers/").content.decode()
    assert 'id="online-curve"' in page and f"/routers/{version.pk}/" in page


def test_bad_seed_input_is_a_form_error_and_writes_nothing(admin_client) -> None:  # type: ignore[no-untyped-def]
    client, source, user = admin_client
    r = client.get("/routers/seed", {"source": "suite:../../etc"})
    assert r.status_code == 400 and "unknown outcome source" in r.content.decode()
    # A model the source does not have is not a valid choice.
    r = client.post("/routers/seed", _mapping_post(source, gpt_4="gpt-5", claude_instant_v1="x"))
    assert r.status_code == 400 and "Select a valid choice" in r.content.decode()
    # One endpoint is no choice at all.
    r = client.post("/routers/seed", _mapping_post(source, gpt_4="gpt-4-1106-preview"))
    assert r.status_code == 400 and "fewer than two" in r.content.decode()
    # A member who is not an admin cannot seed.
    user.is_staff = user.is_superuser = False
    user.save()
    TeamMembership.objects.filter(user=user).update(role="member")
    r = client.post(
        "/routers/seed",
        _mapping_post(source, gpt_4="gpt-4-1106-preview", claude_instant_v1="claude-instant-v1"),
    )
    assert r.status_code == 400 and "Only team admins can seed" in r.content.decode()
    assert not RouterVersion.objects.exists()
