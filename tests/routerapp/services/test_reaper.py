"""Queries whose process died mid-run are failed, billed and settled by the reaper."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from routerapp.models import BudgetUsage, Query, Sample
from routerapp.services.budgets import budget_reserve
from routerapp.services.execution import queries_reap_stale
from tests.factories import BudgetPolicyFactory, ConfigurationFactory, TeamFactory

pytestmark = pytest.mark.django_db


def test_stale_running_query_is_failed_billed_and_settled(settings) -> None:
    settings.ROLLUP_DEBOUNCE_S = 0
    team = TeamFactory()
    BudgetPolicyFactory(team=team, limit_usd=Decimal("1"))
    config = ConfigurationFactory()
    reservation = budget_reserve(team=team, api_key=None, amount=Decimal("0.01"))
    long_ago = timezone.now() - dt.timedelta(
        seconds=settings.QUERY_HARD_TIME_LIMIT_S + settings.REAP_GRACE_S + 60
    )
    stale = Query.objects.create(
        team=team,
        prompt="p",
        configuration=config,
        status=Query.Status.RUNNING,
        started_at=long_ago,
        reserved_usd=reservation.amount,
        budget_windows=reservation.usage_ids,
    )
    Sample.objects.create(
        query=stale,
        index=0,
        prompt_tokens=10,
        completion_tokens=5,
        aborted=True,
        cost_usd=Decimal("0.000001"),
    )
    fresh = Query.objects.create(
        team=team,
        prompt="p",
        configuration=config,
        status=Query.Status.RUNNING,
        started_at=timezone.now(),
    )
    assert queries_reap_stale() == 1
    stale.refresh_from_db()
    fresh.refresh_from_db()
    assert stale.status == "failed" and "stopped without finishing" in stale.error
    assert (stale.prompt_tokens, stale.completion_tokens) == (10, 5)
    assert stale.cost_usd == Decimal("0.000001")
    assert fresh.status == "running"
    usage = BudgetUsage.objects.get()
    assert usage.reserved_usd == 0 and usage.spent_usd == Decimal("0.000001")
    assert queries_reap_stale() == 0  # idempotent
