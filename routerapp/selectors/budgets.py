"""Reads of budget policies with their current window (limit, spent, reserved, left)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.utils import timezone

from routerapp.errors import NotFound
from routerapp.models import BudgetPolicy, BudgetUsage, Team
from routerapp.services.budgets import period_start

ZERO = Decimal("0")


def budget_status(policy: BudgetPolicy, now: Any = None) -> dict[str, Any]:
    """Return a policy with its current window: spent, reserved and what is left (read-only)."""
    start = period_start(policy.period, now or timezone.now())
    usage = BudgetUsage.objects.filter(policy=policy, period_start=start).first()
    spent = usage.spent_usd if usage else ZERO
    reserved = usage.reserved_usd if usage else ZERO
    return {
        "id": policy.pk,
        "name": policy.name,
        "api_key": policy.api_key.prefix if policy.api_key is not None else None,
        "end_user": policy.end_user,
        "period": policy.period,
        "mode": policy.mode,
        "enabled": policy.enabled,
        "limit_usd": str(policy.limit_usd),
        "window_start": start.isoformat(),
        "spent_usd": str(spent),
        "reserved_usd": str(reserved),
        "left_usd": str(max(ZERO, policy.limit_usd - spent - reserved)),
        "alert_thresholds": list(policy.alert_thresholds or []),
        "alert_webhook_url": policy.alert_webhook_url,
        "alert_emails": policy.alert_emails,
        # The alerts this window raised (each threshold once), for the API and the UI.
        "alerts": [
            {
                "threshold_percent": a.threshold,
                "spent_usd": str(a.spent_usd),
                "raised_at": a.created_at.isoformat(),
                "delivered": a.delivered_at is not None,
                "webhook": a.webhook_status,
                "email": a.email_status,
            }
            for a in policy.alerts.filter(period_start=start).order_by("threshold")
        ],
    }


def budgets_for_team(*, team: Team) -> list[BudgetPolicy]:
    return list(
        BudgetPolicy.objects.filter(team=team).select_related("api_key").order_by("name", "id")
    )


def budget_get_for_team(*, team: Team, policy_id: str) -> BudgetPolicy:
    """Return the team's policy; raise NotFound for another team's or an unknown id."""
    pk = _as_id(policy_id)
    policy = (
        BudgetPolicy.objects.filter(team=team, pk=pk).select_related("api_key").first()
        if pk is not None
        else None
    )
    if policy is None:
        raise NotFound(f"no budget {policy_id!r}", param="id")
    return policy


def _as_id(value: object) -> int | None:
    """Return a database id from a path segment, or None (not a number, or out of range)."""
    text = str(value)
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text) or None
