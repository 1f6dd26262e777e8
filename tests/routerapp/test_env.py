"""Settings readers fail loudly on values they cannot parse."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from routerapp.env import env_bool, env_float, env_int, env_list, env_str, load_dotenv


def test_readers_parse_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_BOOL", "Yes")
    monkeypatch.setenv("X_INT", "42")
    monkeypatch.setenv("X_FLOAT", "2.5")
    monkeypatch.setenv("X_LIST", "a, b,,c")
    assert env_bool("X_BOOL", False) is True
    assert env_int("X_INT", 0) == 42
    assert env_float("X_FLOAT", 0.0) == 2.5
    assert env_list("X_LIST", []) == ["a", "b", "c"]
    assert env_int("X_UNSET_INT", 7) == 7
    assert env_str("X_UNSET_STR", "d") == "d"


@pytest.mark.parametrize(
    ("reader", "value", "message"),
    [
        (lambda: env_bool("X", False), "maybe", "not a boolean"),
        (lambda: env_int("X", 0), "4.5", "not an integer"),
        (lambda: env_int("X", 0, minimum=1), "0", "must be >= 1"),
        (lambda: env_float("X", 0.0), "fast", "not a number"),
    ],
)
def test_readers_reject_bad_values(monkeypatch, reader, value, message) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("X", value)
    with pytest.raises(ImproperlyConfigured, match=message):
        reader()


def test_required_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("X_REQUIRED", raising=False)
    with pytest.raises(ImproperlyConfigured, match="X_REQUIRED is required"):
        env_str("X_REQUIRED")


def test_dotenv_fills_without_overriding(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / ".env"
    path.write_text("# comment\nX_A=from-file\nexport X_B='quoted'\nX_C=file\n")
    monkeypatch.delenv("X_A", raising=False)
    monkeypatch.delenv("X_B", raising=False)
    monkeypatch.setenv("X_C", "env")
    load_dotenv(path)
    import os

    assert os.environ["X_A"] == "from-file"
    assert os.environ["X_B"] == "quoted"
    assert os.environ["X_C"] == "env"
    path.write_text("NOT A PAIR\n")
    with pytest.raises(ImproperlyConfigured, match="expected KEY=value"):
        load_dotenv(path)
