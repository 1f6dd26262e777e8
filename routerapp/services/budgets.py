"""Budget enforcement: reserve a query's worst-case cost before dispatch, settle to the real cost.

A reservation is one conditional UPDATE per policy window (`reserved + amount` is added only while
`spent + reserved + amount <= limit`), so concurrent requests cannot overspend a hard budget on
Postgres or SQLite without any lock held between the check and the write.

A policy set ``per_end_user`` gives each end user (the OpenAI ``user`` a request names) of its
team or key a window of their own, keyed by that name: the same conditional UPDATE on that
user's row, so one user's concurrent requests cannot overspend their share either.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from routerapp.errors import BudgetExceeded, InvalidInput
from routerapp.models import ApiKey, BudgetPolicy, BudgetUsage, Team
from routerapp.services.audit import audit_diff, audit_record

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


def policies_for(team: Team, api_key: ApiKey | None, end_user: str = "") -> list[BudgetPolicy]:
    """Return the enabled policies that cover a request: the team's and the key's own, and
    those of the request's end user (OpenAI's `user` field) when it names one."""
    scope = Q(api_key__isnull=True)
    if api_key is not None:
        scope |= Q(api_key=api_key)
    users = Q(end_user="")
    if end_user:
        users |= Q(end_user=end_user)
    return list(BudgetPolicy.objects.filter(scope, users, team=team, enabled=True).order_by("id"))


def window_user(policy: BudgetPolicy, end_user: str) -> str:
    """Return the end user whose window of ``policy`` a request is charged to: its own for a
    per-end-user policy ("" when it names none: those requests share one), else ""."""
    return end_user if policy.per_end_user else ""


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


def _window(policy: BudgetPolicy, now: dt.datetime, end_user: str = "") -> BudgetUsage:
    usage, _ = BudgetUsage.objects.get_or_create(
        policy=policy,
        period_start=period_start(policy.period, now),
        end_user=window_user(policy, end_user),
    )
    return usage


def budget_headroom(
    *,
    team: Team,
    api_key: ApiKey | None,
    now: dt.datetime | None = None,
    policies: list[BudgetPolicy] | None = None,
    end_user: str = "",
) -> list[BudgetHeadroom]:
    """Return each covering policy with its current window (``end_user``'s, for a policy set
    per end user), hard policies first."""
    now = now or timezone.now()
    if policies is None:
        policies = policies_for(team, api_key, end_user)
    rows = [BudgetHeadroom(p, _window(p, now, end_user)) for p in policies]
    return sorted(rows, key=lambda r: (not r.policy.is_hard, r.policy.id))


def hard_budget_left(
    *,
    team: Team,
    api_key: ApiKey | None,
    now: dt.datetime | None = None,
    policies: list[BudgetPolicy] | None = None,
    end_user: str = "",
) -> Decimal | None:
    """Return the smallest amount left under the hard budgets, or None when none applies."""
    lefts = [
        h.left_usd
        for h in budget_headroom(
            team=team, api_key=api_key, now=now, policies=policies, end_user=end_user
        )
        if h.policy.is_hard
    ]
    return min(lefts) if lefts else None


def budget_reserve(
    *,
    team: Team,
    api_key: ApiKey | None,
    amount: Decimal,
    now: dt.datetime | None = None,
    policies: list[BudgetPolicy] | None = None,
    end_user: str = "",
) -> Reservation:
    """Reserve `amount` USD under every covering policy (in ``end_user``'s own window for a
    policy set per end user), or raise BudgetExceeded naming the first hard policy that
    cannot cover it. Must run inside the transaction that creates the query, so a rejected or
    failed request leaves nothing reserved. ``policies`` (default: the covering ones,
    ``policies_for``) saves a query when the caller has them already."""
    if amount < 0:
        raise ValueError("a reservation cannot be negative")
    now = now or timezone.now()
    reservation = Reservation(amount=amount)
    if policies is None:
        policies = policies_for(team, api_key, end_user)
    for policy in policies:
        usage_id = _reserve_fast(policy, now, amount, end_user)
        if usage_id is None:
            usage_id = _reserve(policy, now, amount, team, reservation, end_user)
        elif not policy.is_hard:
            _flag_soft(policy, usage_id, team, reservation)
        reservation.usage_ids.append(usage_id)
        _remember_window(policy, now, end_user, usage_id)
    return reservation


# The id of each budget window this process has reserved in, by (policy, period start, end
# user): what lets a request reserve and store its query in one statement. Windows are never
# re-keyed; a stale id (a window deleted) matches no row, and the statement is refused.
_WINDOW_IDS: OrderedDict[tuple[int, dt.date, str], int] = OrderedDict()
_WINDOW_IDS_MAX = 4096
_WINDOW_IDS_LOCK = threading.Lock()


def _window_key(policy: BudgetPolicy, now: dt.datetime, end_user: str) -> tuple[int, dt.date, str]:
    return (policy.pk, period_start(policy.period, now), window_user(policy, end_user))


def _remember_window(policy: BudgetPolicy, now: dt.datetime, end_user: str, usage_id: int) -> None:
    key = _window_key(policy, now, end_user)
    with _WINDOW_IDS_LOCK:
        _WINDOW_IDS[key] = usage_id
        _WINDOW_IDS.move_to_end(key)
        while len(_WINDOW_IDS) > _WINDOW_IDS_MAX:
            _WINDOW_IDS.popitem(last=False)


@dataclass
class ReservationParts:
    """A reservation as parts of one guarded statement (services.statements)."""

    reservation: Reservation
    parts: list[tuple[str, str, list[Any]]]  # (name, UPDATE ... RETURNING, params)
    guard: str  # 1 when every window took its share, else 0
    soft: list[tuple[BudgetPolicy, str]]  # each soft policy and its part's name

    def flag_soft(self, totals: list[Decimal]) -> None:
        """Record the soft budgets the reservation took over their limit (``totals``: each
        soft window's spent + reserved after it, in ``soft`` order)."""
        for (policy, _), total in zip(self.soft, totals, strict=True):
            if total > policy.limit_usd:
                self.reservation.soft_flags.append(policy.name)
                log.warning("soft budget %s is over its limit", policy.name)


def budget_reserve_parts(
    *, amount: Decimal, policies: list[BudgetPolicy], end_user: str = "", now: dt.datetime
) -> ReservationParts | None:
    """Return ``budget_reserve``'s reservation as parts of one statement, or None when this
    process does not know every covering window's id yet (take ``budget_reserve``, which
    learns them). The same conditional UPDATE per window as ``_reserve_fast``: a hard budget
    that cannot cover ``amount`` matches no row, so the guard refuses the whole statement."""
    if amount < 0:
        raise ValueError("a reservation cannot be negative")
    with _WINDOW_IDS_LOCK:
        ids = [_WINDOW_IDS.get(_window_key(p, now, end_user)) for p in policies]
    if any(i is None for i in ids):
        return None
    result = ReservationParts(Reservation(amount=amount), [], "1", [])
    counts = []
    for i, (policy, usage_id) in enumerate(zip(policies, ids, strict=True)):
        assert usage_id is not None
        name = f"r{i}"
        sql, params = _reserve_sql(
            policy, now, amount, end_user, usage_id, returning='"spent_usd" + "reserved_usd"'
        )
        if not policy.is_hard:
            result.soft.append((policy, name))
        result.parts.append((name, sql, params))
        result.reservation.usage_ids.append(usage_id)
        counts.append(f"(SELECT count(*) FROM {name})")
    if counts:
        result.guard = " * ".join(counts)
    return result


def _reserve_fast(
    policy: BudgetPolicy, now: dt.datetime, amount: Decimal, end_user: str = ""
) -> int | None:
    """On Postgres, reserve in an existing window with one `UPDATE ... RETURNING id` (the
    same condition as `_reserve`); return the window's id, or None to take the general path
    (no window yet, the budget cannot cover it, or another database)."""
    if connection.vendor != "postgresql":
        return None
    sql, params = _reserve_sql(policy, now, amount, end_user)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return None if row is None else int(row[0])


def _reserve_sql(
    policy: BudgetPolicy,
    now: dt.datetime,
    amount: Decimal,
    end_user: str,
    usage_id: int | None = None,
    returning: str = '"id"',
) -> tuple[str, list[Any]]:
    """The Postgres reservation of one window: ``UPDATE ... RETURNING``, matching no row when
    the window does not exist (or is not ``usage_id``) or a hard budget cannot cover it."""
    table = BudgetUsage._meta.db_table
    sql = (
        f'UPDATE "{table}" SET "reserved_usd" = "reserved_usd" + %s, "updated_at" = %s '
        'WHERE "policy_id" = %s AND "period_start" = %s AND "end_user" = %s'
    )
    params: list[Any] = [amount, now, *_window_key(policy, now, end_user)]
    if usage_id is not None:
        sql += ' AND "id" = %s'
        params.append(usage_id)
    if policy.is_hard:
        sql += ' AND "spent_usd" <= %s - %s - "reserved_usd"'
        params += [policy.limit_usd, amount]
    return f"{sql} RETURNING {returning}", params


def _reserve(
    policy: BudgetPolicy,
    now: dt.datetime,
    amount: Decimal,
    team: Team,
    reservation: Reservation,
    end_user: str = "",
) -> int:
    """Reserve under one policy (creating its window if needed); raise BudgetExceeded when a
    hard policy cannot cover it. Return the window's id."""
    usage = _window(policy, now, end_user)
    rows = BudgetUsage.objects.filter(pk=usage.pk)
    if policy.is_hard:
        fits = rows.filter(spent_usd__lte=policy.limit_usd - amount - F("reserved_usd")).update(
            reserved_usd=F("reserved_usd") + amount
        )
        if not fits:
            usage.refresh_from_db()
            left = max(ZERO, policy.limit_usd - usage.spent_usd - usage.reserved_usd)
            raise BudgetExceeded(
                f"budget '{policy.name}' ({policy.get_period_display().lower()}"
                f"{_whose(policy, usage.end_user)}, "
                f"limit ${policy.limit_usd.normalize():f}) has ${left.normalize():f} left; "
                f"this request may cost up to ${amount.normalize():f}",
                param="budget",
            )
    else:
        rows.update(reserved_usd=F("reserved_usd") + amount)
        _flag_soft(policy, usage.pk, team, reservation)
    return usage.pk


def _whose(policy: BudgetPolicy, end_user: str) -> str:
    """The window a per-end-user policy refused, for its error message."""
    if not policy.per_end_user:
        return ""
    return f", end user {end_user!r}" if end_user else ", requests naming no end user"


def _flag_soft(policy: BudgetPolicy, usage_id: int, team: Team, reservation: Reservation) -> None:
    usage = BudgetUsage.objects.get(pk=usage_id)
    if usage.spent_usd + usage.reserved_usd > policy.limit_usd:
        reservation.soft_flags.append(policy.name)
        log.warning("soft budget %s (team %s) is over its limit", policy.name, team)


def budget_settle(
    *, usage_ids: list[int], reserved: Decimal, spent: Decimal
) -> list[BudgetUsage] | None:
    """Replace a reservation by the real cost in the windows it was taken from.

    One UPDATE statement, atomic on its own; callers run it inside the transaction that
    finishes the query, so the reservation and the query's status change together. On
    Postgres return the settled windows, each with its policy (limit, thresholds, enabled), as
    the statement left them (``UPDATE ... RETURNING``: what budget alerts read, without reading
    the rows again); elsewhere None."""
    if not usage_ids:
        return []
    if connection.vendor != "postgresql":
        BudgetUsage.objects.filter(pk__in=usage_ids).update(
            reserved_usd=F("reserved_usd") - reserved, spent_usd=F("spent_usd") + spent
        )
        return None
    sql, params = budget_settle_sql(usage_ids=usage_ids, reserved=reserved, spent=spent)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return settled_windows(rows)


SETTLED_COLUMNS = 12  # what budget_settle_sql returns per window


def budget_settle_sql(
    *, usage_ids: list[int], reserved: Decimal, spent: Decimal
) -> tuple[str, list[Any]]:
    """Return budget_settle's Postgres statement (``UPDATE ... RETURNING``, SETTLED_COLUMNS
    columns per window: read them with ``settled_windows``), to run alone or as a part of one
    guarded statement (services.statements)."""
    usage, policy = BudgetUsage._meta.db_table, BudgetPolicy._meta.db_table
    sql = (
        f'UPDATE "{usage}" AS u SET "reserved_usd" = u."reserved_usd" - %s, '
        f'"spent_usd" = u."spent_usd" + %s FROM "{policy}" AS p '
        'WHERE u."id" = ANY(%s) AND p."id" = u."policy_id" '
        'RETURNING u."id", u."period_start", u."end_user", u."reserved_usd", u."spent_usd", '
        'u."updated_at", p."id", p."name", p."limit_usd", p."alert_thresholds", p."enabled", '
        'p."per_end_user"'
    )
    return sql, [reserved, spent, list(usage_ids)]


def settled_windows(rows: list[tuple[Any, ...]]) -> list[BudgetUsage]:
    """The windows (each with its policy) from budget_settle_sql's rows."""
    windows = []
    for uid, start, user, res, spe, updated, pid, name, limit, thresholds, enabled, per in rows:
        if isinstance(thresholds, str):  # Django reads jsonb as text
            thresholds = json.loads(thresholds)
        window = BudgetUsage(
            id=uid,
            policy_id=pid,
            period_start=start,
            end_user=user,
            reserved_usd=res,
            spent_usd=spe,
            updated_at=updated,
        )
        window.policy = BudgetPolicy(
            id=pid,
            name=name,
            limit_usd=limit,
            alert_thresholds=thresholds,
            enabled=enabled,
            per_end_user=per,
        )
        windows.append(window)
    return windows


AUDITED_POLICY_FIELDS = [
    "name",
    "api_key",
    "end_user",
    "per_end_user",
    "period",
    "limit_usd",
    "mode",
    "enabled",
    "alert_thresholds",
    "alert_webhook_url",
    "alert_emails",
]


def _check_policy_values(*, team: Team, values: dict) -> None:
    if "limit_usd" in values and (values["limit_usd"] is None or values["limit_usd"] < 0):
        raise InvalidInput("limit_usd must be zero or more", param="limit_usd")
    if "period" in values and values["period"] not in BudgetPolicy.Period.values:
        raise InvalidInput(
            f"period must be one of {sorted(BudgetPolicy.Period.values)}", param="period"
        )
    if "mode" in values and values["mode"] not in BudgetPolicy.Mode.values:
        raise InvalidInput(f"mode must be one of {sorted(BudgetPolicy.Mode.values)}", param="mode")
    thresholds = values.get("alert_thresholds")
    if thresholds is not None and (
        not isinstance(thresholds, list)
        or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 < t <= 1000 for t in thresholds
        )
    ):
        raise InvalidInput(
            "alert_thresholds must be a list of percents between 1 and 1000",
            param="alert_thresholds",
        )
    if len(values.get("end_user") or "") > 256:
        raise InvalidInput("end_user must be at most 256 characters", param="end_user")
    if values.get("per_end_user") and values.get("end_user"):
        raise InvalidInput(
            "a budget covers either each end user (per_end_user) or one end user (end_user), "
            "not both",
            param="per_end_user",
        )
    if "name" in values and not str(values["name"]).strip():
        raise InvalidInput("a budget needs a name", param="name")
    key = values.get("api_key")
    if key is not None and key.team_id != team.pk:
        raise InvalidInput("the key belongs to another team", param="api_key")


