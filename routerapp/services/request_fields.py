"""The request's OpenAI fields through the pipeline: which configurations can honour them,
what a query runs with, and what the engine is asked for.

One place turns a validated request (``RequestOptions``) into strategy and engine parameters,
used by routing (candidates, worst-case cost), the budget reservation, the web process's
inline runner and the workers, so that what is reserved is what runs. Any endpoint that reuses
the pipeline (the Responses API) gets the same guarantees by building a ``RequestOptions``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from routerapp.errors import InvalidInput
from routerapp.models import Configuration, ModelEndpoint, Query
from workers.strategies import get_strategy
from workers.strategies.base import SamplingParams, Strategy
from workers.strategies.request_options import (
    Capabilities,
    RequestOptions,
    apply,
    output_spec,
    unmet,
)

NO_OPTIONS = RequestOptions()


def endpoint_capabilities(endpoint: ModelEndpoint) -> Capabilities:
    """What an endpoint honours: its admin flags, limited by what its engine can send."""
    return Capabilities(
        engine=endpoint.engine,
        json_mode=endpoint.supports_json_mode,
        json_schema=endpoint.supports_json_schema,
        tools=endpoint.supports_tools,
        logprobs=endpoint.supports_logprobs,
        images=endpoint.supports_images,
        audio=endpoint.supports_audio,
    )


def strategy_params(
    configuration: Configuration, options: RequestOptions | None
) -> tuple[Strategy, SamplingParams]:
    """Return the strategy and the parameters a query on this configuration runs with (the
    stored ones, overridden or bounded by the request's sampling fields)."""
    strategy = get_strategy(configuration.strategy.strategy)
    params = strategy.validate_params(configuration.strategy.params)
    if options is None or options == NO_OPTIONS:
        return strategy, params
    return strategy, apply(options, strategy, params)


def configuration_unmet(
    configuration: Configuration, options: RequestOptions
) -> list[tuple[str, str]]:
    """Return (param, why) for each request field this configuration cannot honour."""
    strategy = get_strategy(configuration.strategy.strategy)
    params = strategy.validate_params(configuration.strategy.params)
    problems = unmet(options, endpoint_capabilities(configuration.endpoint), strategy, params)
    # A strategy that also runs other endpoints (a cascade's stages) needs them all able.
    names = strategy.endpoint_names(params)
    if names:
        for endpoint in ModelEndpoint.objects.filter(name__in=names):
            for param, why in unmet(options, endpoint_capabilities(endpoint), strategy, params):
                if (param, why) not in problems:
                    problems.append((param, f"stage endpoint {endpoint.name}: {why}"))
    return problems


def configurations_honouring(
    configs: list[Configuration], options: RequestOptions | None
) -> list[Configuration]:
    """Keep the configurations that honour every field of the request.

    Raise InvalidInput (a 400 naming the field) when none does: a field is never dropped.
    """
    if options is None or options == NO_OPTIONS:
        return configs
    keep: list[Configuration] = []
    missing: dict[str, list[str]] = {}
    for configuration in configs:
        problems = configuration_unmet(configuration, options)
        if not problems:
            keep.append(configuration)
        for param, why in problems:
            missing.setdefault(param, []).append(f"{configuration.slug}: {why}")
    if keep:
        return keep
    param, reasons = max(missing.items(), key=lambda item: len(item[1]))
    shown = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} more" if len(reasons) > 3 else "")
    raise InvalidInput(
        f"no allowed configuration can honour {param}: {shown}",
        param=param,
        code="unsupported_parameter",
    )


def query_options(query: Query) -> RequestOptions | None:
    """Return the request fields a stored query honours (None: the strategy's defaults)."""
    fields = {k: v for k, v in (query.request_options or {}).items() if k != "recorded"}
    if not fields:
        return None
    return RequestOptions.model_validate(fields)


@dataclass
class RunSpec:
    """What a query runs: the strategy, its parameters and the extra arguments of
    ``Strategy.run`` (output constraints for the engine, what votes compare)."""

    strategy: Strategy
    params: SamplingParams
    run_kwargs: dict[str, Any]


def query_run_spec(query: Query, configuration: Configuration | None = None) -> RunSpec:
    """Return the strategy, parameters and run arguments of a routed query on its
    configuration (or on ``configuration``: a fallback attempt's)."""
    configuration = configuration or query.configuration
    assert configuration is not None  # every routed query has one
    options = query_options(query)
    strategy, params = strategy_params(configuration, options)
    run_kwargs: dict[str, Any] = {}
    if options is not None:
        spec = output_spec(options)
        if spec:
            run_kwargs["output"] = spec
        if options.vote_on:
            run_kwargs["vote_on"] = options.vote_on
    return RunSpec(strategy=strategy, params=params, run_kwargs=run_kwargs)
