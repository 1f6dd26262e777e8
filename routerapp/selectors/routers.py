"""Reads of router versions, their evaluations and their shadow record."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db.models import Q, QuerySet

from routerapp.errors import NotFound
from routerapp.models import Query, RouterVersion


def router_versions_list() -> QuerySet[RouterVersion]:
    return RouterVersion.objects.defer("artifact").order_by("-created_at")


def router_version_get(*, version_id: int | str) -> RouterVersion:
    """Return a version; raise NotFound for an unknown id."""
    try:
        pk = int(version_id)
    except (TypeError, ValueError):
        raise NotFound(f"no router version {version_id!r}") from None
    version = RouterVersion.objects.defer("artifact").filter(pk=pk).first()
    if version is None:
        raise NotFound(f"no router version {version_id!r}")
    return version


def shadow_comparison(*, version: RouterVersion, limit: int = 50_000) -> dict[str, Any]:
    """Compare a shadow version's choices with what was served on the same queries.

    Returns the number of queries it decided on, how often it agreed with the served choice,
    and, on graded queries where it agreed or disagreed, the served accuracy and spend.
    """
    rows = list(
        Query.objects.filter(decision__shadow__router_version=version.pk)
        .order_by("-created_at")
        .values_list("decision", "configuration__slug", "graded_correct", "cost_usd")[:limit]
    )
    n = len(rows)
    agree = 0
    counts = {"agree": [0, 0], "disagree": [0, 0]}  # graded, correct
    spent = {"agree": Decimal(0), "disagree": Decimal(0)}
    predicted_cost = 0.0
    for decision, served, correct, cost in rows:
        shadow = decision.get("shadow") or {}
        same = shadow.get("configuration") == served
        agree += same
        predicted_cost += float(shadow.get("cost_usd") or 0.0)
        if correct is not None:
            side = "agree" if same else "disagree"
            counts[side][0] += 1
            counts[side][1] += int(correct)
            spent[side] += cost
    return {
        "n": n,
        "agree_rate": agree / n if n else None,
        "shadow_mean_predicted_cost_usd": predicted_cost / n if n else None,
        "served_when_agreeing": _summary(counts["agree"][0], counts["agree"][1], spent["agree"]),
        "served_when_disagreeing": _summary(
            counts["disagree"][0], counts["disagree"][1], spent["disagree"]
        ),
    }


def _summary(n: int, correct: int, cost: Decimal) -> dict[str, Any]:
    return {
        "graded": n,
        "accuracy": correct / n if n else None,
        "mean_cost_usd": float(cost / n) if n else None,
        "cost_of_pass": float(cost / correct) if correct else None,
    }


def best_single_fallback(
    *, allowed: set[str], team: Any = None, look_back: int = 5
) -> dict[str, Any] | None:
    """Return what serves while no router version may: the best single configuration (by
    cost-of-pass) recorded by the newest ready versions' floor checks (the installation's, and
    `team`'s own), when it is among `allowed` -> {"configuration", "router_version", "reason"};
    None when no version knows one (then the cheapest configuration serves)."""
    scope = Q(team__isnull=True) if team is None else Q(team__isnull=True) | Q(team=team)
    rows = (
        RouterVersion.objects.filter(scope, status=RouterVersion.Status.READY)
        .exclude(significance={})
        .order_by("-trained_at", "-pk")
        .values_list("pk", "significance")[:look_back]
    )
    for pk, sig in rows:
        slug = (sig or {}).get("serve_config")
        if slug and slug in allowed:
            return {
                "configuration": slug,
                "router_version": pk,
                "reason": (
                    "no router version passes the floor: best single configuration by "
                    f"cost-of-pass (router version {pk}'s evaluation)"
                ),
            }
    return None
