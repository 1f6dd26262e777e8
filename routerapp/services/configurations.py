"""Creating strategy configurations and the (endpoint, strategy) configurations the router may
choose, from the UI (the admin uses the same validation through its form)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from pydantic import ValidationError

from routerapp.errors import InvalidInput
from routerapp.models import Configuration, ModelEndpoint, StrategyConfig
from routerapp.services.audit import audit_diff, audit_record


def strategy_params_validate(*, strategy: str, params: dict[str, Any]) -> dict[str, Any]:
    """Return a strategy's params validated and normalised; raise InvalidInput naming what is
    wrong (an unknown slug, a bad field, a stage endpoint that does not exist)."""
    from routerapp.services.pricing import stage_endpoints
    from workers.strategies import get_strategy

    try:
        impl = get_strategy(strategy)
    except KeyError as exc:
        raise InvalidInput(str(exc), param="strategy") from None
    if not isinstance(params, dict):
        raise InvalidInput("params must be a JSON object", param="params")
    try:
        validated = impl.validate_params(params)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(detail, param="params") from None
    try:
        stage_endpoints(impl, validated)
    except ValueError as exc:
        raise InvalidInput(str(exc), param="params") from None
    return validated.model_dump()


@transaction.atomic
def configuration_create(
    *,
    endpoint: ModelEndpoint,
    strategy: str,
    name: str,
    params: dict[str, Any],
    description: str = "",
    actor: Any = None,
) -> Configuration:
    """Create a strategy configuration ``name`` and its configuration on ``endpoint``
    (slug ``<endpoint>/<name>``), both audited; raise InvalidInput (nothing written) on bad
    params or a name or slug already taken."""
    clean = strategy_params_validate(strategy=strategy, params=params)
    if StrategyConfig.objects.filter(name=name).exists():
        raise InvalidInput(f"a strategy configuration named {name!r} exists", param="name")
    slug = f"{endpoint.name}/{name}"
    if Configuration.objects.filter(slug=slug).exists():
        raise InvalidInput(f"configuration {slug} exists", param="name")
    sc = StrategyConfig.objects.create(
        name=name, strategy=strategy, params=clean, description=description
    )
    audit_record(action="create", obj=sc, changes=audit_diff(None, sc, ["strategy", "params"]),
                 actor=actor)  # fmt: skip
    config = Configuration.objects.create(slug=slug, endpoint=endpoint, strategy=sc)
    audit_record(action="create", obj=config,
                 changes=audit_diff(None, config, ["endpoint", "strategy"]), actor=actor)  # fmt: skip
    return config
