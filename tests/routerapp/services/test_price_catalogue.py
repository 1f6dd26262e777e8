"""`manage.py import_prices`: LiteLLM's price map and the repository's CSV, from a file or a
local HTTP server; a dry-run diff first, `--apply` writes with one audit row per endpoint."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from routerapp.models import AuditLog, ModelEndpoint

pytestmark = pytest.mark.django_db

LITELLM = {
    "sample_spec": {"input_cost_per_token": 0.0, "mode": "one of: chat, embedding"},
    "gpt-4o": {
        "input_cost_per_token": 2.5e-06,
        "output_cost_per_token": 1e-05,
        "cache_read_input_token_cost": 1.25e-06,
        "litellm_provider": "openai",
        "max_input_tokens": 128000,
        "max_output_tokens": 16384,
        "max_tokens": 16384,
        "mode": "chat",
    },
    "o3-mini": {
        "input_cost_per_token": 1.1e-06,
        "output_cost_per_token": 4.4e-06,
        "output_cost_per_reasoning_token": 5.5e-06,
        "cache_read_input_token_cost": 5.5e-07,
        "litellm_provider": "openai",
        "max_input_tokens": 200000,
        "max_output_tokens": 100000,
        "mode": "chat",
    },
    "dall-e-3": {
        "litellm_provider": "openai",
        "mode": "image_generation",
        "output_cost_per_image": 0.04,
    },
}


def _endpoint(name: str, model: str = "", **fields: object) -> ModelEndpoint:
    return ModelEndpoint.objects.create(
        name=name,
        engine=ModelEndpoint.Engine.OPENAI_COMPAT,
        engine_params={"base_url": "http://127.0.0.1:9/v1", "model": model or name},
        input_usd_per_mtok=Decimal("1"),
        output_usd_per_mtok=Decimal("2"),
        **fields,
    )


@pytest.fixture
def litellm_file(tmp_path: Path) -> Path:
    path = tmp_path / "model_prices_and_context_window.json"
    path.write_text(json.dumps(LITELLM))
    return path


def _run(*args: str) -> str:
    out = StringIO()
    call_command("import_prices", *args, stdout=out)
    return out.getvalue()


def test_dry_run_shows_the_diff_and_writes_nothing(litellm_file: Path) -> None:
    _endpoint("gpt4o", model="openai/gpt-4o")  # matched by its upstream model, prefix dropped
    _endpoint("mini", price_key="o3-mini")  # matched by its explicit catalogue name
    _endpoint("local-llama")
    out = _run(str(litellm_file))
    assert "~ gpt4o  (catalogue: gpt-4o)" in out
    assert "input_usd_per_mtok: 1.000000 -> 2.500000" in out
    assert "cached_input_usd_per_mtok: - -> 1.250000" in out
    assert "context_window: - -> 128000" in out
    assert "reasoning_usd_per_mtok: - -> 5.500000" in out
    assert "? not in the catalogue: local-llama" in out
    assert "dry run: 2 endpoint(s) would change" in out
    assert ModelEndpoint.objects.get(name="gpt4o").input_usd_per_mtok == Decimal("1")
    assert not AuditLog.objects.exists()


def test_apply_updates_prices_with_one_audit_row_each(litellm_file: Path) -> None:
    _endpoint("gpt-4o")
    _endpoint("mini", price_key="o3-mini")
    out = _run(str(litellm_file), "--apply")
    assert "updated 2 endpoint(s)" in out
    gpt = ModelEndpoint.objects.get(name="gpt-4o")
    assert (gpt.input_usd_per_mtok, gpt.output_usd_per_mtok) == (Decimal("2.5"), Decimal("10"))
    assert gpt.cached_input_usd_per_mtok == Decimal("1.25") and gpt.reasoning_usd_per_mtok is None
    assert (gpt.context_window, gpt.max_output_tokens) == (128000, 16384)
    assert gpt.price_source == "litellm gpt-4o (openai)"
    mini = ModelEndpoint.objects.get(name="mini")
    assert mini.reasoning_usd_per_mtok == Decimal("5.5")
    audit = AuditLog.objects.get(object_type="modelendpoint", object_id=str(gpt.pk))
    assert audit.action == "update"
    assert audit.changes["input_usd_per_mtok"] == ["1.000000", "2.500000"]
    assert audit.changes["cached_input_usd_per_mtok"] == [None, "1.250000"]
    assert AuditLog.objects.count() == 2
    # A second import of the same catalogue changes nothing and writes no audit row.
    assert "nothing to change" in _run(str(litellm_file), "--apply")
    assert AuditLog.objects.count() == 2


def test_repository_csv_and_extra_columns(tmp_path: Path) -> None:
    shared = Path(settings.SHARED_DATA_DIR) / "data" / "prices.csv"
    if not shared.exists():
        pytest.skip("shared/data not present")
    _endpoint("deepseek", model="DeepSeek-Coder-V2")
    _run(str(shared), "--apply")
    endpoint = ModelEndpoint.objects.get(name="deepseek")
    assert (endpoint.input_usd_per_mtok, endpoint.output_usd_per_mtok) == (
        Decimal("0.14"),
        Decimal("0.28"),
    )
    assert "DeepSeek API" in endpoint.price_source
    own = tmp_path / "prices.csv"
    own.write_text(
        "model,input_usd_per_mtok,output_usd_per_mtok,cached_input_usd_per_mtok,"
        "reasoning_usd_per_mtok,context_window\n"
        "DeepSeek-Coder-V2,0.2,0.4,0.05,0.8,32768\n"
    )
    _run(str(own), "--apply")
    endpoint.refresh_from_db()
    assert endpoint.cached_input_usd_per_mtok == Decimal("0.05")
    assert endpoint.reasoning_usd_per_mtok == Decimal("0.8")
    assert endpoint.context_window == 32768


@pytest.fixture
def catalogue_server(litellm_file: Path) -> Iterator[str]:
    body = litellm_file.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path != "/prices.json":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_import_from_a_url(catalogue_server: str) -> None:
    _endpoint("gpt-4o")
    assert "updated 1 endpoint(s)" in _run(f"{catalogue_server}/prices.json", "--apply")
    assert ModelEndpoint.objects.get(name="gpt-4o").output_usd_per_mtok == Decimal("10")
    with pytest.raises(CommandError, match="could not fetch .*404"):
        _run(f"{catalogue_server}/missing.json")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "invalid JSON"),
        ('{"m": {"input_cost_per_token": -1, "mode": "chat"}}', "must be a number >= 0"),
        ("name,price\nx,1\n", "lacks the column"),
        ("model,input_usd_per_mtok,output_usd_per_mtok\nx,abc,1\n", "not a number"),
    ],
)
def test_bad_catalogues_are_refused_with_where(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad"
    path.write_text(content)
    with pytest.raises(CommandError, match=message):
        _run(str(path))
    with pytest.raises(CommandError, match="could not read"):
        _run(str(tmp_path / "absent.json"))