@transaction.atomic
def budget_policy_create(
    *,
    team: Team,
    name: str,
    limit_usd: Decimal,
    period: str = BudgetPolicy.Period.MONTH,
    mode: str = BudgetPolicy.Mode.HARD_REJECT,
    api_key: ApiKey | None = None,
    enabled: bool = True,
    actor: Any = None,
    actor_api_key: ApiKey | None = None,
    end_user: str = "",
    per_end_user: bool = False,
    alert_thresholds: list[int] | None = None,
    alert_webhook_url: str = "",
    alert_emails: str = "",
) -> BudgetPolicy:
    """Create a budget policy for the team (or one of its keys, or one end user of it: the
    OpenAI `user` its requests name; or, ``per_end_user``, each end user of the team or key
    on their own); the audit log records it."""
    values = {
        "end_user": (end_user or "").strip(),
        "per_end_user": bool(per_end_user),
        "alert_thresholds": list(alert_thresholds or []),
        "alert_webhook_url": alert_webhook_url,
        "alert_emails": alert_emails,
        "name": name.strip(),
        "limit_usd": limit_usd,
        "period": period,
        "mode": mode,
        "api_key": api_key,
        "enabled": enabled,
    }
    _check_policy_values(team=team, values=values)
    policy = BudgetPolicy.objects.create(team=team, **values)
    audit_record(
        action="create",
        obj=policy,
        team=team,
        actor=actor,
        actor_api_key=actor_api_key,
        changes=audit_diff(None, policy, AUDITED_POLICY_FIELDS),
    )
    return policy


