"""What an OpenAI request asks of a configuration, and whether a configuration can honour it.

A request's fields are either honoured, routed to configurations that can honour them, or
refused with the name of the field (nothing is dropped). This module is the pure part:

- :class:`RequestOptions` holds the fields that change the answer (sampling, ``n``,
  ``response_format``, ``tools``, ``logprobs``, penalties, image / audio input);
- :func:`unmet` says, for one configuration (its endpoint's :class:`Capabilities` and its
  strategy), which fields it cannot honour and why; the router chooses among those with none;
- :func:`apply` turns the strategy's stored parameters into the ones the query runs with:
  for a one-sample configuration the request's sampling replaces the strategy's; for a
  multi-sample one it bounds every sample (``max_tokens`` and ``temperature`` / ``top_p`` at
  most the request's, the request's ``stop`` added, the request's ``seed`` as base seed), so
  the budget reservation, computed from the same parameters, is bounded too;
- :func:`output_spec` is what the engine must pass through (response format, tools, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.strategies.base import SamplingParams, Strategy

# What each engine kind can pass to its backend at all (on top of plain sampling); an
# endpoint's capability flag counts only where its engine can honour it.
ENGINE_FEATURES: dict[str, frozenset[str]] = {
    "openai_compat": frozenset(
        {"json_mode", "json_schema", "tools", "logprobs", "images", "audio", "passthrough"}
    ),
    # JSON mode and json_schema through llama.cpp's grammar sampler (llama_cpp_engine).
    "llama_cpp": frozenset({"logprobs", "json_mode", "json_schema"}),
    # The vLLM engine returns log-prob values but no token texts yet: not OpenAI's logprobs.
    "vllm": frozenset(),
}
# OpenAI fields sent to the backend as they are (servers that speak OpenAI honour them).
PASSTHROUGH_FIELDS = ("frequency_penalty", "presence_penalty", "logit_bias", "parallel_tool_calls")


@dataclass(frozen=True)
class Capabilities:
    """What one endpoint honours (its admin flags, limited by its engine)."""

    engine: str
    json_mode: bool = False
    json_schema: bool = False
    tools: bool = False
    logprobs: bool = True
    images: bool = False
    audio: bool = False

    def has(self, feature: str) -> bool:
        if feature not in ENGINE_FEATURES.get(self.engine, frozenset()):
            return False
        return bool(getattr(self, feature, True))


class RequestOptions(BaseModel):
    """The fields of an OpenAI request that change what is generated (None: not given)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    stop: list[str] | None = Field(default=None, max_length=4)
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    n: int = Field(default=1, ge=1, le=16)
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    passthrough: dict[str, Any] = Field(default_factory=dict)
    images: bool = False
    audio: bool = False
    #: The messages hold tool calls or tool results (an agent loop's history).
    tool_history: bool = False

    @property
    def json_kind(self) -> str | None:
        """'json_object' or 'json_schema' when the request asks for JSON output."""
        kind = (self.response_format or {}).get("type")
        return kind if kind in ("json_object", "json_schema") else None

    @property
    def vote_on(self) -> str | None:
        """What voting strategies compare: canonical JSON, tool calls, or extracted answers."""
        if self.tools:
            return "tool_calls"
        if self.json_kind:
            return "json"
        return None

    def as_json(self) -> dict[str, Any]:
        """The non-default fields (what Query.request_options stores)."""
        return self.model_dump(mode="json", exclude_defaults=True)


def unmet(
    options: RequestOptions, capabilities: Capabilities, strategy: Strategy, params: SamplingParams
) -> list[tuple[str, str]]:
    """Return (param, why) for each field this configuration cannot honour (empty: all)."""
    out: list[tuple[str, str]] = []
    kind = options.json_kind
    if kind == "json_object" and not capabilities.has("json_mode"):
        out.append(("response_format", "its endpoint has no JSON mode"))
    if kind == "json_schema" and not capabilities.has("json_schema"):
        out.append(("response_format", "its endpoint has no structured output (json_schema)"))
    if options.tools and not capabilities.has("tools"):
        out.append(("tools", "its endpoint does not support tool calls"))
    elif options.tool_choice not in (None, "none") and not options.tools:
        out.append(("tool_choice", "tool_choice needs tools"))
    if options.tool_history and not capabilities.has("tools"):
        out.append(("messages", "its endpoint does not support tool calls (tool-call history)"))
    if (options.logprobs or options.top_logprobs) and not capabilities.has("logprobs"):
        out.append(("logprobs", "its endpoint returns no token log-probs"))
    if options.images and not capabilities.has("images"):
        out.append(("messages", "its endpoint does not accept image content parts"))
    if options.audio and not capabilities.has("audio"):
        out.append(("messages", "its endpoint does not accept audio content parts"))
    for name in options.passthrough:
        if not capabilities.has("passthrough"):
            out.append((name, f"its {capabilities.engine} engine cannot apply {name}"))
    samples = strategy.planned_samples(params)
    if options.n > 1 and samples > 1:
        out.append(("n", f"its strategy draws {samples} samples to choose one answer"))
    return out


def apply(options: RequestOptions, strategy: Strategy, params: SamplingParams) -> SamplingParams:
    """Return the parameters a query with these options runs (and is reserved) with.

    A strategy made of stages (a cascade) applies them to each stage's own parameters."""
    stages = strategy.stages(params)
    if len(stages) > 1 or stages[0][1] is not strategy:
        new = [
            stage.model_copy(update={"params": apply(options, sub, sub_params).model_dump()})
            for stage, (_, sub, sub_params) in zip(params.stages, stages, strict=True)  # type: ignore[attr-defined]
        ]
        return params.model_copy(update={"stages": new})
    update: dict[str, Any] = {}
    single = strategy.planned_samples(params) == 1
    if single:
        for name in ("temperature", "top_p", "seed", "max_tokens"):
            value = getattr(options, name)
            if value is not None:
                update[name] = value
        if options.stop is not None:
            update["stop"] = list(options.stop)
        if options.n > 1:
            if "n" not in type(params).model_fields:
                raise ValueError(f"strategy {strategy.slug} cannot draw n samples")
            update["n"] = options.n
    else:
        if options.max_tokens is not None:
            update["max_tokens"] = min(params.max_tokens, options.max_tokens)
        if options.temperature is not None:
            update["temperature"] = min(params.temperature, options.temperature)
        if options.top_p is not None:
            update["top_p"] = min(params.top_p, options.top_p)
        if options.seed is not None:
            update["seed"] = options.seed
        if options.stop:
            update["stop"] = list(dict.fromkeys([*params.stop, *options.stop]))[:8]
    if not update:
        return params
    return type(params).model_validate({**params.model_dump(), **update})


def output_spec(options: RequestOptions) -> dict[str, Any]:
    """Return the SamplingConfig fields the engine must honour for these options."""
    spec: dict[str, Any] = {}
    if options.response_format and options.json_kind:
        spec["response_format"] = dict(options.response_format)
    if options.tools:
        spec["tools"] = tuple(options.tools)
        spec["tool_choice"] = options.tool_choice
    if options.passthrough:
        spec["passthrough"] = tuple(sorted(options.passthrough.items()))
    if options.logprobs:
        spec["token_texts"] = True
        spec["top_logprobs"] = options.top_logprobs
    return spec
