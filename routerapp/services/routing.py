"""The router seen from the product: which configuration serves a request, and why.

The learned router (routerapp.routing, Django-free) is loaded from the active RouterVersion and
kept per process. Explicit choices in the request (a configuration id, a model, a strategy) narrow
the candidates; with no active router version, the best single configuration by cost-of-pass
recorded by the newest version's evaluation serves (the cheapest enabled configuration before any
version exists), and the decision says so.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from routerapp.errors import InvalidInput, PermissionDenied, ServiceUnavailable, Unprocessable
from routerapp.models import Configuration, Query, RouterVersion
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
    # The configurations the caller's team and key allowlists permit (None: no allowlist);
    # set by the service from the caller, never from the request body.
    permitted: frozenset[str] | None = None
    # The request's OpenAI fields (workers.strategies.request_options.RequestOptions): only
    # configurations that honour them are candidates. Stored on the query, not here.
    options: Any = None

    def as_json(self) -> dict[str, Any]:
        data = {
            k: v
            for k, v in self.__dict__.items()
            if v is not None and k not in ("permitted", "options")
        }
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
    shadow: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "configuration": self.configuration.slug,
            "router_version": self.router_version.pk if self.router_version else None,
            "p_correct": self.p_correct,
            "cost_usd": None if self.cost_usd is None else str(self.cost_usd),
            "alternatives": self.alternatives,
            "reason": self.reason,
            "explored": self.explored,
            **({"shadow": self.shadow} if self.shadow else {}),
        }


def candidate_configurations(constraints: RequestConstraints) -> list[Configuration]:
    """Return the enabled configurations the request allows; raise when a name is unknown."""
    if not (
        constraints.configuration
        or constraints.model
        or constraints.strategy
        or constraints.allowed_models is not None
        or constraints.permitted is not None
    ):  # model "auto" without allowlists: every enabled configuration (cached)
        from routerapp.selectors.catalog_cache import cached

        every = cached("configurations", _enabled_configurations)
        if not every:
            raise Unprocessable("no enabled configuration satisfies the request", param="model")
        return list(every)
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
    if constraints.permitted is not None:
        qs = _permitted_only(qs, constraints)
    configs = list(qs.order_by("slug"))
    if not configs:
        raise Unprocessable("no enabled configuration satisfies the request", param="model")
    return configs


def _enabled_configurations() -> list[Configuration]:
    return list(
        Configuration.objects.filter(enabled=True, endpoint__enabled=True)
        .select_related("endpoint", "strategy")
        .order_by("slug")
    )


def _permitted_only(qs: Any, constraints: RequestConstraints) -> Any:
    """Narrow to the configurations the caller may use; raise PermissionDenied naming what was
    asked for when the request can only be served by forbidden ones."""
    assert constraints.permitted is not None
    allowed = qs.filter(slug__in=constraints.permitted)
    if allowed.exists() or not qs.exists():
        return allowed
    asked = constraints.configuration or constraints.model
    if asked:
        what = f"model {asked!r}"
    elif constraints.allowed_models:
        what = f"any of the models {sorted(constraints.allowed_models)}"
    else:
        what = "any enabled configuration" + (
            f" with strategy {constraints.strategy!r}" if constraints.strategy else ""
        )
    raise PermissionDenied(
        f"this caller may not use {what}: the team's or the API key's allowlist forbids it",
        param="model",
        code="model_not_allowed",
    )


class LiveRouter:
    """A stored version's router, kept per process and caught up with the queries graded since
    it was trained, so every web process learns online from the same log (the database is the
    shared state; observations are replayed in grading order)."""

    # How often a process looks for new grades; grades younger than the lag wait for the next
    # look, so a grade committed slightly late is not skipped.
    SYNC_EVERY_S = 2.0
    LAG_S = 2.0

    def __init__(self, version: RouterVersion):
        from routerapp.routing import Router

        self.version_id = version.pk
        if version.artifact is None:
            raise LookupError(f"router version {version.pk} has no stored model")
        self.router = Router.from_bytes(bytes(version.artifact))
        self.config_ids = set(self.router.config_ids)
        self.team_id = version.team_id  # a team's version learns from that team's grades only
        self.since = version.trained_at or timezone.now()
        self._next_sync = 0.0
        self._lock = threading.Lock()

    def sync(self) -> int:
        """Observe the grades that arrived since the last sync; return how many."""
        now = time.monotonic()
        if now < self._next_sync:
            return 0
        with self._lock:
            self._next_sync = now + self.SYNC_EVERY_S
            horizon = timezone.now() - dt.timedelta(seconds=self.LAG_S)
            if horizon <= self.since:
                return 0
            graded = Query.objects.filter(
                graded_at__gt=self.since,
                graded_at__lte=horizon,
                status=Query.Status.DONE,
                configuration__slug__in=self.config_ids,
            )
            if self.team_id is not None:
                graded = graded.filter(team_id=self.team_id)
            rows = list(
                graded.order_by("graded_at").values_list(
                    "prompt",
                    "messages",
                    "task",
                    "configuration__slug",
                    "graded_correct",
                    "cost_usd",
                    "text_deleted_at",
                    "router_sketch",
                )[:5000]
            )
            for prompt, messages, task, slug, correct, cost, deleted, sketch in rows:
                text = prompt or next(
                    (m["content"] for m in reversed(messages or []) if m.get("role") == "user"), ""
                )
                if deleted is not None and sketch:  # retention deleted the text: its sketch
                    from routerapp.services.retention import router_sketch_text

                    text = router_sketch_text(sketch)
                self.router.observe(
                    text, task or None, slug, correct=bool(correct), cost_usd=float(cost)
                )
            self.since = horizon
            return len(rows)


_routers: dict[int, LiveRouter] = {}
_routers_lock = threading.Lock()


def live_router(version: RouterVersion) -> LiveRouter:
    """Return the process's live router of a version (loaded once, then synced)."""
    with _routers_lock:
        live = _routers.get(version.pk)
        if live is None:
            stored = RouterVersion.objects.get(pk=version.pk)
            live = LiveRouter(stored)
            # Keep the versions that can serve now (active and shadow); drop the rest.
            keep = set(
                RouterVersion.objects.filter(Q(is_active=True) | Q(is_shadow=True)).values_list(
                    "pk", flat=True
                )
            )
            for pk in [pk for pk in _routers if pk not in keep]:
                del _routers[pk]
            _routers[version.pk] = live
    live.sync()
    return live


