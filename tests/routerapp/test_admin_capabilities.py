"""The endpoint capability flags in the admin: editable, audited, and refused where the
endpoint's engine could not pass the field through (the router would then send it requests it
cannot honour)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from routerapp.admin import ModelEndpointForm
from routerapp.models import AuditLog, ModelEndpoint

pytestmark = pytest.mark.django_db

BASE = {
    "display_name": "",
    "input_usd_per_mtok": "1",
    "output_usd_per_mtok": "2",
    "queue": "",
    "descriptors": "{}",
    "balancing": "weighted",
    "enabled": True,
}


def test_a_flag_the_engine_cannot_honour_is_a_form_error() -> None:
    form = ModelEndpointForm(
        data={
            **BASE,
            "name": "local",
            "engine": "llama_cpp",
            "engine_params": "{}",
            "supports_tools": True,
            "supports_images": True,
            "supports_json_mode": True,  # llama.cpp enforces JSON with a grammar
        }
    )
    assert not form.is_valid()
    assert "supports_tools" in form.errors and "supports_images" in form.errors
    assert "supports_json_mode" not in form.errors
    form = ModelEndpointForm(
        data={
            **BASE,
            "name": "remote",
            "engine": "openai_compat",
            "engine_params": '{"base_url": "http://127.0.0.1:9/v1", "model": "m"}',
            "supports_tools": True,
            "supports_json_schema": True,
        }
    )
    assert form.is_valid(), form.errors


def test_flags_are_edited_and_audited_in_the_admin() -> None:
    endpoint = ModelEndpoint.objects.create(
        name="remote",
        engine="openai_compat",
        engine_params={"base_url": "http://127.0.0.1:9/v1", "model": "m"},
    )
    admin = get_user_model().objects.create_superuser("root", "r@example.com", "pw-123456789")
    client = Client()
    client.force_login(admin)
    page = client.get(f"/admin/routerapp/modelendpoint/{endpoint.pk}/change/").content.decode()
    assert "supports_tools" in page and "supports_images" in page
    r = client.post(
        f"/admin/routerapp/modelendpoint/{endpoint.pk}/change/",
        {
            **BASE,
            "name": "remote",
            "engine": "openai_compat",
            "engine_params": '{"base_url": "http://127.0.0.1:9/v1", "model": "m"}',
            "supports_tools": "on",
            "supports_logprobs": "on",
            # The deployments inline's (empty) management form.
            "deployments-TOTAL_FORMS": "0",
            "deployments-INITIAL_FORMS": "0",
            "deployments-MIN_NUM_FORMS": "0",
            "deployments-MAX_NUM_FORMS": "1000",
        },
    )
    assert r.status_code == 302, r.content.decode()[-2000:]
    endpoint.refresh_from_db()
    assert endpoint.supports_tools and not endpoint.supports_json_mode
    change = AuditLog.objects.get(object_type="modelendpoint", object_id=str(endpoint.pk))
    assert change.changes["supports_tools"] == [False, True]
