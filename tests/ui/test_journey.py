"""A team's day in a real browser (headless Chromium) against the real stack: live Django
server, Postgres, a real Celery worker process on Redis, the real CPU model.

The journey: log in; start a small benchmark run and watch its progress bar reach 100 %; train
a router version from the log it produced and activate it; ask the playground a question and
watch the router's decision, the samples, the vote and the ledger arrive; grade it; cancel a
long one while it runs; open every dashboard (the team also has a synthetic history so the
charts are populated); read the query log. COSTPASS_SCREENSHOTS=1 saves each page under
bench/screenshots/.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from routerapp.models import (
    BenchmarkRun,
    BudgetPolicy,
    Configuration,
    ModelEndpoint,
    Query,
    RouterVersion,
    StrategyConfig,
    Team,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.browser,
    pytest.mark.worker,
    pytest.mark.model,
    pytest.mark.slow,
]

PASSWORD = "correct-horse-battery-staple"
PANELS = ["spend", "cost-of-pass", "frontier", "latency", "tokens", "decisions"]


def _config(name: str, strategy: str, params: dict[str, Any]) -> Configuration:
    endpoint = ModelEndpoint.objects.get(name="smollm2-135m")
    sc, _ = StrategyConfig.objects.update_or_create(
        name=name, defaults={"strategy": strategy, "params": params}
    )
    config, _ = Configuration.objects.get_or_create(
        endpoint=endpoint, strategy=sc, defaults={"slug": f"smollm2-135m/{name}"}
    )
    return config


@pytest.fixture
def team_with_history() -> dict[str, Any]:
    """The bootstrap's demo team and admin, two small configurations for the CPU model (the
    only ones enabled, so runs stay short), API keys and budgets, and 30 days of synthetic
    history so the dashboards have something to draw."""
    from bench import synthetic_log
    from routerapp.services.apikeys import api_key_create
    from routerapp.services.bootstrap import bootstrap
    from routerapp.services.rollups import rollup_rebuild

    bootstrap(admin_password=PASSWORD)
    team = Team.objects.get(name="demo")
    greedy = _config("ui-greedy", "single", {"temperature": 0.0, "max_tokens": 24})
    vote = _config("ui-vote-3", "majority_vote", {"n": 3, "temperature": 0.8, "max_tokens": 24})
    key, _ = api_key_create(team=team, name="backend-service")
    api_key_create(team=team, name="batch-jobs")
    synthetic_log.fill(rows=2500, teams=[team], days=30, seed=5)
    # Its synthetic router decided the history's live queries; it does not serve now.
    RouterVersion.objects.filter(name="synthetic-router").update(is_active=False)
    Configuration.objects.exclude(pk__in=[greedy.pk, vote.pk]).update(enabled=False)
    BudgetPolicy.objects.create(
        team=team, name="team monthly", period="month", limit_usd=Decimal("2.00"), mode="soft"
    )
    BudgetPolicy.objects.create(
        team=team, api_key=key, name="backend daily", period="day",
        limit_usd=Decimal("0.05"), mode="soft",
    )  # fmt: skip
    rollup_rebuild()
    return {"team": team, "greedy": greedy, "vote": vote}


def _login(page: Any, base: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def test_team_journey(  # type: ignore[no-untyped-def]
    live_server, celery_worker_process, team_with_history, page, shoot
) -> None:
    from playwright.sync_api import expect

    base = live_server.url
    try:
        _journey(page, base, team_with_history, shoot, expect)
    except Exception:
        log = Path(celery_worker_process.log_path).read_text()[-4000:]
        print(f"--- worker log tail ---\n{log}")
        raise


def _journey(page: Any, base: str, data: dict[str, Any], shoot: Any, expect: Any) -> None:
    # --- log in ------------------------------------------------------------------------------
    page.goto(f"{base}/playground/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/playground/"))
    page.fill("#id_username", "admin")
    page.fill("#id_password", "wrong")
    page.click("button[type=submit]")
    expect(page.locator(".errorlist")).to_contain_text("correct username and password")
    shoot(page, "01-login")
    _login(page, base)
    expect(page.locator("h1")).to_contain_text("Team demo")

    # --- a benchmark run: a bad file is a form error, then 10 generated problems x 2 ---------
    page.goto(f"{base}/benchmarks/")
    page.fill("#id_name", "first-bench")
    page.check("input[name=labelled_set][value=upload]")
    page.set_input_files(
        "#id_file",
        files=[
            {"name": "items.csv", "mimeType": "text/csv", "buffer": b"question,answer\n1+1,2\n"}
        ],
    )
    page.check(f"input[name=configurations][value='{data['greedy'].slug}']")
    page.click("#benchmark-form button[type=submit]")
    expect(page.locator("#id_file_error")).to_contain_text(
        "needs a header row with 'prompt' and 'gold'"
    )
    assert BenchmarkRun.objects.count() == 0
    shoot(page, "02-benchmark-form-error")
    page.check("input[name=labelled_set][value=generated]")
    page.fill("#id_n", "10")
    for config in (data["greedy"], data["vote"]):
        page.check(f"input[name=configurations][value='{config.slug}']")
    page.click("#benchmark-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/benchmarks/\d+/$"))
    live = page.locator("#benchmark-live")
    expect(live).to_have_attribute("data-status", "done", timeout=600_000)
    bar = page.locator("#benchmark-live [role=progressbar]")
    expect(bar).to_have_attribute("aria-valuenow", "100.0")
    expect(page.locator("#benchmark-progress-text")).to_contain_text("20 of 20 queries")
    expect(page.locator("#benchmark-results tbody tr")).to_have_count(2)
    shoot(page, "03-benchmark-run")

    # --- train a router version from the log, watch it, activate it --------------------------
    page.goto(f"{base}/routers/")
    page.fill("#id_name", "first-router")
    page.click("#train-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/routers/\d+/$"))
    status = page.locator("#router-status")
    expect(status).to_have_attribute("data-status", "ready", timeout=300_000)
    version = RouterVersion.objects.get(name="first-router")
    assert version.status == "ready", version.error
    expect(page.locator("[data-table=evaluation] tbody tr").first).to_be_visible()
    page.click("#activate")
    expect(page.locator("#active-badge")).to_be_visible()
    assert RouterVersion.objects.get(pk=version.pk).is_active
    page.wait_for_selector("#fig-eval-plot[data-ready]")
    shoot(page, "04-router-detail")
    page.goto(f"{base}/routers/")
    expect(page.locator(f"#versions-table tr[data-version='{version.pk}']")).to_contain_text(
        "active"
    )
    page.wait_for_selector("#fig-active-eval-plot[data-ready]")
    shoot(page, "05-routers")

    # --- the playground: the router decides, the samples arrive, the answer is graded --------
    page.goto(f"{base}/playground/")
    page.fill("#id_prompt", "What is 6 + 7? Answer with a number.")
    page.fill("#id_task", "arithmetic")
    page.click("#playground-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/queries/[0-9a-f-]{36}/$"))
    expect(page.locator("#query-live")).to_have_attribute("data-status", "done", timeout=300_000)
    query = Query.objects.order_by("-created_at").first()
    assert query is not None and query.router_version_id == version.pk
    alternatives = page.locator("table:has(caption:text('Alternatives weighed')) tbody tr")
    expect(alternatives).to_have_count(2)
    expect(page.locator("#final-answer")).to_be_visible()
    expect(page.locator("#ledger")).to_contain_text("Prompt tokens")
    # Grade it as a person would: 13 is right, anything else is not.
    right = Query.objects.get(pk=query.pk).extracted_answer.strip() == "13"
    page.click("#feedback button.ok" if right else "#feedback button.danger")
    expect(page.locator("#grade")).to_have_text("graded correct" if right else "graded incorrect")
    assert Query.objects.get(pk=query.pk).graded_correct is right
    shoot(page, "06-query-routed")

    # Three samples, their extracted answers and the vote.
    page.goto(f"{base}/playground/")
    page.fill("#id_prompt", "What is 12 - 5? Answer with a number.")
    page.click("summary:text('Constraints')")
    page.select_option("#id_configuration", data["vote"].slug)
    page.click("#playground-form button[type=submit]")
    expect(page.locator("#query-live")).to_have_attribute("data-status", "done", timeout=300_000)
    expect(page.locator("#samples-table tbody tr")).to_have_count(3)
    expect(page.locator("#query-live h3:text('Vote')")).to_be_visible()
    shoot(page, "07-query-vote")

    # Cancel a long generation while it runs; what it generated is billed.
    long = _config("ui-long", "single", {"temperature": 0.8, "max_tokens": 600})
    page.goto(f"{base}/playground/")
    page.fill("#id_prompt", "Write a long story about a dragon who learns arithmetic.")
    page.click("summary:text('Constraints')")
    page.select_option("#id_configuration", long.slug)
    page.click("#playground-form button[type=submit]")
    live = page.locator("#query-live")
    expect(live).to_have_attribute("data-status", "running", timeout=120_000)
    page.wait_for_timeout(1500)  # let it generate some tokens
    page.click("#query-live button.danger")
    expect(live).to_have_attribute("data-status", "cancelled", timeout=60_000)
    cancelled = Query.objects.order_by("-created_at").first()
    assert cancelled is not None and cancelled.status == "cancelled"
    assert cancelled.completion_tokens > 0 and cancelled.cost_usd > 0
    expect(page.locator("#ledger")).to_contain_text(f"{cancelled.completion_tokens}")
    shoot(page, "08-query-cancelled")

    # --- dashboards: every panel draws, tables and filters work ------------------------------
    page.goto(f"{base}/dashboards/?period=30")
    for slug in PANELS:
        page.wait_for_selector(f"#panel-{slug} .chart[data-ready]", timeout=30_000)
    expect(page.locator("[data-empty]")).to_have_count(0)
    page.click("[data-table=latency] summary")
    expect(page.locator("[data-table=latency] tbody tr").first).to_be_visible()
    shoot(page, "09-dashboards")
    page.select_option("#id_configuration", data["greedy"].slug)
    page.click("#filters-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"configuration=smollm2-135m%2Fui-greedy"))
    page.wait_for_selector("#panel-latency .chart[data-ready]", timeout=30_000)
    expect(page.locator("#panel-tokens")).to_contain_text("ui-greedy")
    expect(page.locator("#panel-tokens")).not_to_contain_text("ui-vote-3")
    shoot(page, "10-dashboards-filtered")

    # --- the query log and the home page ----------------------------------------------------
    page.goto(f"{base}/queries/")
    expect(page.locator("table tbody tr").first).to_be_visible()
    shoot(page, "11-queries")
    page.goto(f"{base}/")
    expect(page.locator(".kpi").first).to_be_visible()
    shoot(page, "12-home")
    page.goto(f"{base}/playground/")
    shoot(page, "13-playground")