def active_router_version(team: Any = None) -> RouterVersion | None:
    """Return the version that serves ``team``: the one activated for it, else the
    installation's (the active version without a team)."""
    qs = RouterVersion.objects.filter(is_active=True, status=RouterVersion.Status.READY)
    if team is not None:
        scoped = qs.filter(team=team).defer("artifact").first()
        if scoped is not None:
            return scoped
    return qs.filter(team__isnull=True).defer("artifact").first()


def serving_router_versions(team: Any = None) -> tuple[RouterVersion | None, RouterVersion | None]:
    """Return (the version that serves ``team``, the shadow version) with one query (none
    while the catalog is unchanged: selectors.catalog_cache): the same answers as
    ``active_router_version(team)`` and ``shadow_router_version()``."""
    from routerapp.selectors.catalog_cache import cached

    return cached(("routers", team.pk if team is not None else None), lambda: _serving(team))


def _serving(team: Any) -> tuple[RouterVersion | None, RouterVersion | None]:
    scope = Q(is_active=True, team__isnull=True) | Q(is_shadow=True)
    if team is not None:
        scope |= Q(is_active=True, team=team)
    rows = list(
        RouterVersion.objects.filter(scope, status=RouterVersion.Status.READY).defer("artifact")
    )
    scoped = [v for v in rows if v.is_active and team is not None and v.team_id == team.pk]
    default = [v for v in rows if v.is_active and v.team_id is None]
    active = next(iter(scoped or default), None)
    shadow = next((v for v in rows if v.is_shadow), None)
    return active, shadow


def shadow_router_version() -> RouterVersion | None:
    return (
        RouterVersion.objects.filter(is_shadow=True, status=RouterVersion.Status.READY)
        .defer("artifact")
        .first()
    )


def decide(
    *,
    prompt: str,
    task: str,
    constraints: RequestConstraints,
    prompt_tokens: int,
    team: Any = None,
) -> RoutingDecision:
    """Choose the configuration for one request under its constraints, with the router version
    that serves the caller's ``team``. Only configurations that honour the request's OpenAI
    fields (``constraints.options``) are candidates: a 400 naming the field when none does."""
    from routerapp.services.request_fields import configurations_honouring

    configs = configurations_honouring(candidate_configurations(constraints), constraints.options)
    worst = {}
    for c in configs:
        try:
            worst[c.slug] = worst_case_cost(c, prompt_tokens, constraints.options)
        except ValueError as exc:  # a cascade whose stage endpoint is gone or disabled
            log.warning("configuration %s cannot run: %s", c.slug, exc)
    configs = [c for c in configs if c.slug in worst]
    if not configs:
        raise Unprocessable("no enabled configuration satisfies the request", param="model")
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
    configs = _healthy(configs)
    version, shadow_version = serving_router_versions(team)
    shadow = shadow_decision(
        prompt=prompt, task=task, configs=configs, constraints=constraints, version=shadow_version
    )
    # min_accuracy / max_latency_s are judged on the router's predictions: without them no
    # configuration is known to meet the request, so it is refused (422), never served blind.
    predicted = [
        name for name in ("min_accuracy", "max_latency_s") if getattr(constraints, name) is not None
    ]
    if version is not None and (len(configs) > 1 or predicted):
        try:
            decision = _decide_with_router(version, prompt, task, configs, constraints)
            decision.shadow = shadow
            return decision
        except Unprocessable:
            raise
        except Exception as exc:  # a broken router version must not take the API down
            if predicted:
                raise Unprocessable(
                    f"{' and '.join(predicted)} need the router's predictions, which are not "
                    f"available for the allowed configurations ({exc})",
                    param=predicted[0],
                ) from exc
            log.exception("router version %s failed; falling back to the cheapest", version.pk)
    if predicted:
        raise Unprocessable(
            f"{' and '.join(predicted)} need predicted accuracy and latency, and no router "
            "version serves this team yet: no configuration is known to meet them",
            param=predicted[0],
        )
    chosen = min(configs, key=lambda c: (worst[c.slug], c.slug))
    reason = (
        "only allowed configuration"
        if len(configs) == 1
        else ("no active router version: cheapest worst-case configuration")
    )
    if len(configs) > 1:
        # No router may serve (none passes the floor yet): the best single configuration does.
        from routerapp.selectors.routers import best_single_fallback

        fallback = best_single_fallback(allowed={c.slug for c in configs}, team=team)
        if fallback is not None:
            chosen = next(c for c in configs if c.slug == fallback["configuration"])
            reason = fallback["reason"]
    return RoutingDecision(
        configuration=chosen,
        router_version=None,
        p_correct=None,
        cost_usd=None,
        alternatives=[
            {"configuration": c.slug, "worst_case_usd": str(worst[c.slug])} for c in configs
        ],
        reason=reason,
        shadow=shadow,
    )


