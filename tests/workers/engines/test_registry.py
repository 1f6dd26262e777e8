import pytest

from workers.engines import (
    ENGINE_KINDS,
    EngineParamsError,
    UnknownEngineError,
    get_engine,
    validate_engine_params,
)


def test_known_kinds():
    assert set(ENGINE_KINDS) == {"llama_cpp", "openai_compat", "vllm"}


def test_unknown_kind_lists_known_ones():
    with pytest.raises(UnknownEngineError, match="known kinds: llama_cpp, openai_compat, vllm"):
        get_engine("tgi", {})
    with pytest.raises(UnknownEngineError):
        validate_engine_params("tgi", {})


def test_validate_without_loading():
    import sys

    out = validate_engine_params(
        "openai_compat", {"base_url": "http://127.0.0.1:9/v1/", "model": "m"}
    )
    assert out["base_url"] == "http://127.0.0.1:9/v1"
    assert out["api"] == "chat" and out["supports_n"] is False
    ll = validate_engine_params("llama_cpp", {"n_threads": 1})
    assert ll["model_path"].endswith(".gguf")
    assert validate_engine_params("vllm", {"model": "Qwen/Qwen2.5-0.5B"})["enable_prefix_caching"]
    assert "vllm" not in sys.modules


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("openai_compat", {"base_url": "ftp://x", "model": "m"}, "base_url"),
        ("openai_compat", {"base_url": "http://x", "model": "m", "api": "rpc"}, "api"),
        ("llama_cpp", {"model_path": "/nope.gguf"}, "model_path"),
        ("llama_cpp", {"n_threads": 0}, "n_threads"),
        ("llama_cpp", {"bogus": 1}, "bogus"),
        ("vllm", {}, "model"),
    ],
)
def test_bad_params_name_the_field(kind, params, field):
    with pytest.raises(EngineParamsError, match=field):
        validate_engine_params(kind, params)
    assert issubclass(EngineParamsError, ValueError)


def test_unknown_kind_is_also_a_value_error():
    with pytest.raises(ValueError, match="unknown engine kind"):
        validate_engine_params("nope", {})