@transaction.atomic
def budget_policy_update(
    *,
    policy: BudgetPolicy,
    actor: Any = None,
    actor_api_key: ApiKey | None = None,
    **changes: Any,
) -> BudgetPolicy:
    """Change a policy's name, limit, period, mode or enabled flag; the audit log records old
    and new values. Raise InvalidInput for an unknown field or a bad value."""
    allowed = {
        "name",
        "limit_usd",
        "period",
        "mode",
        "enabled",
        "alert_thresholds",
        "alert_webhook_url",
        "alert_emails",
    }
    unknown = sorted(set(changes) - allowed)
    if unknown:
        raise InvalidInput(f"cannot change {unknown}; changeable: {sorted(allowed)}")
    locked = BudgetPolicy.objects.select_for_update().get(pk=policy.pk)
    _check_policy_values(team=locked.team, values=changes)
    old = BudgetPolicy.objects.get(pk=policy.pk)
    for name, value in changes.items():
        setattr(locked, name, value.strip() if name == "name" else value)
    locked.save()
    audit_record(
        action="update",
        obj=locked,
        team=locked.team,
        actor=actor,
        actor_api_key=actor_api_key,
        changes=audit_diff(old, locked, AUDITED_POLICY_FIELDS),
    )
    return locked


def budget_reserve_more(*, usage_ids: list[int], amount: Decimal) -> None:
    """Add ``amount`` USD to an existing reservation held in the windows ``usage_ids`` (a
    query run again after its worker died). Hard policies take it only while
    ``spent + reserved + amount <= limit`` (the same conditional UPDATE as
    ``budget_reserve``); raise BudgetExceeded naming the first that cannot. Run it inside a
    transaction: a refusal then leaves nothing reserved anywhere."""
    if amount < 0:
        raise ValueError("a reservation cannot be negative")
    if not usage_ids or amount == 0:
        return
    windows = BudgetUsage.objects.filter(pk__in=usage_ids).select_related("policy")
    for usage in sorted(windows, key=lambda u: (not u.policy.is_hard, u.pk)):
        policy = usage.policy
        rows = BudgetUsage.objects.filter(pk=usage.pk)
        if policy.is_hard:
            rows = rows.filter(spent_usd__lte=policy.limit_usd - amount - F("reserved_usd"))
        if not rows.update(reserved_usd=F("reserved_usd") + amount):
            usage.refresh_from_db()
            left = max(ZERO, policy.limit_usd - usage.spent_usd - usage.reserved_usd)
            raise BudgetExceeded(
                f"budget '{policy.name}' ({policy.get_period_display().lower()}"
                f"{_whose(policy, usage.end_user)}, "
                f"limit ${policy.limit_usd.normalize():f}) has ${left.normalize():f} left; "
                f"a new run may cost up to ${amount.normalize():f} more than was reserved",
                param="budget",
            )
