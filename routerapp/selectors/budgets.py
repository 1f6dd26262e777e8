"""Reads of budget policies with their current window (limit, spent, reserved, left)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db.models import F
from django.utils import timezone

from routerapp.errors import NotFound
from routerapp.models import BudgetPolicy, BudgetUsage, Team
from routerapp.services.budgets import period_start

ZERO = Decimal("0")


#: End users listed per per-end-user budget (those closest to the limit first).
TOP_END_USERS = 50


def budget_status(policy: BudgetPolicy, now: Any = None) -> dict[str, Any]:
    """Return a policy with its current window: spent, reserved and what is left (read-only).

    For a policy set per end user, ``end_users`` lists the windows of the period, closest to
    the limit first (at most TOP_END_USERS), and spent / reserved / left are those of the
    first: the end user with the least left."""
    start = period_start(policy.period, now or timezone.now())
    windows = BudgetUsage.objects.filter(policy=policy, period_start=start)
    end_users: list[dict[str, Any]] = []
    usage: BudgetUsage | None
    if policy.per_end_user:
        rows = list(
            windows.annotate(used=F("spent_usd") + F("reserved_usd")).order_by("-used", "end_user")[
                :TOP_END_USERS
            ]
        )
        usage = rows[0] if rows else None  # the end user with the least left
        end_users = [
            {
                "end_user": u.end_user,
                "spent_usd": str(u.spent_usd),
                "reserved_usd": str(u.reserved_usd),
                "left_usd": str(max(ZERO, policy.limit_usd - u.spent_usd - u.reserved_usd)),
            }
            for u in rows
        ]
    else:
        usage = windows.first()
    spent = usage.spent_usd if usage else ZERO
    reserved = usage.reserved_usd if usage else ZERO
    return {
        "id": policy.pk,
        "name": policy.name,
        "api_key": policy.api_key.prefix if policy.api_key is not None else None,
        "end_user": policy.end_user,
        "per_end_user": policy.per_end_user,
        "end_users": end_users,
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
                "end_user": a.end_user,
                "spent_usd": str(a.spent_usd),
                "raised_at": a.created_at.isoformat(),
                "delivered": a.delivered_at is not None,
                "webhook": a.webhook_status,
                "email": a.email_status,
            }
            for a in policy.alerts.filter(period_start=start).order_by("threshold")
        ],
    }


def end_user_budgets_left(*, team: Team, end_users: list[str], now: Any = None) -> dict[str, Any]:
    """Return, for the team's enabled per-end-user budgets, what each of ``end_users`` has left
    this period under the tightest of them: {"budgets": [names], "left": {end_user: Decimal}}
    (a user with no window yet has the whole limit)."""
    policies = list(BudgetPolicy.objects.filter(team=team, enabled=True, per_end_user=True))
    left: dict[str, Decimal] = {}
    now = now or timezone.now()
    for policy in policies:
        used = {
            u.end_user: u.spent_usd + u.reserved_usd
            for u in BudgetUsage.objects.filter(
                policy=policy,
                period_start=period_start(policy.period, now),
                end_user__in=end_users,
            )
        }
        for user in end_users:
            room = max(ZERO, policy.limit_usd - used.get(user, ZERO))
            left[user] = min(left.get(user, room), room)
    return {"budgets": [p.name for p in policies], "left": left}


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
