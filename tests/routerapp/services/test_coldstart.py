"""Cold start: a router for this installation's endpoints seeded from public outcome tables."""

from __future__ import annotations

import random
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
from django.core.management import CommandError, call_command

from routerapp.errors import InvalidInput
from routerapp.models import Configuration, ModelEndpoint, RouterVersion, StrategyConfig
from routerapp.services import coldstart as cs
from routerapp.services import routers as svc
from routerapp.services.bootstrap import bootstrap
from routerapp.services.routing import RequestConstraints, decide

pytestmark = pytest.mark.django_db

SHARED = Path(__file__).resolve().parents[4] / "shared"
# (source model, list price in/out, accuracy on 'easy', on 'hard')
PUBLIC = [
    ("gpt-4-1106-preview", 10.0, 30.0, 0.97, 0.9),
    ("claude-instant-v1", 0.8, 2.4, 0.95, 0.3),
    ("meta/llama-2-70b-chat", 0.7, 0.9, 0.97, 0.0),
]


def write_public_suite(root: Path, name: str = "pub", n: int = 300, seed: int = 0) -> str:
    """A suite in the data folder's layout: easy prompts every model solves, hard ones only the
    expensive one does; real-looking token counts, no prices in the outcome rows."""
    rng = random.Random(seed)
    rows, prompts = [], []
    for i in range(n):
        tag = "easy" if i % 2 else "hard"
        uid = f"pub::{tag}-{i}"
        prompts.append({"prompt_uid": uid, "dataset": tag, "prompt": f"{tag} question {i}?"})
        for model, pin, pout, p_easy, p_hard in PUBLIC:
            out_tok = rng.randint(80, 120)
            rows.append({
                "prompt_uid": uid, "dataset": tag, "config_id": f"{model}|single",
                "model": model, "strategy": "single",
                "correct": float(rng.random() < (p_easy if tag == "easy" else p_hard)),
                "cost_usd": (200 * pin + out_tok * pout) / 1e6,
                "input_tokens": 200.0, "output_tokens": float(out_tok),
            })  # fmt: skip
    out = pd.DataFrame(rows)
    pr = pd.DataFrame(prompts)
    test = {u for u in pr["prompt_uid"] if int(u.rsplit("-", 1)[1]) % 10 >= 7}
    suite = root / "suites" / name
    suite.mkdir(parents=True)
    cands = out[["config_id", "model", "strategy"]].drop_duplicates()
    cands.to_csv(suite / "candidates.csv", index=False)
    out[~out.prompt_uid.isin(test)].to_parquet(suite / "train_outcomes.parquet")
    out[out.prompt_uid.isin(test)].to_parquet(suite / "test_outcomes.parquet")
    pr[~pr.prompt_uid.isin(test)].to_parquet(suite / "train_prompts.parquet")
    pr[pr.prompt_uid.isin(test)].to_parquet(suite / "test_prompts.parquet")
    (root / "data").mkdir(exist_ok=True)
    pd.DataFrame(
        [{"model": m, "input_usd_per_mtok": a, "output_usd_per_mtok": b, "price_source": "list"}
         for m, a, b, _, _ in PUBLIC]
    ).to_csv(root / "data" / "prices.csv", index=False)  # fmt: skip
    return f"suite:{name}"


def install_endpoints() -> None:
    """A real installation: a large and a small hosted model and a self-hosted 8B model, each
    with the greedy and the 5-vote strategies (plus the bootstrap's CPU model). The large model
    runs at a negotiated price twice the 8B model's: cost-of-pass rewards sending it the hard
    prompts only when it costs less than about 2.9x the 8B model (which solves no hard one)."""
    bootstrap(admin_password="x" * 12)
    greedy = StrategyConfig.objects.get(name="greedy")
    vote = StrategyConfig.objects.get(name="majority-5")
    for name, pin, pout, family in [
        ("gpt-4", "0.4", "0.4", None),
        ("claude-instant-v1", "0.8", "2.4", None),
        ("llama-3.1-8b-local", "0.2", "0.2", "llama"),
    ]:
        ep = ModelEndpoint.objects.create(
            name=name, engine="openai_compat", input_usd_per_mtok=Decimal(pin),
            output_usd_per_mtok=Decimal(pout), descriptors={"family": family} if family else {},
        )  # fmt: skip
        for strategy in (greedy, vote):
            Configuration.objects.create(
                endpoint=ep, strategy=strategy, slug=f"{name}/{strategy.name}"
            )


@pytest.fixture
def public(settings, tmp_path):  # type: ignore[no-untyped-def]
    settings.SHARED_DATA_DIR = str(tmp_path)
    settings.ROUTER_EXPLORE = False
    source = write_public_suite(tmp_path)
    install_endpoints()
    return source


def test_proposals_exact_alias_and_nearest_by_family_and_price(public) -> None:  # type: ignore[no-untyped-def]
    assert public in cs.outcome_sources()
    endpoints = list(ModelEndpoint.objects.order_by("name"))
    got = {p.endpoint: p for p in cs.propose_mapping(source=public, endpoints=endpoints)}
    assert (got["claude-instant-v1"].model, got["claude-instant-v1"].how) == (
        "claude-instant-v1",
        "exact",
    )
    assert (got["gpt-4"].model, got["gpt-4"].how) == ("gpt-4-1106-preview", "alias")
    assert (got["llama-3.1-8b-local"].model, got["llama-3.1-8b-local"].how) == (
        "meta/llama-2-70b-chat",
        "nearest",
    )
    assert "same family (llama)" in got["llama-3.1-8b-local"].detail
    # No smollm2 model: the nearest by price is proposed, and says it is another family.
    assert got["smollm2-135m"].how == "nearest"
    assert "no smollm2-family model" in got["smollm2-135m"].detail


