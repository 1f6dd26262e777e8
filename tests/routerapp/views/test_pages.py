"""The web UI's pages through Django's test client: login, team scoping, forms that refuse bad
input with a form error (never a 500, never a half-written row), htmx fragments, empty states,
dashboards on a populated log."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from routerapp.models import BenchmarkRun, Query, RouterVersion, TeamMembership
from routerapp.services.rollups import rollup_rebuild
from tests.factories import (
    ConfigurationFactory,
    MembershipFactory,
    StrategyConfigFactory,
    TeamFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

SHARED = Path(__file__).resolve().parents[4] / "shared"
PAGES = ["/", "/playground/", "/queries/", "/dashboards/", "/benchmarks/", "/routers/"]


@pytest.fixture
def member():  # type: ignore[no-untyped-def]
    m = MembershipFactory(team=TeamFactory(name="ui-team"), user=UserFactory(username="alice"))
    client = Client()
    client.force_login(m.user)
    return m, client


@pytest.fixture
def configs():  # type: ignore[no-untyped-def]
    return [
        ConfigurationFactory(),
        ConfigurationFactory(
            strategy=StrategyConfigFactory(
                name="vote", strategy="majority_vote", params={"n": 3, "max_tokens": 16}
            )
        ),
    ]


@pytest.mark.parametrize("path", PAGES)
def test_pages_need_a_login(client, path) -> None:  # type: ignore[no-untyped-def]
    r = client.get(path)
    assert r.status_code == 302 and r["Location"].startswith("/login/")


def test_login_form_and_wrong_password(client) -> None:  # type: ignore[no-untyped-def]
    UserFactory(username="bob")
    assert "Log in to costpass" in client.get("/login/").content.decode()
    r = client.post("/login/", {"username": "bob", "password": "nope"})
    assert r.status_code == 200 and "correct username and password" in r.content.decode()
    r = client.post("/login/", {"username": "bob", "password": "correct-horse-battery"})
    assert r.status_code == 302


def test_a_user_without_a_team_is_told_so(client) -> None:  # type: ignore[no-untyped-def]
    client.force_login(UserFactory(username="loner"))
    r = client.get("/dashboards/")
    assert r.status_code == 403 and "not in a team" in r.content.decode()


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_empty_with_next_steps(member, configs, path) -> None:  # type: ignore[no-untyped-def]
    _, client = member
    r = client.get(path)
    assert r.status_code == 200
    html = r.content.decode()
    assert "<nav" in html and 'aria-current="page"' in html


def test_playground_refuses_bad_input_without_writing(member, configs) -> None:  # type: ignore[no-untyped-def]
    _, client = member
    r = client.post("/playground/", {"prompt": "   ", "min_accuracy": "2"})
    assert r.status_code == 400
    html = r.content.decode()
    assert "This field is required" in html or "non-empty" in html
    assert "less than or equal to 1" in html
    # A constraint nothing satisfies: the service refuses, the form says why.
    r = client.post("/playground/", {"prompt": "2+2?", "max_cost_usd": "0.000000000001"})
    assert r.status_code == 400 and "no configuration fits max_cost_usd" in r.content.decode()
    assert Query.objects.count() == 0


def test_playground_creates_a_query_and_shows_it_live(member, configs) -> None:  # type: ignore[no-untyped-def]
    m, client = member
    r = client.post(
        "/playground/",
        {"prompt": "What is 2+2?", "task": "arith", "configuration": configs[1].slug},
    )
    assert r.status_code == 302
    q = Query.objects.get()
    assert (q.source, q.user, q.team, q.task, q.configuration) == (
        "ui",
        m.user,
        m.team,
        "arith",
        configs[1],
    )
    assert r["Location"] == f"/queries/{q.pk}/"
    html = client.get(r["Location"]).content.decode()
    assert "Router decision" in html and configs[1].slug in html
    live = client.get(f"/queries/{q.pk}/live", HTTP_HX_REQUEST="true").content.decode()
    assert 'hx-trigger="every 1s"' in live and "0 of 3 samples" in live
    # Cancel while queued: it stops at once; the fragment stops polling.
    r = client.post(f"/queries/{q.pk}/cancel", HTTP_HX_REQUEST="true")
    assert r.status_code == 200
    q.refresh_from_db()
    assert q.status == "cancelled"
    assert "hx-trigger" not in r.content.decode() and "Cancelled" in r.content.decode()
    # Cancelling again is a conflict shown on the page, not an error page.
    r = client.post(f"/queries/{q.pk}/cancel", HTTP_HX_REQUEST="true")
    assert r.status_code == 200 and "already finished" in r.content.decode()


def test_feedback_on_a_finished_query_grades_it(member, configs) -> None:  # type: ignore[no-untyped-def]
    m, client = member
    q = Query.objects.create(
        team=m.team,
        prompt="1+1?",
        configuration=configs[0],
        status="done",
        answer="2",
        samples_planned=1,
    )
    r = client.post(f"/queries/{q.pk}/feedback", {"correct": "false"}, HTTP_HX_REQUEST="true")
    assert r.status_code == 200 and "graded incorrect" in r.content.decode()
    q.refresh_from_db()
    assert q.graded_correct is False and q.feedback_correct is False
    r = client.post(f"/queries/{q.pk}/feedback", {"correct": "maybe"}, HTTP_HX_REQUEST="true")
    assert "choose correct or incorrect" in r.content.decode()


def test_queries_of_another_team_are_not_found(member, configs) -> None:  # type: ignore[no-untyped-def]
    _, client = member
    other = Query.objects.create(
        team=TeamFactory(name="other"), prompt="secret", configuration=configs[0]
    )
    for path in (f"/queries/{other.pk}/", f"/queries/{other.pk}/live", "/queries/not-a-uuid/"):
        assert client.get(path).status_code == 404
    assert client.post(f"/queries/{other.pk}/cancel").status_code == 404
    assert "secret" not in client.get("/queries/").content.decode()


def test_team_switcher_only_switches_to_own_teams(member, configs) -> None:  # type: ignore[no-untyped-def]
    m, client = member
    second = TeamFactory(name="second-team")
    stranger = TeamFactory(name="stranger-team")
    TeamMembership.objects.create(team=second, user=m.user)
    client.post("/team/", {"team": stranger.pk, "next": "/"})
    assert "ui-team" in client.get("/").content.decode()
    client.post("/team/", {"team": second.pk, "next": "/"})
    assert "Team second-team" in client.get("/").content.decode()


def _panels(client, qs: str = "") -> dict[str, str]:  # type: ignore[no-untyped-def]
    page = client.get(f"/dashboards/?{qs}").content.decode()
    slugs = re.findall(r'hx-get="/dashboards/panel/([a-z-]+)', page)
    assert len(slugs) == 8
    return {s: client.get(f"/dashboards/panel/{s}?{qs}").content.decode() for s in slugs}


def test_dashboards_empty_state_says_what_to_do(member, configs) -> None:  # type: ignore[no-untyped-def]
    _, client = member
    panels = _panels(client)
    assert all("Nothing to show yet" in html for html in panels.values())
    assert "Start a benchmark run" in panels["cost-of-pass"]
    assert "Playground" in panels["spend"]


def test_dashboards_on_a_populated_log(member) -> None:  # type: ignore[no-untyped-def]
    from bench import synthetic_log

    m, client = member
    synthetic_log.fill(rows=1500, teams=[m.team], days=20, seed=3)
    rollup_rebuild()
    panels = _panels(client, "period=30")
    for slug, html in panels.items():
        assert "Nothing to show yet" not in html, slug
        data = re.findall(
            r'<script id="fig-[^"]+" type="application/json">(.*?)</script>', html, re.S
        )
        assert data, slug
        fig = json.loads(data[0])
        assert fig["data"] and fig["layout"], slug
        assert "<table" in html and "Table view" in html
    assert "Pareto frontier" in panels["frontier"] and "min-CoP oracle" in panels["frontier"]
    assert "p95" in panels["latency"]
    # The CSV is the table.
    r = client.get("/dashboards/panel/cost-of-pass?period=30&format=csv")
    rows = list(csv_rows(r.content.decode()))
    assert rows[0][:4] == ["configuration", "task", "graded", "correct"]
    assert len(rows) > 5
    # Filters narrow the figures: one model only.
    narrowed = client.get("/dashboards/panel/tokens?period=30&model=smollm2-135m").content.decode()
    assert "smollm2-135m/greedy" in narrowed and "hosted-large/greedy" not in narrowed


def csv_rows(text: str):  # type: ignore[no-untyped-def]
    import csv

    return csv.reader(io.StringIO(text))


def test_dashboard_filter_errors_are_form_errors(member, configs) -> None:  # type: ignore[no-untyped-def]
    _, client = member
    r = client.get("/dashboards/?period=custom&start=2026-05-02&end=2026-05-01")
    assert r.status_code == 400 and "must not be after" in r.content.decode()
    r = client.get("/dashboards/?period=custom&start=not-a-date&end=2026-05-01")
    assert r.status_code == 400 and "Enter a valid date" in r.content.decode()
    # A panel with a nonsense value still answers (it matches nothing), and unknown panels 404.
    assert client.get("/dashboards/panel/latency?api_key=abc&period=zzz").status_code == 200
    assert client.get("/dashboards/panel/nope").status_code == 404


def test_benchmark_form_errors(member, configs) -> None:  # type: ignore[no-untyped-def]
    _, client = member
    bad = SimpleUploadedFile("items.csv", b"question,answer\nwhat,1\n", content_type="text/csv")
    r = client.post(
        "/benchmarks/",
        {"name": "b", "labelled_set": "upload", "file": bad, "configurations": [configs[0].slug]},
    )
    assert (
        r.status_code == 400
        and "needs a header row with &#x27;prompt&#x27; and &#x27;gold&#x27;" in r.content.decode()
    )
    binary = SimpleUploadedFile(
        "items.jsonl", b"\xff\xfe\x00bad", content_type="application/octet-stream"
    )
    r = client.post(
        "/benchmarks/",
        {
            "name": "b",
            "labelled_set": "upload",
            "file": binary,
            "configurations": [configs[0].slug],
        },
    )
    assert r.status_code == 400 and "not UTF-8" in r.content.decode()
    r = client.post("/benchmarks/", {"name": "b", "labelled_set": "generated", "n": "5"})
    assert r.status_code == 400 and "This field is required" in r.content.decode()
    r = client.post(
        "/benchmarks/",
        {
            "name": "b",
            "labelled_set": "generated",
            "n": "5000",
            "configurations": [configs[0].slug],
        },
    )
    assert r.status_code == 400
    assert BenchmarkRun.objects.count() == 0


def test_benchmark_run_starts_from_an_upload(member, configs) -> None:  # type: ignore[no-untyped-def]
    _, client = member
    good = SimpleUploadedFile(
        "items.jsonl", b'{"prompt": "2+3?", "gold": "5"}\n{"prompt": "4*4?", "gold": 16}\n'
    )
    r = client.post(
        "/benchmarks/",
        {
            "name": "mine",
            "labelled_set": "upload",
            "file": good,
            "configurations": [c.slug for c in configs],
        },
    )
    assert r.status_code == 302
    run = BenchmarkRun.objects.get()
    assert (run.name, run.planned, run.labelled_set) == ("mine", 4, "upload")
    html = client.get(r["Location"]).content.decode()
    assert "0 of 4 queries finished" in html and 'hx-trigger="every 1s"' in html
    assert client.get(f"/benchmarks/{run.pk + 1}/").status_code == 404


def test_routers_page_shows_evaluation_and_guards_activation(member, configs) -> None:  # type: ignore[no-untyped-def]
    m, client = member
    version = RouterVersion.objects.create(
        name="v-test", learner="meta-logit", status="ready", progress=1.0,
        trained_on={"prompts": 40, "outcome_rows": 80, "candidates": [c.slug for c in configs]},
        evaluation={"n_prompts": 12, "n_configs": 2, "policies": {
            "router": {"accuracy": 0.5, "mean_cost": 1e-6, "cop": 2e-6, "gap_closed": 0.4},
            "best_single_cop": {"accuracy": 0.4, "mean_cost": 1e-6, "cop": 2.5e-6, "config_id": configs[0].slug},
            "oracle_min_cop": {"accuracy": 0.7, "mean_cost": 8e-7, "cop": 1.1e-6},
        }},
        significance={"n_prompts": 60, "verdict": "better", "passes": True, "diff": -5e-7,
                      "ci_low": -9e-7, "ci_high": -1e-7, "confidence": 0.95,
                      "single_config": configs[0].slug, "serve_config": configs[0].slug},
    )  # fmt: skip
    html = client.get("/routers/").content.decode()
    assert "v-test" in html and "40 prompts" in html
    assert 'data-floor="better"' in html and "on 60 prompts: may serve" in html
    html = client.get(f"/routers/{version.pk}/").content.decode()
    assert "Oracle: minimum cost-of-pass" in html and "fig-eval" in html
    # A member who is not an admin cannot change what serves.
    r = client.post(f"/routers/{version.pk}/activate")
    assert r.status_code == 400 and "Only a team admin" in r.content.decode()
    assert not RouterVersion.objects.get(pk=version.pk).is_active
    TeamMembership.objects.filter(pk=m.pk).update(role="admin")
    assert client.post(f"/routers/{version.pk}/activate").status_code == 302
    assert RouterVersion.objects.get(pk=version.pk).is_active
    # Shadowing the active version is refused with the service's reason.
    r = client.post(f"/routers/{version.pk}/shadow", {"shadow": "on"})
    assert r.status_code == 400 and "cannot also be the shadow" in r.content.decode()


LOSING_FLOOR = {
    "n_prompts": 96,
    "verdict": "worse",
    "passes": False,
    "diff": 1.7e-5,
    "ci_low": 9e-6,
    "ci_high": 2.6e-5,
    "confidence": 0.95,
    "router_cop": 3.2e-5,
    "single_cop": 1.5e-5,
    "router_accuracy": 0.2,
    "single_accuracy": 0.4,
    "method": "5-fold cross-fitted",
    "router_choices": {"x": 96},
    "prompts_needed": 96,
}


def test_a_losing_router_is_refused_by_a_click_and_the_page_says_what_serves(
    member, configs
) -> None:  # type: ignore[no-untyped-def]
    from routerapp.models import AuditLog

    m, client = member
    TeamMembership.objects.filter(pk=m.pk).update(role="admin")
    single = configs[1].slug
    loser = RouterVersion.objects.create(
        name="calibrated", learner="meta-logit", status="ready", progress=1.0,
        trained_on={"prompts": 96, "candidates": [c.slug for c in configs]},
        significance={**LOSING_FLOOR, "single_config": single, "serve_config": single},
    )  # fmt: skip
    detail = client.get(f"/routers/{loser.pk}/").content.decode()
    assert 'data-verdict="worse"' in detail and "may not serve" in detail
    assert 'id="floor-refusal"' in detail and f"it loses to {single}" in detail
    r = client.post(f"/routers/{loser.pk}/activate")
    body = r.content.decode()
    assert r.status_code == 400 and "it loses to" in body and "95% CI" in body
    assert not RouterVersion.objects.filter(is_active=True).exists()
    assert not AuditLog.objects.filter(action="activate").exists()
    page = client.get("/routers/").content.decode()
    assert 'id="serving-now"' in page and "No router version serves" in page
    assert f"<code>{single}</code>, the best single configuration" in page
    assert "Why: router version" in page and 'data-floor="worse"' in page
    # The admin cannot flip is_active by hand, and its action goes through the same check.
    admin_user = m.user
    admin_user.is_staff = admin_user.is_superuser = True
    admin_user.save()
    r = client.post(
        "/admin/routerapp/routerversion/",
        {"action": "activate", "_selected_action": [loser.pk]},
        follow=True,
    )
    assert r.status_code == 200 and "it loses to" in r.content.decode()
    assert not RouterVersion.objects.filter(is_active=True).exists()
    change = client.get(f"/admin/routerapp/routerversion/{loser.pk}/change/").content.decode()
    assert 'name="is_active"' not in change


def test_training_from_a_thin_log_fails_visibly(
    member, configs, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    m, client = member
    TeamMembership.objects.filter(pk=m.pk).update(role="admin")
    r = client.post("/routers/train", {"name": "too-early"})
    assert r.status_code == 302
    version = RouterVersion.objects.get(name="too-early")
    assert version.status == "training"
    from routerapp.services.routers import router_version_fit

    router_version_fit(version_id=version.pk)
    html = client.get(f"/routers/{version.pk}/").content.decode()
    assert "Training failed" in html and "graded prompts" in html


def test_cost_of_pass_with_nothing_correct_says_so(member, configs) -> None:  # type: ignore[no-untyped-def]
    m, client = member
    for i in range(3):
        Query.objects.create(
            team=m.team, prompt=f"q{i}", configuration=configs[0], status="done",
            graded_correct=False, cost_usd="0.000001", latency_ms=900,
        )  # fmt: skip
    rollup_rebuild()
    html = client.get("/dashboards/panel/cost-of-pass").content.decode()
    assert 'data-nochart="cost-of-pass"' in html and "infinite for every configuration" in html
    assert "<table" in html and "fig-cost-of-pass" not in html
    mix = client.get("/dashboards/panel/decisions").content.decode()
    assert '"dtick": 1' in mix  # a handful of queries a day: whole-number ticks


@pytest.mark.skipif(
    not (SHARED / "suites" / "game24-strategies").is_dir(),
    reason="shared suites absent",
)
def test_training_from_a_suite_of_the_data_folder(member, configs, settings) -> None:  # type: ignore[no-untyped-def]
    from routerapp.services.routers import router_version_fit

    settings.SHARED_DATA_DIR = str(SHARED)
    m, admin = member
    TeamMembership.objects.filter(pk=m.pk).update(role="admin")
    page = admin.get("/routers/").content.decode()
    assert 'value="suite:game24-strategies"' in page
    r = admin.post("/routers/train", {"source": "suite:game24-strategies", "name": "g24"})
    assert r.status_code == 302
    version = RouterVersion.objects.get(name="g24")
    version = router_version_fit(version_id=version.pk)
    assert version.status == "ready" and version.trained_on["suite"] == "game24-strategies"
    r = admin.post("/routers/train", {"source": "suite:../../etc"})
    assert r.status_code == 400 and RouterVersion.objects.count() == 1


@pytest.mark.skipif(
    not (SHARED / "data" / "dev_labeled_sets.parquet").is_file(),
    reason="shared labelled sets absent",
)
def test_benchmark_from_a_labelled_set_of_the_data_folder(member, configs, settings) -> None:  # type: ignore[no-untyped-def]
    settings.SHARED_DATA_DIR = str(SHARED)
    _, admin = member
    config = configs[0]
    page = admin.get("/benchmarks/").content.decode()
    assert "gsm8k_test" in page
    r = admin.post(
        "/benchmarks/",
        {
            "name": "gsm",
            "labelled_set": "shared",
            "dataset": "gsm8k_test",
            "n": 3,
            "seed": 1,
            "configurations": [config.slug],
        },
    )
    assert r.status_code == 302, r.content.decode()[:2000]
    run = BenchmarkRun.objects.get(name="gsm")
    assert run.labelled_set == "shared" and run.items_count == 3 and run.planned == 3
    assert all(item["task"] == "gsm8k_test" and item["gold"] for item in run.items)
    r = admin.post(
        "/benchmarks/",
        {
            "name": "x",
            "labelled_set": "shared",
            "dataset": "",
            "n": 3,
            "configurations": [config.slug],
        },
    )
    assert r.status_code == 400 and "Pick a labelled set" in r.content.decode()


def test_query_log_pages_by_cursor_and_ignores_bad_cursors(member, configs) -> None:  # type: ignore[no-untyped-def]
    m, client = member
    for i in range(55):
        Query.objects.create(team=m.team, prompt=f"q{i}", configuration=configs[0])
    first = client.get("/queries/")
    assert first.status_code == 200
    cursor = re.search(r"before=([^\"&]+)", first.content.decode())
    assert cursor is not None
    second = client.get(f"/queries/?before={cursor.group(1)}")
    assert second.status_code == 200

    def shown(response) -> set[int]:  # type: ignore[no-untyped-def]
        return {int(n) for n in re.findall(r">q(\d+)</a>", response.content.decode())}

    assert shown(first) == set(range(5, 55)) and shown(second) == set(range(5))
    for bad in ("not-a-date", "2026-13-45T00:00:00"):
        assert client.get(f"/queries/?before={bad}").status_code == 200
