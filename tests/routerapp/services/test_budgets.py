"""Budget reservation and settlement."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from routerapp.errors import BudgetExceeded
from routerapp.models import BudgetPolicy, BudgetUsage
from routerapp.services.apikeys import api_key_create
from routerapp.services.budgets import budget_reserve, budget_settle, period_start
from tests.factories import BudgetPolicyFactory, TeamFactory

pytestmark = pytest.mark.django_db


def test_period_start() -> None:
    now = dt.datetime(2026, 11, 25, 23, 30, tzinfo=dt.UTC)
    assert period_start("day", now) == dt.date(2026, 11, 25)
    assert period_start("month", now) == dt.date(2026, 11, 1)
    with pytest.raises(ValueError):
        period_start("week", now)


def test_hard_budget_reserves_until_full_then_names_itself() -> None:
    team = TeamFactory()
    BudgetPolicyFactory(team=team, name="monthly", limit_usd=Decimal("1.00"))
    first = budget_reserve(team=team, api_key=None, amount=Decimal("0.60"))
    assert len(first.usage_ids) == 1
    with pytest.raises(BudgetExceeded) as err:
        budget_reserve(team=team, api_key=None, amount=Decimal("0.50"))
    assert "monthly" in err.value.message and "$0.4 left" in err.value.message
    assert err.value.status == 402
    budget_reserve(team=team, api_key=None, amount=Decimal("0.40"))  # exactly fits
    usage = BudgetUsage.objects.get()
    assert usage.reserved_usd == Decimal("1.00") and usage.spent_usd == 0


def test_settle_replaces_reservation_with_real_cost() -> None:
    team = TeamFactory()
    BudgetPolicyFactory(team=team, limit_usd=Decimal("1.00"))
    r = budget_reserve(team=team, api_key=None, amount=Decimal("0.30"))
    budget_settle(usage_ids=r.usage_ids, reserved=r.amount, spent=Decimal("0.000123"))
    usage = BudgetUsage.objects.get()
    assert usage.reserved_usd == 0 and usage.spent_usd == Decimal("0.000123")


def test_key_budget_applies_only_to_its_key_and_soft_budget_flags() -> None:
    team = TeamFactory()
    key_a, _ = api_key_create(team=team, name="a")
    key_b, _ = api_key_create(team=team, name="b")
    BudgetPolicyFactory(team=team, api_key=key_a, name="key-a", limit_usd=Decimal("0.10"))
    BudgetPolicyFactory(
        team=team, name="team-soft", limit_usd=Decimal("0.15"), mode=BudgetPolicy.Mode.SOFT
    )
    with pytest.raises(BudgetExceeded, match="key-a"):
        budget_reserve(team=team, api_key=key_a, amount=Decimal("0.20"))
    # Key b is not under key a's budget; the soft team budget only flags.
    r = budget_reserve(team=team, api_key=key_b, amount=Decimal("0.20"))
    assert r.soft_flags == ["team-soft"]
    assert BudgetUsage.objects.get(policy__name="team-soft").reserved_usd == Decimal("0.20")


def test_a_per_end_user_budget_keeps_one_window_per_user() -> None:
    """Each end user has the whole limit in a window of their own (the first reservation
    creates it, later ones take the one-statement path); requests naming no user share one;
    a top-up of a user's query (a fallback) lands in that user's window."""
    from routerapp.services.budgets import budget_reserve_more, hard_budget_left, policies_for

    team = TeamFactory()
    policy = BudgetPolicyFactory(
        team=team, name="each", limit_usd=Decimal("1.00"), per_end_user=True
    )
    windows = {}
    for user in ("alice", "bob", ""):
        first = budget_reserve(team=team, api_key=None, amount=Decimal("0.60"), end_user=user)
        again = budget_reserve(team=team, api_key=None, amount=Decimal("0.40"), end_user=user)
        assert first.usage_ids == again.usage_ids
        windows[user] = first.usage_ids[0]
        with pytest.raises(BudgetExceeded) as err:
            budget_reserve(team=team, api_key=None, amount=Decimal("0.01"), end_user=user)
        who = f"end user '{user}'" if user else "requests naming no end user"
        assert f"budget 'each' (per month, {who}, limit $1)" in err.value.message
        assert hard_budget_left(team=team, api_key=None, end_user=user) == 0
    assert len(set(windows.values())) == 3
    assert {u.end_user: u.reserved_usd for u in BudgetUsage.objects.filter(policy=policy)} == {
        "alice": Decimal("1.00"),
        "bob": Decimal("1.00"),
        "": Decimal("1.00"),
    }
    assert hard_budget_left(team=team, api_key=None, end_user="carol") == Decimal("1.00")
    budget_settle(usage_ids=[windows["alice"]], reserved=Decimal("1.00"), spent=Decimal("0.30"))
    top_up = budget_reserve(
        team=team,
        api_key=None,
        amount=Decimal("0.70"),
        policies=policies_for(team, None, "alice"),
        end_user="alice",
    )
    assert top_up.usage_ids == [windows["alice"]]
    with pytest.raises(BudgetExceeded):
        budget_reserve_more(usage_ids=[windows["alice"]], amount=Decimal("0.01"))


def test_per_end_user_and_one_end_user_do_not_combine() -> None:
    from routerapp.errors import InvalidInput
    from routerapp.services.budgets import budget_policy_create

    team = TeamFactory()
    with pytest.raises(InvalidInput) as err:
        budget_policy_create(
            team=team, name="x", limit_usd=Decimal("1"), per_end_user=True, end_user="alice"
        )
    assert err.value.param == "per_end_user"
    assert not BudgetPolicy.objects.exists()