def test_a_seeded_version_fits_passes_the_floor_serves_and_says_what_it_learned_from(
    public,
) -> None:  # type: ignore[no-untyped-def]
    mapping = {
        "gpt-4": "gpt-4-1106-preview",
        "claude-instant-v1": "claude-instant-v1",
        "llama-3.1-8b-local": "meta/llama-2-70b-chat",
    }
    version = cs.router_version_seed(source=public, mapping=mapping, activate=True, enqueue=False)
    version = svc.router_version_fit(version_id=version.pk)
    assert version.status == RouterVersion.Status.READY, version.error
    prior = version.trained_on["prior"]
    assert prior["source"] == public and prior["mapping"] == mapping
    assert prior["seeded_configurations"] == [
        "claude-instant-v1/greedy", "gpt-4/greedy", "llama-3.1-8b-local/greedy",
    ]  # fmt: skip
    assert "gpt-4/majority-5" in prior["configurations_without_rows"]
    assert version.trained_on["test_prompts"] == 90
    floor = version.significance
    assert floor["passes"] and floor["verdict"] == "better", floor
    assert floor["n_prompts"] == 90 and floor["ci_high"] < 0
    assert RouterVersion.objects.get(pk=version.pk).is_active
    # The installation's prices, not the source's: the 8B model's rows cost 0.2 USD/Mtok.
    table, *_ = cs.mapped_outcomes(source=public, mapping=mapping)
    llama = table[table.config_id == "llama-3.1-8b-local/greedy"]
    assert llama.cost_usd.max() <= (200 * 0.2 + 120 * 0.2) / 1e6 + 1e-12
    # It serves: hard prompts go to the large model, easy ones to a cheap one.
    hard = decide(prompt="hard question 1001?", task="hard", constraints=RequestConstraints(),
                  prompt_tokens=20)  # fmt: skip
    easy = decide(prompt="easy question 1002?", task="easy", constraints=RequestConstraints(),
                  prompt_tokens=20)  # fmt: skip
    assert hard.router_version == version and hard.configuration.slug == "gpt-4/greedy"
    assert easy.configuration.endpoint.name != "gpt-4"


def test_bad_mappings_are_refused_and_write_nothing(public) -> None:  # type: ignore[no-untyped-def]
    cases = [
        ({"gpt-4": "gpt-5-ultra", "claude-instant-v1": "claude-instant-v1"}, "has no model"),
        ({"nope": "gpt-4-1106-preview", "gpt-4": "claude-instant-v1"}, "unknown or disabled"),
        ({"gpt-4": "gpt-4-1106-preview"}, "fewer than two"),
        ({}, "at least two"),
    ]
    for mapping, message in cases:
        with pytest.raises(InvalidInput, match=message):
            cs.router_version_seed(source=public, mapping=mapping, enqueue=False)
    with pytest.raises(InvalidInput, match="unknown outcome source"):
        cs.router_version_seed(source="suite:../../etc", mapping={"gpt-4": "x"}, enqueue=False)
    assert not RouterVersion.objects.exists()


def test_router_seed_command_proposes_then_fits(public) -> None:  # type: ignore[no-untyped-def]
    out = StringIO()
    call_command("router_seed", "--source", public, stdout=out)
    assert "gpt-4=gpt-4-1106-preview  # alias" in out.getvalue()
    assert not RouterVersion.objects.exists()
    out = StringIO()
    call_command(
        "router_seed", "--source", public, "--map", "gpt-4=gpt-4-1106-preview",
        "--map", "claude-instant-v1=claude-instant-v1", "--activate", stdout=out,
    )  # fmt: skip
    assert "is ready and active" in out.getvalue() and "held-out prompts: tie" in out.getvalue()
    with pytest.raises(CommandError, match="ENDPOINT=MODEL"):
        call_command("router_seed", "--source", public, "--map", "gpt-4", stdout=StringIO())


@pytest.mark.skipif(
    not (SHARED / "suites" / "routerbench-dev").is_dir(), reason="shared suites absent"
)
def test_seeding_from_routerbench_of_the_data_folder(settings) -> None:  # type: ignore[no-untyped-def]
    settings.SHARED_DATA_DIR = str(SHARED)
    install_endpoints()
    endpoints = list(ModelEndpoint.objects.exclude(name="smollm2-135m"))
    proposals = cs.propose_mapping(source="suite:routerbench-dev", endpoints=endpoints)
    mapping = {p.endpoint: p.model for p in proposals if p.model}
    assert mapping["gpt-4"] == "gpt-4-1106-preview"
    version = cs.router_version_seed(source="suite:routerbench-dev", mapping=mapping, enqueue=False)
    version = svc.router_version_fit(version_id=version.pk)
    assert version.status == "ready", version.error
    assert version.significance["n_prompts"] > 500
    assert version.trained_on["prior"]["datasets"] == ["arc-challenge", "mbpp", "winogrande"]
