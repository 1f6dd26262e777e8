"""The router seen from the product: which configuration serves a request, and why.

The learned router (routerapp.routing, Django-free) is loaded from the active RouterVersion and
kept per process. Explicit choices in the request (a configuration id, a model, a strategy) narrow
the candidates; with no router version yet, the cheapest enabled configuration serves, and the
decision says so.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from routerapp.errors import InvalidInput, Unprocessable
from routerapp.models import Configuration, RouterVersion
from routerapp.services.pricing import worst_case_cost

log = logging.getLogger(__name__)


@dataclass
class RequestConstraints:
    """What the caller asked for; every field is optional."""

    configuration: str | None = None
    model: str | None = None
    strategy: str | None = None
    allowed_models: list[str] | None = None
    max_cost_usd: Decimal | None = None
    min_accuracy: float | None = None
    max_latency_s: float | None = None

    def as_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if v is not None}
        if "max_cost_usd" in data:
            data["max_cost_usd"] = str(data["max_cost_usd"])
        return data


@dataclass
class RoutingDecision:
    configuration: Configuration
    router_version: RouterVersion | None
    p_correct: float | None
    cost_usd: Decimal | None
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    explored: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "configuration": self.configuration.slug,
            "router_version": self.router_version.pk if self.router_version else None,
            "p_correct": self.p_correct,
            "cost_usd": None if self.cost_usd is None else str(self.cost_usd),
            "alternatives": self.alternatives,
            "reason": self.reason,
            "explored": self.explored,
        }


def candidate_configurations(constraints: RequestConstraints) -> list[Configuration]:
    """Return the enabled configurations the request allows; raise when a name is unknown."""
    qs = Configuration.objects.filter(enabled=True, endpoint__enabled=True).select_related(
        "endpoint", "strategy"
    )
    if constraints.configuration:
        qs = qs.filter(slug=constraints.configuration)
        if not qs.exists():
            raise InvalidInput(
                f"unknown or disabled configuration {constraints.configuration!r}",
                param="model",
                code="model_not_found",
            )
    if constraints.model:
        qs = qs.filter(endpoint__name=constraints.model)
        if not qs.exists():
            raise InvalidInput(
                f"unknown or disabled model {constraints.model!r}",
                param="model",
                code="model_not_found",
            )
    if constraints.strategy:
        qs = qs.filter(strategy__strategy=constraints.strategy) | qs.filter(
            strategy__name=constraints.strategy
        )
        if not qs.exists():
            raise InvalidInput(
                f"no enabled configuration uses strategy {constraints.strategy!r}",
                param="strategy",
            )
    if constraints.allowed_models is not None:
        qs = qs.filter(endpoint__name__in=constraints.allowed_models)
    configs = list(qs.order_by("slug"))
    if not configs:
        raise Unprocessable("no enabled configuration satisfies the request", param="model")
    return configs


_router_cache: dict[int, Any] = {}
_router_lock = threading.Lock()


def load_router(version: RouterVersion) -> Any:
    """Return the router of a stored version, deserialised once per process."""
    with _router_lock:
        router = _router_cache.get(version.pk)
        if router is None:
            from routerapp.routing import Router

            router = Router.from_bytes(bytes(version.artifact))
            _router_cache.clear()  # keep one version per process: the active one
            _router_cache[version.pk] = router
        return router


def active_router_version() -> RouterVersion | None:
    return (
        RouterVersion.objects.filter(is_active=True, status=RouterVersion.Status.READY)
        .defer("artifact")
        .first()
    )


def decide(
    *, prompt: str, task: str, constraints: RequestConstraints, prompt_tokens: int
) -> RoutingDecision:
    """Choose the configuration for one request under its constraints."""
    configs = candidate_configurations(constraints)
    worst = {c.slug: worst_case_cost(c, prompt_tokens) for c in configs}
    if constraints.max_cost_usd is not None:
        affordable = [c for c in configs if worst[c.slug] <= constraints.max_cost_usd]
        if not affordable:
            cheapest = min(worst.values())
            raise Unprocessable(
                f"no configuration fits max_cost_usd={constraints.max_cost_usd}: the cheapest "
                f"allowed one may cost up to ${cheapest.normalize():f}",
                param="max_cost_usd",
            )
        configs = affordable
    version = active_router_version()
    if version is not None and len(configs) > 1:
        try:
            return _decide_with_router(version, prompt, task, configs, constraints)
        except Unprocessable:
            raise
        except Exception:  # a broken router version must not take the API down
            log.exception("router version %s failed; falling back to the cheapest", version.pk)
    chosen = min(configs, key=lambda c: (worst[c.slug], c.slug))
    reason = (
        "only allowed configuration"
        if len(configs) == 1
        else ("no active router version: cheapest worst-case configuration")
    )
    return RoutingDecision(
        configuration=chosen,
        router_version=None,
        p_correct=None,
        cost_usd=None,
        alternatives=[
            {"configuration": c.slug, "worst_case_usd": str(worst[c.slug])} for c in configs
        ],
        reason=reason,
    )


def _decide_with_router(
    version: RouterVersion,
    prompt: str,
    task: str,
    configs: list[Configuration],
    constraints: RequestConstraints,
) -> RoutingDecision:
    from routerapp.routing import Constraints, NoCandidateError

    router = load_router(RouterVersion.objects.get(pk=version.pk))
    by_slug = {c.slug: c for c in configs}
    try:
        decision = router.decide(
            prompt,
            task or None,
            Constraints(
                allowed_config_ids=list(by_slug),
                max_cost_usd=None
                if constraints.max_cost_usd is None
                else float(constraints.max_cost_usd),
                max_latency_s=constraints.max_latency_s,
                min_accuracy=constraints.min_accuracy,
            ),
        )
    except NoCandidateError as exc:
        raise Unprocessable(str(exc), param="min_accuracy") from exc
    return RoutingDecision(
        configuration=by_slug[decision.config_id],
        router_version=version,
        p_correct=float(decision.p_correct),
        cost_usd=Decimal(str(round(decision.cost_usd, 12))),
        alternatives=[
            {"configuration": a[0], "p_correct": a[1], "cost_usd": a[2], "cost_of_pass": a[3]}
            for a in decision.alternatives
        ],
        reason="router",
        explored=bool(getattr(decision, "explored", False)),
    )
