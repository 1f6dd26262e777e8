"""Management commands: bootstrap is idempotent, create_api_key prints the key last."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from routerapp.models import ApiKey, Configuration, ModelEndpoint, Team
from routerapp.services.apikeys import api_key_authenticate

pytestmark = pytest.mark.django_db


def test_bootstrap_is_idempotent(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings.VAR_DIR = tmp_path
    out = StringIO()
    call_command("bootstrap", stdout=out)
    assert "created team demo" in out.getvalue()
    assert "admin login: admin /" in out.getvalue()
    assert (tmp_path / "admin-password.txt").stat().st_mode & 0o077 == 0
    counts = (Team.objects.count(), ModelEndpoint.objects.count(), Configuration.objects.count())
    out = StringIO()
    call_command("bootstrap", stdout=out)
    assert "nothing to do" in out.getvalue()
    assert counts == (
        Team.objects.count(),
        ModelEndpoint.objects.count(),
        Configuration.objects.count(),
    )
    endpoint = ModelEndpoint.objects.get(name="smollm2-135m")
    assert endpoint.engine == "llama_cpp" and endpoint.input_usd_per_mtok > 0


def test_create_api_key_prints_the_key_alone_on_the_last_line(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings.VAR_DIR = tmp_path
    call_command("bootstrap", stdout=StringIO())
    out = StringIO()
    call_command("create_api_key", "--team", "demo", stdout=out, stderr=StringIO())
    raw = out.getvalue().strip().splitlines()[-1]
    key = api_key_authenticate(raw)
    assert key is not None and key.team.name == "demo"
    assert raw.startswith(key.prefix + "_")
    assert ApiKey.objects.get().hashed_key != raw  # only the hash is stored
    with pytest.raises(CommandError, match="no team named 'nope'"):
        call_command("create_api_key", "--team", "nope")
