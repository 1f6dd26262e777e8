"""Router versions from the product's own log: train, evaluate, activate, shadow, learn online."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from routerapp.errors import Conflict, InvalidInput
from routerapp.models import Configuration, Query, RouterVersion, Team
from routerapp.services import routers as svc
from routerapp.services.bootstrap import bootstrap
from routerapp.services.routing import RequestConstraints, decide, live_router

pytestmark = pytest.mark.django_db

SUITES = Path(__file__).resolve().parents[4] / "shared" / "suites"


def _log(n_prompts: int = 40, seed: int = 0, start: int = 0, vote_hard: float = 0.95) -> None:
    """Graded queries of every bootstrap configuration on two task families: on 'easy' the
    greedy single answer is right, on 'hard' only the 5-sample vote is. Costs are such that
    voting on hard prompts lowers the log's overall cost-of-pass (total USD / correct) by about
    a quarter, which 40 prompts tell apart from noise (with `vote_hard` 0.6 the gain is 5%:
    a few prompts cannot tell)."""
    rng = random.Random(seed)
    team = Team.objects.get(name="demo")
    configs = {c.strategy.name: c for c in Configuration.objects.select_related("strategy")}
    cost = {
        "greedy": "0.00001",
        "sampled": "0.00001",
        "majority-5": "0.00002",
        "short-1-of-5": "0.00003",
        "best-of-4": "0.00004",
    }
    now = timezone.now() - dt.timedelta(hours=1)
    for i in range(start, start + n_prompts):
        task = "easy" if i % 2 else "hard"
        prompt = f"{task} problem {i}: what is {i} + {i}?"
        for name, config in configs.items():
            if task == "easy":
                correct = rng.random() < (0.95 if name in ("greedy", "majority-5") else 0.6)
            else:
                correct = rng.random() < (vote_hard if name == "majority-5" else 0.03)
            Query.objects.create(
                team=team,
                prompt=prompt,
                task=task,
                configuration=config,
                status=Query.Status.DONE,
                graded_correct=correct,
                graded_at=now,
                cost_usd=Decimal(cost[name]),
                prompt_tokens=20,
                completion_tokens=30,
            )


@pytest.fixture
def installed(settings, tmp_path):  # type: ignore[no-untyped-def]
    settings.VAR_DIR = tmp_path
    settings.ROUTER_EXPLORE = False
    bootstrap(admin_password="x" * 12)


def test_log_tables_follow_the_suite_schema(installed) -> None:  # type: ignore[no-untyped-def]
    _log(n_prompts=4)
    outcomes, prompts = svc.log_outcome_tables()
    assert len(outcomes) == 4 * 5 and len(prompts) == 4
    assert set(outcomes.columns) >= {"prompt_uid", "dataset", "config_id", "correct", "cost_usd"}
    assert set(outcomes["dataset"]) == {"easy", "hard"}


def test_too_little_log_fails_with_a_reason(installed) -> None:  # type: ignore[no-untyped-def]
    _log(n_prompts=3)
    version = svc.router_version_train(source="log", enqueue=False)
    version = svc.router_version_fit(version_id=version.pk)
    assert version.status == RouterVersion.Status.FAILED
    assert "at least 10" in version.error
    with pytest.raises(Conflict, match="not ready"):
        svc.router_version_activate(version=version)


def test_train_activate_and_route_by_task(installed) -> None:  # type: ignore[no-untyped-def]
    _log()
    version = svc.router_version_train(source="log", enqueue=False, name="v1")
    version = svc.router_version_fit(version_id=version.pk)
    assert version.status == RouterVersion.Status.READY, version.error
    policies = version.evaluation["policies"]
    assert {"router", "best_single_cop", "oracle_min_cop", "random"} <= set(policies)
    assert version.trained_on["prompts"] == 40
    svc.router_version_activate(version=version)
    hard = decide(
        prompt="hard problem 99: what is 99 + 99?",
        task="hard",
        constraints=RequestConstraints(),
        prompt_tokens=30,
    )
    easy = decide(
        prompt="easy problem 98: what is 98 + 98?",
        task="easy",
        constraints=RequestConstraints(),
        prompt_tokens=30,
    )
    assert hard.router_version == version and hard.p_correct is not None
    assert hard.configuration.strategy.name == "majority-5"
    assert easy.configuration.strategy.name == "greedy"  # as accurate there, and cheaper
    assert len(hard.alternatives) == 5
    # A budget that only covers single samples moves the choice.
    capped = decide(
        prompt="hard problem 99",
        task="hard",
        constraints=RequestConstraints(max_cost_usd=Decimal("0.00003")),
        prompt_tokens=30,
    )
    assert capped.configuration.strategy.strategy == "single"


def test_online_grades_move_the_live_router(installed, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from routerapp.services.routing import LiveRouter

    monkeypatch.setattr(LiveRouter, "LAG_S", 0.0)
    # Only the explicit sync below may observe the new grades (on a loaded machine writing
    # them can take longer than the periodic sync interval).
    monkeypatch.setattr(LiveRouter, "SYNC_EVERY_S", 3600.0)
    _log()
    version = svc.router_version_fit(
        version_id=svc.router_version_train(source="log", enqueue=False).pk
    )
    svc.router_version_activate(version=version)
    RouterVersion.objects.filter(pk=version.pk).update(
        trained_at=timezone.now() - dt.timedelta(minutes=30)
    )
    version.refresh_from_db()
    team = Team.objects.get(name="demo")
    majority = Configuration.objects.get(strategy__name="majority-5")
    greedy = Configuration.objects.get(strategy__name="greedy")

    def choice() -> str:
        return decide(
            prompt="novel problem", task="novel", constraints=RequestConstraints(), prompt_tokens=30
        ).configuration.strategy.name

    live_router(version).router.reset_online()
    before = choice()
    # A new task family where the vote always fails and greedy always succeeds.
    graded = timezone.now()
    for i in range(30):
        for config, ok in ((majority, False), (greedy, True)):
            Query.objects.create(
                team=team,
                prompt=f"novel {i}",
                task="novel",
                configuration=config,
                status=Query.Status.DONE,
                graded_correct=ok,
                graded_at=graded,
                cost_usd=Decimal("0.00002"),
            )
    live = live_router(version)
    live._next_sync = 0.0
    assert live.sync() == 60
    assert choice() == "greedy"
    assert before in {"greedy", "majority-5", "sampled", "short-1-of-5", "best-of-4"}


def test_shadow_decides_without_serving(installed) -> None:  # type: ignore[no-untyped-def]
    _log()
    v1 = svc.router_version_fit(version_id=svc.router_version_train(source="log", enqueue=False).pk)
    v2 = svc.router_version_fit(version_id=svc.router_version_train(source="log", enqueue=False).pk)
    svc.router_version_activate(version=v1)
    with pytest.raises(Conflict):
        svc.router_version_set_shadow(version=v1, shadow=True)
    svc.router_version_set_shadow(version=v2, shadow=True)
    d = decide(
        prompt="hard problem 1", task="hard", constraints=RequestConstraints(), prompt_tokens=30
    )
    assert d.router_version == v1
    assert d.shadow is not None and d.shadow["router_version"] == v2.pk
    assert d.as_json()["shadow"]["configuration"]


def test_router_train_command(installed) -> None:  # type: ignore[no-untyped-def]
    _log()
    out = StringIO()
    call_command("router_train", "--from-log", "--activate", stdout=out)
    assert "is ready and active" in out.getvalue()
    assert "oracle_min_cop" in out.getvalue()
    with pytest.raises(CommandError, match="not a suite"):
        call_command("router_train", "--suite", "/nonexistent", stdout=StringIO())
    with pytest.raises(InvalidInput):
        svc.router_version_train(source="nowhere")


@pytest.mark.skipif(not (SUITES / "game24-strategies").is_dir(), reason="shared suites absent")
def test_suite_version_is_evaluated_but_cannot_serve(installed) -> None:  # type: ignore[no-untyped-def]
    out = StringIO()
    call_command("router_train", "--suite", str(SUITES / "game24-strategies"), stdout=out)
    version = RouterVersion.objects.get()
    assert version.status == RouterVersion.Status.READY
    assert version.evaluation["policies"]["router"]["cop"] > 0
    with pytest.raises(Conflict, match="can be evaluated, not activated"):
        svc.router_version_activate(version=version)


def test_shadow_comparison_counts_agreement(installed) -> None:  # type: ignore[no-untyped-def]
    from routerapp.selectors.routers import shadow_comparison

    team = Team.objects.get(name="demo")
    greedy = Configuration.objects.get(strategy__name="greedy")
    version = RouterVersion.objects.create(name="s", learner="meta-logit", is_shadow=True)
    for shadow_choice, correct in [(greedy.slug, True), (greedy.slug, False), ("other", True)]:
        Query.objects.create(
            team=team,
            prompt="p",
            configuration=greedy,
            status=Query.Status.DONE,
            graded_correct=correct,
            cost_usd=Decimal("0.001"),
            decision={
                "shadow": {
                    "router_version": version.pk,
                    "configuration": shadow_choice,
                    "cost_usd": 0.002,
                }
            },
        )
    report = shadow_comparison(version=version)
    assert report["n"] == 3 and report["agree_rate"] == pytest.approx(2 / 3)
    assert report["served_when_agreeing"]["graded"] == 2
    assert report["served_when_agreeing"]["accuracy"] == 0.5
    assert report["served_when_disagreeing"]["cost_of_pass"] == pytest.approx(0.001)


# --- the floor: a version serves only when it is at least as good as the best single ------------


def _fit(**kwargs):  # type: ignore[no-untyped-def]
    return svc.router_version_fit(
        version_id=svc.router_version_train(source="log", enqueue=False, **kwargs).pk
    )


def test_a_winning_router_passes_the_floor_and_activates_itself(installed) -> None:  # type: ignore[no-untyped-def]
    _log()
    version = _fit(activate=True)
    floor = version.significance
    assert floor["n_prompts"] == 40  # cross-fitted: every prompt counts, not a 30% hold-out
    assert floor["verdict"] == "better" and floor["passes"] is True
    assert floor["ci_low"] <= floor["diff"] <= floor["ci_high"] < 0
    assert floor["single_config"].endswith("/greedy")
    assert RouterVersion.objects.get(pk=version.pk).is_active
    assert svc.floor_refusal(version) is None
    # The adaptation curve of the held-out prompts replayed online is stored for the page.
    curve = version.evaluation["online_curve"]
    n_test = version.trained_on["test_prompts"]
    assert curve["points"][-1] == n_test and len(curve["gap_closed"]) == len(curve["points"])


def test_an_undecided_router_is_not_activated_and_the_best_single_serves(installed) -> None:  # type: ignore[no-untyped-def]
    from routerapp.models import AuditLog

    _log(n_prompts=10, vote_hard=0.6)
    version = _fit(activate=True)
    assert version.status == RouterVersion.Status.READY
    floor = RouterVersion.objects.get(pk=version.pk).significance
    assert floor["n_prompts"] == 10 and floor["passes"] is False
    assert floor["verdict"] in ("undecided", "worse") and floor["ci_high"] > 0
    assert floor["auto_activation"].startswith("refused: router version")
    assert not RouterVersion.objects.filter(is_active=True).exists()
    assert not AuditLog.objects.filter(action="activate").exists()
    # Activating it by hand is refused too, with the interval in the reason; nothing written.
    with pytest.raises(Conflict, match=r"may not serve: .*95% CI \[.*\] on 10 prompts"):
        svc.router_version_activate(version=RouterVersion.objects.get(pk=version.pk))
    assert not RouterVersion.objects.filter(is_active=True).exists()
    assert not AuditLog.objects.filter(action="activate").exists()
    # 'auto' requests go to the best single configuration by cost-of-pass, and say why.
    d = decide(
        prompt="hard problem 3", task="hard", constraints=RequestConstraints(), prompt_tokens=30
    )
    assert d.router_version is None
    assert d.configuration.slug == floor["serve_config"]
    assert "no router version passes the floor" in d.reason
    # An explicit allowed set without that configuration falls back to the cheapest allowed.
    other = RequestConstraints(strategy="best_of_n")
    assert decide(prompt="x", task="", constraints=other, prompt_tokens=5).reason == (
        "only allowed configuration"
    )
    # More graded prompts decide it: the retrained version passes and serves.
    _log(n_prompts=40, seed=0, start=10)
    retrained = _fit(activate=True)
    assert retrained.significance["passes"] is True, str(retrained.significance)
    assert retrained.significance["n_prompts"] == 50
    assert RouterVersion.objects.get(is_active=True).pk == retrained.pk


def test_a_losing_version_is_refused_by_activation_and_shadow_promotion(installed) -> None:  # type: ignore[no-untyped-def]
    greedy = Configuration.objects.get(strategy__name="greedy")
    loser = RouterVersion.objects.create(
        name="loser", learner="meta-logit", status="ready",
        trained_on={"candidates": [c.slug for c in Configuration.objects.all()]},
        significance={
            "n_prompts": 120, "verdict": "worse", "passes": False, "diff": 1.7e-5,
            "ci_low": 9e-6, "ci_high": 2.6e-5, "confidence": 0.95,
            "single_config": greedy.slug, "serve_config": greedy.slug,
        },
    )  # fmt: skip
    svc.router_version_set_shadow(version=loser, shadow=True)  # shadow decides, never serves
    with pytest.raises(Conflict, match=f"it loses to {greedy.slug}"):
        svc.router_version_activate(version=loser)
    loser.refresh_from_db()
    assert loser.is_shadow and not loser.is_active
    # A version from before the floor check has no comparison: refused, with the remedy.
    old = RouterVersion.objects.create(
        name="old", learner="meta-logit", status="ready",
        trained_on={"candidates": [greedy.slug]},
    )  # fmt: skip
    with pytest.raises(Conflict, match="train a new version"):
        svc.router_version_activate(version=old)
    assert not RouterVersion.objects.filter(is_active=True).exists()


def test_calibration_runs_more_batches_until_the_floor_is_decided(installed) -> None:  # type: ignore[no-untyped-def]
    from routerapp.models import BenchmarkRun

    team = Team.objects.get(name="demo")
    first = BenchmarkRun.objects.create(
        team=team, name="calibration", labelled_set="generated", purpose="calibration",
        status="done", items=[{"prompt": f"p{i}"} for i in range(10)],
    )  # fmt: skip
    _log(n_prompts=10, vote_hard=0.6)
    version = svc.calibration_finished(run_id=first.pk)
    assert version is not None and version.trained_on["calibration"] is True
    version = svc.router_version_fit(version_id=version.pk)
    assert not version.is_active and version.significance["passes"] is False
    runs = BenchmarkRun.objects.filter(purpose="calibration").order_by("pk")
    assert runs.count() == 2
    second = runs.last()
    needed = version.significance["prompts_needed"] - 10
    expected = max(svc.CALIBRATION_MIN_BATCH, min(needed, svc.CALIBRATION_MAX_ITEMS - 10))
    assert len(second.items) == expected and second.planned == expected * 5
    assert "more problems are running" in version.significance["calibration"]
    # The cap ends it: no further batch, and the version says so.
    BenchmarkRun.objects.filter(pk=second.pk).update(
        status="done", items=[{"prompt": "x"}] * (svc.CALIBRATION_MAX_ITEMS - 10)
    )
    version2 = svc.router_version_fit(version_id=svc.calibration_finished(run_id=second.pk).pk)
    assert BenchmarkRun.objects.filter(purpose="calibration").count() == 2
    assert "cap" in version2.significance["calibration"] or version2.is_active


def test_retraining_while_the_best_single_serves(installed) -> None:  # type: ignore[no-untyped-def]
    _log(n_prompts=10, vote_hard=0.6)
    first = _fit(activate=True)
    assert not first.is_active and first.trained_on["outcome_rows"] == 50
    assert svc.router_retrain_if_due() is None  # the log has not grown
    _log(n_prompts=40, seed=0, start=10)  # 200 more graded outcomes
    version = svc.router_retrain_if_due()
    assert version is not None and version.trained_on["activate_when_ready"] is True
    assert svc.router_retrain_if_due() is None  # one at a time
    version = svc.router_version_fit(version_id=version.pk)
    assert version.is_active and version.significance["passes"]
    assert svc.router_retrain_if_due() is None  # a router serves
