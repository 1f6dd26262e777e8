"""The playground shows what an adaptive strategy decided: why sampling stopped (with the
posterior), cascade stages and search trees."""

from __future__ import annotations

import json

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


def test_cascade_stages_are_shown(member) -> None:  # type: ignore[no-untyped-def]
    m, client = member
    trace = {"kind": "cascade", "escalate_on": "confidence", "threshold": 0.8, "escalated": True,
             "final_stage": 1, "reason": "confidence 0.412 < 0.8",
             "stages": [
                 {"endpoint": "(configuration's)", "strategy": "single", "samples": [0],
                  "answer": "7", "confidence": 0.412, "prompt_tokens": 40, "completion_tokens": 8,
                  "decision": "escalate", "why": "confidence 0.412 < 0.8", "final": False},
                 {"endpoint": "big-model", "strategy": "majority_vote", "samples": [1, 2, 3],
                  "answer": "9", "confidence": 0.667, "prompt_tokens": 120,
                  "completion_tokens": 24, "decision": "final", "why": "", "final": True},
             ]}  # fmt: skip
    q = finished(m.team, trace)
    html = client.get(f"/queries/{q.pk}/live", HTTP_HX_REQUEST="true").content.decode()
    assert 'data-kind="cascade"' in html and 'id="cascade-table"' in html
    assert "Escalated to stage 2: confidence 0.412 &lt; 0.8." in html
    assert "big-model" in html and "1, 2, 3" in html and "120 / 24" in html


def test_admin_refuses_a_cascade_on_an_unknown_endpoint() -> None:
    from routerapp.admin import StrategyConfigForm

    stages = [{"strategy": "single"}, {"endpoint": "ghost", "strategy": "single"}]
    form = StrategyConfigForm(
        data={"name": "casc", "strategy": "cascade", "params": json.dumps({"stages": stages})}
    )
    assert not form.is_valid()
    assert "unknown or disabled model endpoint(s): ghost" in str(form.errors["params"])
    form = StrategyConfigForm(
        data={"name": "casc", "strategy": "cascade", "params": json.dumps({"stages": stages[:1]})}
    )
    assert not form.is_valid() and "stages" in str(form.errors["params"])
    ConfigurationFactory()  # creates the smollm2-135m endpoint
    ok = [{"strategy": "single"}, {"endpoint": "smollm2-135m", "strategy": "majority_vote"}]
    form = StrategyConfigForm(
        data={"name": "casc", "strategy": "cascade", "params": json.dumps({"stages": ok})}
    )
    assert form.is_valid(), form.errors
    assert form.cleaned_data["params"]["stages"][1]["params"]["n"] == 5


def test_search_tree_shows_kept_and_pruned_nodes(member) -> None:  # type: ignore[no-untyped-def]
    m, client = member
    node = {"id": 1, "parent": 0, "score": -0.42, "done": False, "sample": 0, "text": "3 + 4"}
    cut = {"id": 2, "parent": 0, "score": -1.7, "done": False, "sample": 1, "text": "3 - 4 is"}
    end = {"id": 3, "parent": 1, "score": -0.3, "done": True, "sample": 2, "text": "3 + 4 = 7"}
    trace = {"kind": "search", "method": "beam", "scorer": "prm", "delimiter": "\n\n",
             "steps": [{"step": 1, "kept": [node], "pruned": [cut]},
                       {"step": 2, "kept": [end], "pruned": []}],
             "expanded": 3, "pruned": 1, "scorer_calls": 3, "best": end}  # fmt: skip
    q = finished(m.team, trace)
    html = client.get(f"/queries/{q.pk}/live", HTTP_HX_REQUEST="true").content.decode()
    assert 'data-kind="search"' in html and 'id="search-table"' in html
    assert "beam with the prm step scorer: 2 steps, 3 steps generated, 1 pruned" in html
    assert "scorer calls billed: 3" in html
    assert "#2 ← #0 · -1.700" in html and "#3 ← #1 · -0.300 · done" in html


def test_difficulty_class_is_shown(member) -> None:  # type: ignore[no-untyped-def]
    m, client = member
    trace = {"kind": "difficulty", "features": {"entropy": 1.234, "length": 31, "task": "gsm"},
             "p_probe_right": 0.12, "class": "hard", "ran": "short_m_at_k",
             "thresholds": {"easy_above": 0.7, "hard_below": 0.3}, "classifier_fitted_on": 0,
             "probe_answer": "4"}  # fmt: skip
    q = finished(m.team, trace)
    html = client.get(f"/queries/{q.pk}/live", HTTP_HX_REQUEST="true").content.decode()
    assert 'data-kind="difficulty"' in html
    assert "class <strong>hard</strong> (p(probe right) 0.120" in html
    assert "so it ran <strong>short_m_at_k</strong>" in html
    assert "1.234 nats / token" in html and "the default prior (not fitted yet)" in html