def _healthy(configs: list[Configuration]) -> list[Configuration]:
    """Drop the configurations whose endpoint's every target has an open circuit breaker;
    raise ServiceUnavailable (with Retry-After) when that leaves none."""
    from routerapp.services.breakers import breaker_snapshot, endpoint_available, endpoint_retry_in

    if not breaker_snapshot():  # the common case: nothing is failing, nothing to check
        return configs
    now = time.time()
    healthy = [c for c in configs if endpoint_available(c.endpoint, now)]
    if healthy:
        return healthy
    wait = min(endpoint_retry_in(c.endpoint, now) for c in configs)
    raise ServiceUnavailable(
        "every allowed configuration's endpoint is failing (its circuit breaker is open); "
        f"retry in {math.ceil(wait)}s",
        code="endpoints_unavailable",
        retry_after_s=max(1, math.ceil(wait)),
    )


def _router_constraints(configs: list[Configuration], constraints: RequestConstraints) -> Any:
    from routerapp.routing import Constraints

    return Constraints(
        allowed_config_ids=frozenset(c.slug for c in configs),
        max_cost_usd=None if constraints.max_cost_usd is None else float(constraints.max_cost_usd),
        max_latency_s=constraints.max_latency_s,
        min_accuracy=constraints.min_accuracy,
    )


def _decide_with_router(
    version: RouterVersion,
    prompt: str,
    task: str,
    configs: list[Configuration],
    constraints: RequestConstraints,
) -> RoutingDecision:
    from routerapp.routing import NoAllowedCandidateError

    live = live_router(version)
    by_slug = {c.slug: c for c in configs if c.slug in live.config_ids}
    if not by_slug:
        raise LookupError(f"router version {version.pk} knows none of the allowed configurations")
    try:
        decision = live.router.decide(
            prompt,
            task or None,
            _router_constraints(list(by_slug.values()), constraints),
            explore=settings.ROUTER_EXPLORE,
        )
    except NoAllowedCandidateError as exc:
        raise Unprocessable(str(exc), param="min_accuracy") from exc
    return RoutingDecision(
        configuration=by_slug[decision.config_id],
        router_version=version,
        p_correct=float(decision.p_correct),
        cost_usd=Decimal(str(round(decision.cost_usd, 12))),
        alternatives=[
            {
                "configuration": a.config_id,
                "p_correct": a.p_correct,
                "cost_usd": a.cost_usd,
                "cost_of_pass": a.cop if math.isfinite(a.cop) else None,
            }
            for a in decision.alternatives
        ],
        reason="explored" if decision.explored else "router",
        explored=bool(decision.explored),
    )


def shadow_decision(
    *,
    prompt: str,
    task: str,
    configs: list[Configuration],
    constraints: RequestConstraints,
    version: RouterVersion | None,
) -> dict[str, Any] | None:
    """Return what the shadow ``version`` (serving_router_versions) would have chosen (it
    decides, it does not serve); None without one."""
    from routerapp.routing import RouterError

    if version is None:
        return None
    try:
        live = live_router(version)
        allowed = [c for c in configs if c.slug in live.config_ids]
        if not allowed:
            return None
        d = live.router.decide(prompt, task or None, _router_constraints(allowed, constraints))
    except (RouterError, LookupError) as exc:
        return {"router_version": version.pk, "error": str(exc)}
    except Exception:  # the shadow must never break serving
        log.exception("shadow router version %s failed", version.pk)
        return None
    return {
        "router_version": version.pk,
        "configuration": d.config_id,
        "p_correct": float(d.p_correct),
        "cost_usd": float(d.cost_usd),
    }
