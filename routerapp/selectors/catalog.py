"""What a caller may ask for: `auto`, every enabled configuration and the models behind them."""

from __future__ import annotations

from typing import Any

from routerapp.errors import NotFound
from routerapp.models import Configuration

AUTO = "auto"


def _configurations(permitted: frozenset[str] | None = None) -> list[Configuration]:
    qs = Configuration.objects.filter(enabled=True, endpoint__enabled=True)
    if permitted is not None:
        qs = qs.filter(slug__in=permitted)
    return list(qs.select_related("endpoint", "strategy").order_by("slug"))


def catalog_models(permitted: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """Return OpenAI model objects: `auto`, each enabled configuration, each model name.

    A configuration id serves exactly that (model, strategy); a model name lets the router
    choose the strategy; `auto` lets it choose both. With ``permitted`` (the caller's
    allowlists, see selectors.access) only what the caller may call is listed.
    """
    configs = _configurations(permitted)
    rows: list[dict[str, Any]] = [
        {
            "id": AUTO,
            "object": "model",
            "created": 0,
            "owned_by": "costpass",
            "costpass": {
                "kind": "router",
                "description": "the router picks the configuration with the lowest expected "
                "cost-of-pass",
                "configurations": [c.slug for c in configs],
            },
        }
    ]
    endpoints: dict[str, dict[str, Any]] = {}
    for c in configs:
        e = c.endpoint
        rows.append(
            {
                "id": c.slug,
                "object": "model",
                "created": int(c.created_at.timestamp()),
                "owned_by": "costpass",
                "costpass": {
                    "kind": "configuration",
                    "model": e.name,
                    "engine": e.engine,
                    "strategy": c.strategy.strategy,
                    "strategy_config": c.strategy.name,
                    "params": c.strategy.params,
                    "input_usd_per_mtok": str(e.input_usd_per_mtok),
                    "output_usd_per_mtok": str(e.output_usd_per_mtok),
                    "max_prompt_tokens": c.max_prompt_tokens,
                },
            }
        )
        entry = endpoints.setdefault(
            e.name,
            {
                "id": e.name,
                "object": "model",
                "created": int(e.created_at.timestamp()),
                "owned_by": "costpass",
                "costpass": {
                    "kind": "model",
                    "display_name": e.display_name,
                    "engine": e.engine,
                    "input_usd_per_mtok": str(e.input_usd_per_mtok),
                    "output_usd_per_mtok": str(e.output_usd_per_mtok),
                    "configurations": [],
                },
            },
        )
        entry["costpass"]["configurations"].append(c.slug)
    slugs = {c.slug for c in configs}
    rows.extend(v for k, v in sorted(endpoints.items()) if k not in slugs)
    return rows


def catalog_model(model_id: str, permitted: frozenset[str] | None = None) -> dict[str, Any]:
    """Return one model object; raise NotFound (code model_not_found) for an unknown id or
    one the caller may not call."""
    for row in catalog_models(permitted):
        if row["id"] == model_id:
            return row
    raise NotFound(
        f"the model {model_id!r} does not exist or is disabled",
        param="model",
        code="model_not_found",
    )
