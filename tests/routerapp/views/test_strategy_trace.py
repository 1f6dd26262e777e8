"""The playground shows what an adaptive strategy decided: why sampling stopped (with the
posterior), cascade stages and search trees."""

from __future__ import annotations

import pytest
from django.test import Client

from routerapp.models import Query
from tests.factories import ConfigurationFactory, MembershipFactory, TeamFactory, UserFactory
from workers.strategies.adaptive_consistency import stop_decision

pytestmark = pytest.mark.django_db


@pytest.fixture
def member():  # type: ignore[no-untyped-def]
    m = MembershipFactory(team=TeamFactory(name="trace-team"), user=UserFactory(username="tia"))
    client = Client()
    client.force_login(m.user)
    return m, client


def finished(team, trace):  # type: ignore[no-untyped-def]
    return Query.objects.create(
        team=team,
        prompt="1+1?",
        configuration=ConfigurationFactory(),
        status="done",
        answer="2",
        samples_planned=8,
        trace=trace,
    )


def test_stopping_decisions_are_shown_with_reason_and_posterior(member) -> None:  # type: ignore[no-untyped-def]
    m, client = member
    keys = ["2", "2", "3", "2", "2", "2"]
    decisions = [
        stop_decision(keys[:n], k=16, rule="beta", threshold=0.9, window=2).to_dict()
        for n in (2, 4, 6)
    ]
    assert [d["stop"] for d in decisions] == [False, False, True]
    trace = {"kind": "stopping", "rule": "beta", "threshold": 0.9, "k": 16, "window": 2,
             "samples": 6, "reason": "posterior", "posterior": decisions[-1]["posterior"],
             "decisions": decisions}  # fmt: skip
    q = finished(m.team, trace)
    html = client.get(f"/queries/{q.pk}/live", HTTP_HX_REQUEST="true").content.decode()
    assert 'id="strategy-trace"' in html and 'data-kind="stopping"' in html
    assert "Stopped after <strong>6</strong> of at most 16 samples" in html
    assert "posterior that the leading answer stays ahead reached the threshold" in html
    assert f"posterior {decisions[-1]['posterior']:.3f}" in html
    assert "2: 5, 3: 1" in html  # the votes after 6 samples
    assert html.count("<td>continue</td>") == 2 and "stop (posterior)" in html


def test_no_trace_no_panel(member) -> None:  # type: ignore[no-untyped-def]
    m, client = member
    q = finished(m.team, {})
    html = client.get(f"/queries/{q.pk}/live", HTTP_HX_REQUEST="true").content.decode()
    assert "strategy-trace" not in html
