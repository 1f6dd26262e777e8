"""Prices and worst-case costs of configurations (cost itself is computed in workers.ledger)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings

from routerapp.models import Configuration, ModelEndpoint
from routerapp.services.request_fields import strategy_params
from workers.ledger import Prices, cost_of_engine_time, cost_of_tokens

# Chat templates wrap each message in role markers; a generous per-message allowance.
TEMPLATE_TOKENS_PER_MESSAGE = 16
TEMPLATE_TOKENS_FIXED = 64


def endpoint_prices(endpoint: ModelEndpoint) -> Prices:
    return Prices(
        input_usd_per_mtok=endpoint.input_usd_per_mtok,
        output_usd_per_mtok=endpoint.output_usd_per_mtok,
        gpu_usd_per_hour=endpoint.gpu_usd_per_hour,
        cached_input_usd_per_mtok=endpoint.cached_input_usd_per_mtok,
        reasoning_usd_per_mtok=endpoint.reasoning_usd_per_mtok,
    )


def prompt_token_bound(prompt: str, messages: list[dict] | None) -> int:
    """Return an upper bound on the prompt's tokens without loading a tokenizer.

    Byte-level BPE tokenizers emit at least one byte per token, so the UTF-8 length bounds the
    count; the chat template adds a fixed allowance per message.
    """
    if messages:
        body = sum(
            len(str(m.get("content") or "").encode()) + len(str(m.get("tool_calls") or "").encode())
            for m in messages
        )
        return body + TEMPLATE_TOKENS_FIXED + TEMPLATE_TOKENS_PER_MESSAGE * len(messages)
    return len(prompt.encode()) + TEMPLATE_TOKENS_FIXED


def stage_endpoints(strategy: Any, params: Any) -> dict[str, ModelEndpoint]:
    """Return the endpoints, by name, that a strategy runs on besides its configuration's own
    (a cascade's stages). Raise ValueError naming an endpoint that does not exist or is off."""
    names = strategy.endpoint_names(params)
    if not names:
        return {}
    found = {e.name: e for e in ModelEndpoint.objects.filter(name__in=names, enabled=True)}
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"unknown or disabled model endpoint(s): {', '.join(missing)}")
    return found


def _stage_tokens(strategy: Any, params: Any, prompt_tokens: int) -> tuple[int, int]:
    prompt = (
        strategy.max_prompt_billings(params) * prompt_tokens
        + strategy.max_extra_prompt_tokens(params)
        + strategy.scorer_calls(params) * TEMPLATE_TOKENS_FIXED
    )
    return prompt, strategy.max_completion_tokens(params)


def worst_case_tokens(
    configuration: Configuration, prompt_tokens: int, options: Any = None
) -> tuple[int, int]:
    """Return (prompt, completion) tokens the configuration can bill at most for one query.

    Every planned sample may be its own engine request that re-bills the prompt (HTTP engines);
    a scorer or verifier call reads the prompt back with one candidate (at most max_tokens)
    and a fixed instruction. A cascade sums its stages. ``options`` (the request's
    RequestOptions) bound or override the strategy's sampling exactly as the query runs it.
    """
    strategy, params = strategy_params(configuration, options)
    prompt = completion = 0
    for _, sub, sub_params in strategy.stages(params):
        p, c = _stage_tokens(sub, sub_params, prompt_tokens)
        prompt, completion = prompt + p, completion + c
    return prompt, completion


def worst_case_cost(
    configuration: Configuration, prompt_tokens: int, options: Any = None
) -> Decimal:
    """Return the most a query on this configuration can cost: what a budget reserves.

    The worker refuses a prompt longer than the configuration's max_prompt_tokens before
    generating anything, so that limit caps the prompt part of the bound. How many tokens the
    provider will report as cached or as reasoning is unknown before the run, so each token
    is priced at the dearest price its kind can have. A strategy that runs several endpoints
    (a cascade) is priced stage by stage at each stage's endpoint's prices. An endpoint priced
    per GPU-hour only bills engine time: its bound is the time limit at that price.
    """
    prompt_tokens = min(prompt_tokens, configuration.max_prompt_tokens)
    strategy, params = strategy_params(configuration, options)
    others = stage_endpoints(strategy, params)
    total = Decimal(0)
    for name, sub, sub_params in strategy.stages(params):
        endpoint = configuration.endpoint if name is None else others[name]
        prices = endpoint_prices(endpoint)
        if prices.gpu_priced:
            total += cost_of_engine_time(worst_case_engine_seconds(configuration), prices)
            continue
        p_tokens, c_tokens = _stage_tokens(sub, sub_params, prompt_tokens)
        total += cost_of_tokens(p_tokens, c_tokens, prices.upper_bound())
    return total


def worst_case_engine_seconds(configuration: Configuration) -> int:
    """Return the most engine time one query on this configuration can bill: the worker's
    hard time limit (the engine time of a run is at most its wall time, and a query priced
    by engine time always runs in a worker, see services.queries.query_runs_inline)."""
    return int(settings.QUERY_HARD_TIME_LIMIT_S)
