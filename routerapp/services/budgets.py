"""Budget enforcement: reserve a query's worst-case cost before dispatch, settle to the real cost.

A reservation is one conditional UPDATE per policy window (`reserved + amount` is added only while
`spent + reserved + amount <= limit`), so concurrent requests cannot overspend a hard budget on
Postgres or SQLite without any lock held between the check and the write.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from routerapp.errors import BudgetExceeded
from routerapp.models import ApiKey, BudgetPolicy, BudgetUsage, Team

log = logging.getLogger(__name__)
ZERO = Decimal("0")


def period_start(period: str, now: dt.datetime) -> dt.date:
    """Return the first day of the budget window that contains `now` (UTC)."""
    today = now.astimezone(dt.UTC).date()
    if period == BudgetPolicy.Period.DAY:
        return today
    if period == BudgetPolicy.Period.MONTH:
        return today.replace(day=1)
    raise ValueError(f"unknown budget period {period!r}")


def policies_for(team: Team, api_key: ApiKey | None) -> list[BudgetPolicy]:
    """Return the enabled policies that cover a request: the team's and the key's own."""
    scope = Q(api_key__isnull=True)
    if api_key is not None:
        scope |= Q(api_key=api_key)
    return list(BudgetPolicy.objects.filter(scope, team=team, enabled=True).order_by("id"))


@dataclass
class BudgetHeadroom:
    policy: BudgetPolicy
    usage: BudgetUsage

    @property
    def left_usd(self) -> Decimal:
        return max(ZERO, self.policy.limit_usd - self.usage.spent_usd - self.usage.reserved_usd)


@dataclass
class Reservation:
    amount: Decimal
    usage_ids: list[int] = field(default_factory=list)
    soft_flags: list[str] = field(default_factory=list)


def _window(policy: BudgetPolicy, now: dt.datetime) -> BudgetUsage:
    usage, _ = BudgetUsage.objects.get_or_create(
        policy=policy, period_start=period_start(policy.period, now)
    )
    return usage


def budget_headroom(
    *, team: Team, api_key: ApiKey | None, now: dt.datetime | None = None
) -> list[BudgetHeadroom]:
    """Return each covering policy with its current window, hard policies first."""
    now = now or timezone.now()
    rows = [BudgetHeadroom(p, _window(p, now)) for p in policies_for(team, api_key)]
    return sorted(rows, key=lambda r: (not r.policy.is_hard, r.policy.id))


def hard_budget_left(
    *, team: Team, api_key: ApiKey | None, now: dt.datetime | None = None
) -> Decimal | None:
    """Return the smallest amount left under the hard budgets, or None when none applies."""
    lefts = [
        h.left_usd for h in budget_headroom(team=team, api_key=api_key, now=now) if h.policy.is_hard
    ]
    return min(lefts) if lefts else None


def budget_reserve(
    *,
    team: Team,
    api_key: ApiKey | None,
    amount: Decimal,
    now: dt.datetime | None = None,
) -> Reservation:
    """Reserve `amount` USD under every covering policy, or raise BudgetExceeded naming the
    first hard policy that cannot cover it. Must run inside the transaction that creates the
    query, so a rejected or failed request leaves nothing reserved."""
    if amount < 0:
        raise ValueError("a reservation cannot be negative")
    now = now or timezone.now()
    reservation = Reservation(amount=amount)
    for policy in policies_for(team, api_key):
        usage = _window(policy, now)
        rows = BudgetUsage.objects.filter(pk=usage.pk)
        if policy.is_hard:
            fits = rows.filter(spent_usd__lte=policy.limit_usd - amount - F("reserved_usd")).update(
                reserved_usd=F("reserved_usd") + amount
            )
            if not fits:
                usage.refresh_from_db()
                left = max(ZERO, policy.limit_usd - usage.spent_usd - usage.reserved_usd)
                raise BudgetExceeded(
                    f"budget '{policy.name}' ({policy.get_period_display().lower()}, "
                    f"limit ${policy.limit_usd.normalize():f}) has ${left.normalize():f} left; "
                    f"this request may cost up to ${amount.normalize():f}",
                    param="budget",
                )
        else:
            rows.update(reserved_usd=F("reserved_usd") + amount)
            usage.refresh_from_db()
            if usage.spent_usd + usage.reserved_usd > policy.limit_usd:
                reservation.soft_flags.append(policy.name)
                log.warning("soft budget %s (team %s) is over its limit", policy.name, team)
        reservation.usage_ids.append(usage.pk)
    return reservation


@transaction.atomic
def budget_settle(*, usage_ids: list[int], reserved: Decimal, spent: Decimal) -> None:
    """Replace a reservation by the real cost in the windows it was taken from."""
    if not usage_ids:
        return
    BudgetUsage.objects.filter(pk__in=usage_ids).update(
        reserved_usd=F("reserved_usd") - reserved, spent_usd=F("spent_usd") + spent
    )
