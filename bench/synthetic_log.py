"""A synthetic but realistic query log, for the dashboard scale benchmark and for populated UI
screenshots. Nothing here is a real outcome: it exists to load the dashboards.

Shape: teams of very different sizes (a Zipf spread), several API keys per team plus the
playground, a daily rhythm with quieter weekends and growth over the period, each team's own
mix of configurations and task tags, token counts that grow with a strategy's sample count,
costs priced exactly from the endpoints' prices (12 decimals, like the worker's ledger), latency
that grows with the work, benchmark queries graded against gold, a few live ones graded by
feedback, and a handful of failures and cancellations.

On Postgres the rows go in with COPY (a million in about a minute); elsewhere bulk_create.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
from django.db import connection, transaction

from routerapp.models import (
    ApiKey,
    BudgetPolicy,
    Configuration,
    ModelEndpoint,
    Query,
    RouterVersion,
    StrategyConfig,
    Team,
)

# (name, display, USD per Mtok in, out, relative quality, seconds per 1k output tokens). The CPU
# model is the one bootstrap creates; the others are created disabled (the router never picks
# them): they only give the log the spread of a multi-model installation.
ENDPOINTS = [
    ("smollm2-135m", "SmolLM2-135M-Instruct (llama.cpp, CPU)", "0.05", "0.05", 0.15, 25.0),
    ("qwen2.5-1.5b", "Qwen2.5-1.5B (vLLM, synthetic)", "0.10", "0.20", 0.45, 4.0),
    ("llama-3.1-8b", "Llama-3.1-8B (vLLM, synthetic)", "0.20", "0.40", 0.62, 6.0),
    ("hosted-large", "Large hosted model (synthetic)", "2.50", "10.00", 0.85, 12.0),
]
# Accuracy added by a strategy over one greedy sample, by strategy config name.
STRATEGY_BOOST = {
    "greedy": 0.0,
    "sampled": -0.03,
    "majority-5": 0.10,
    "short-1-of-5": 0.06,
    "best-of-4": 0.07,
}
TASKS = ["", "arithmetic", "algebra", "gsm8k", "mmlu", "code", "support", "summarise"]
TASK_DIFFICULTY = np.array([0.0, -0.1, 0.05, 0.1, 0.0, 0.15, -0.05, 0.0])
SOURCES = np.array(["api", "chat", "ui", "benchmark"])

COLUMNS = [
    "id", "team_id", "api_key_id", "user_id", "source", "prompt", "messages", "task",
    "answer_kind", "gold", "constraints", "status", "configuration_id", "router_version_id",
    "predicted_p_correct", "predicted_cost_usd", "decision", "answer", "extracted_answer",
    "votes", "samples_planned", "samples_done", "prompt_tokens", "completion_tokens",
    "engine_requests", "scorer_calls", "cost_usd", "reserved_usd", "budget_windows",
    "created_at", "started_at", "finished_at", "latency_ms", "error", "cancel_requested",
    "feedback_correct", "feedback_score", "graded_correct", "budget_flags", "benchmark_run_id",
    "end_user", "request_options", "cached_prompt_tokens", "reasoning_tokens", "billed_prices",
    "attempts",
]  # fmt: skip


@dataclass
class Catalog:
    configurations: list[Configuration]
    prices_in: np.ndarray  # micro-USD per Mtok (integers), per configuration
    prices_out: np.ndarray
    samples: np.ndarray
    quality: np.ndarray  # base p(correct) per configuration
    speed: np.ndarray  # seconds per 1k completion tokens
    router_version: RouterVersion | None


def catalog_ensure(*, router: bool = True) -> Catalog:
    """Create (or reuse) the endpoints, the bootstrap's strategies, their configurations and,
    with `router`, an active (synthetic, not servable) router version with an evaluation."""
    from routerapp.services.bootstrap import DEFAULT_STRATEGIES
    from workers.strategies import get_strategy

    configs, p_in, p_out, samples, quality, speed = [], [], [], [], [], []
    for name, display, pin, pout, q, s in ENDPOINTS:
        endpoint, _ = ModelEndpoint.objects.get_or_create(
            name=name,
            defaults={
                "display_name": display,
                "engine": ModelEndpoint.Engine.LLAMA_CPP
                if name == "smollm2-135m"
                else ModelEndpoint.Engine.OPENAI_COMPAT,
                "engine_params": {}
                if name == "smollm2-135m"
                else {"base_url": "http://127.0.0.1:9/v1", "model": name},
                "input_usd_per_mtok": Decimal(pin),
                "output_usd_per_mtok": Decimal(pout),
                "enabled": name == "smollm2-135m",
            },
        )
        for sname, slug, params, description in DEFAULT_STRATEGIES:
            strategy, _ = StrategyConfig.objects.get_or_create(
                name=sname,
                defaults={"strategy": slug, "params": params, "description": description},
            )
            impl = get_strategy(strategy.strategy)
            try:
                k = impl.planned_samples(impl.validate_params(strategy.params))
            except ValueError:  # an older row with other parameters: leave it out
                continue
            if name == "hosted-large" and k > 1:
                continue  # nobody samples the expensive model five times
            config, _ = Configuration.objects.get_or_create(
                endpoint=endpoint, strategy=strategy, defaults={"slug": f"{name}/{sname}"}
            )
            configs.append(config)
            p_in.append(int(endpoint.input_usd_per_mtok * 1_000_000))
            p_out.append(int(endpoint.output_usd_per_mtok * 1_000_000))
            samples.append(k)
            quality.append(min(0.97, q + STRATEGY_BOOST.get(sname, 0.0)))
            speed.append(s)
    version = RouterVersion.objects.filter(name="synthetic-router").first()
    if version is None and router:
        RouterVersion.objects.filter(is_active=True).update(is_active=False)
        version = RouterVersion.objects.create(
            name="synthetic-router",
            learner="synthetic",
            status=RouterVersion.Status.READY,
            is_active=True,
            progress=1.0,
            evaluation={
                "n_prompts": 500,
                "n_configs": len(configs),
                "policies": {
                    "router": {"accuracy": 0.71, "mean_cost": 0.00021, "cop": 0.000296, "gap_closed": 0.58, "aiq": 0.66},
                    "best_single_cop": {"accuracy": 0.62, "mean_cost": 0.00024, "cop": 0.000387, "gap_closed": 0.0, "config_id": "llama-3.1-8b/greedy"},
                    "random": {"accuracy": 0.52, "mean_cost": 0.0011, "cop": 0.00212, "gap_closed": -10.6},
                    "oracle_min_cop": {"accuracy": 0.88, "mean_cost": 0.00014, "cop": 0.000159, "gap_closed": 1.0},
                },
            },
        )  # fmt: skip
    return Catalog(
        configurations=configs,
        prices_in=np.array(p_in, dtype=np.int64),
        prices_out=np.array(p_out, dtype=np.int64),
        samples=np.array(samples),
        quality=np.array(quality),
        speed=np.array(speed),
        router_version=version,
    )


def teams_ensure(n: int, *, prefix: str = "team") -> list[Team]:
    """Create n teams with 1-4 API keys each and a monthly team budget (some keys get a daily one)."""
    rng = np.random.default_rng(11)
    teams = []
    for i in range(n):
        team, created = Team.objects.get_or_create(name=f"{prefix}-{i:02d}")
        teams.append(team)
        if not created:
            continue
        for j in range(int(rng.integers(1, 5))):
            key = ApiKey.objects.create(
                team=team,
                name=f"service-{j}",
                prefix=f"cp_{team.pk:03d}{j}{uuid.uuid4().hex[:6]}",
                hashed_key=uuid.uuid4().hex + uuid.uuid4().hex,
            )
            if j == 0:
                BudgetPolicy.objects.create(
                    team=team, api_key=key, name=f"{key.name} daily", period="day",
                    limit_usd=Decimal("5.00"), mode=BudgetPolicy.Mode.SOFT,
                )  # fmt: skip
        BudgetPolicy.objects.create(
            team=team, name="team monthly", period="month", limit_usd=Decimal("250.00")
        )
    return teams


def _weights(rng: np.random.Generator, n: int, concentration: float) -> np.ndarray:
    w = rng.dirichlet(np.full(n, concentration))
    return w / w.sum()


def generate(
    *,
    rows: int,
    teams: list[Team],
    catalog: Catalog,
    days: int = 90,
    end: dt.datetime | None = None,
    seed: int = 0,
    team_weights: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Return the columns of `rows` synthetic finished queries (numpy arrays)."""
    rng = np.random.default_rng(seed)
    end = end or dt.datetime.now(dt.UTC)
    n_t, n_c = len(teams), len(catalog.configurations)
    if team_weights is None:
        team_weights = 1.0 / np.arange(1, n_t + 1) ** 1.1  # Zipf: the first team is the biggest
    team_weights = team_weights / team_weights.sum()
    team_idx = rng.choice(n_t, size=rows, p=team_weights)

    # Time: growth over the period, a daily rhythm, quieter weekends (rejection sampling).
    start = end - dt.timedelta(days=days)
    span_s = days * 86400
    offsets = np.empty(0)
    while offsets.size < rows:
        cand = rng.uniform(0, span_s, size=rows)
        t = start.timestamp() + cand
        hour = (t % 86400) / 3600
        weekday = ((t // 86400) + 3) % 7  # 1970-01-01 was a Thursday
        w = (0.5 + 0.5 * cand / span_s) * (0.35 + np.exp(-((hour - 14) ** 2) / 18))
        w *= np.where(weekday >= 5, 0.45, 1.0)
        keep = rng.uniform(0, 1.3, size=rows) < w
        offsets = np.concatenate([offsets, cand[keep]])
    created = start.timestamp() + np.sort(offsets[:rows])
    rng.shuffle(team_idx)

    # Per team: its configuration mix, task mix and keys.
    config_idx = np.empty(rows, dtype=np.int64)
    task_idx = np.empty(rows, dtype=np.int64)
    key_ids = np.full(rows, -1, dtype=np.int64)
    keys_by_team = {
        t.pk: list(ApiKey.objects.filter(team=t).values_list("pk", flat=True)) for t in teams
    }
    for ti, team in enumerate(teams):
        sel = np.flatnonzero(team_idx == ti)
        if not sel.size:
            continue
        config_idx[sel] = rng.choice(n_c, size=sel.size, p=_weights(rng, n_c, 0.6))
        task_idx[sel] = rng.choice(len(TASKS), size=sel.size, p=_weights(rng, len(TASKS), 0.8))
        keys = keys_by_team[team.pk]
        if keys:
            choice = rng.choice(len(keys) + 1, size=sel.size, p=_weights(rng, len(keys) + 1, 2.0))
            key_ids[sel] = np.where(choice < len(keys), np.array(keys + [-1])[choice], -1)

    source = SOURCES[rng.choice(4, size=rows, p=[0.55, 0.25, 0.08, 0.12])]
    benchmark = source == "benchmark"
    ui = source == "ui"
    key_ids[ui | benchmark] = -1  # the playground and benchmark runs use no key
    routed = ~benchmark & (rng.uniform(size=rows) < 0.7) & (catalog.router_version is not None)

    k = catalog.samples[config_idx]
    prompt_tokens = np.maximum(8, rng.lognormal(4.6, 0.7, size=rows)).astype(np.int64)
    per_sample = np.maximum(1, rng.lognormal(4.8, 0.8, size=rows)).astype(np.int64)
    completion = (per_sample * k * rng.uniform(0.6, 1.0, size=rows)).astype(np.int64)
    billed_prompt = prompt_tokens * k  # every sample reads the prompt
    status = np.where(
        rng.uniform(size=rows) < 0.97,
        "done",
        np.where(rng.uniform(size=rows) < 0.6, "failed", "cancelled"),
    )
    completion = np.where(status == "done", completion, completion // 3)
    cost_pico = (
        billed_prompt * catalog.prices_in[config_idx] + completion * catalog.prices_out[config_idx]
    )
    gen_s = completion / 1000 * catalog.speed[config_idx] / np.maximum(1, k / 2)
    latency_ms = ((0.15 + gen_s) * rng.lognormal(0, 0.35, size=rows) * 1000).astype(np.int64)
    p = np.clip(catalog.quality[config_idx] - TASK_DIFFICULTY[task_idx], 0.02, 0.99)
    correct = rng.uniform(size=rows) < p
    graded = (benchmark & (status == "done")) | (~benchmark & (rng.uniform(size=rows) < 0.06))
    return {
        "team_id": np.array([t.pk for t in teams])[team_idx],
        "config_idx": config_idx,
        "task_idx": task_idx,
        "api_key_id": key_ids,
        "source": source,
        "routed": routed,
        "samples": k,
        "prompt_tokens": billed_prompt,
        "completion_tokens": completion,
        "status": status,
        "cost_pico": cost_pico,
        "created": created,
        "latency_ms": latency_ms,
        "graded": graded,
        "correct": correct,
        "p": p,
    }


def _pico_to_str(v: int) -> str:
    return f"{v // 10**12}.{v % 10**12:012d}"


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def write(cols: dict[str, np.ndarray], catalog: Catalog) -> int:
    """Insert the generated rows (COPY on Postgres, bulk_create elsewhere); return the count."""
    config_ids = np.array([c.pk for c in catalog.configurations])
    slugs = [c.slug for c in catalog.configurations]
    n = len(cols["team_id"])
    if connection.vendor != "postgresql":
        return _write_orm(cols, catalog)
    buf = io.StringIO()
    extra_columns, extra_values = _default_columns()
    version_id = str(catalog.router_version.pk) if catalog.router_version else "\\N"
    decisions = [json.dumps({"configuration": s, "reason": "router"}) for s in slugs]
    for i in range(n):
        ci = int(cols["config_idx"][i])
        created = float(cols["created"][i])
        lat = int(cols["latency_ms"][i])
        graded = bool(cols["graded"][i])
        bench = cols["source"][i] == "benchmark"
        routed = bool(cols["routed"][i])
        status = str(cols["status"][i])
        key = int(cols["api_key_id"][i])
        cost = _pico_to_str(int(cols["cost_pico"][i]))
        row = [
            str(uuid.uuid4()), str(int(cols["team_id"][i])), "\\N" if key < 0 else str(key), "\\N",
            str(cols["source"][i]), f"synthetic prompt {i}", "\\N", TASKS[int(cols["task_idx"][i])],
            "math" if bench else "", "42" if bench else "", "{}", status, str(config_ids[ci]),
            version_id if routed else "\\N", f"{cols['p'][i]:.4f}" if routed else "\\N",
            cost if routed else "\\N", decisions[ci] if routed else "{}", "", "", "\\N",
            str(int(cols["samples"][i])), str(int(cols["samples"][i])), str(int(cols["prompt_tokens"][i])),
            str(int(cols["completion_tokens"][i])), str(int(cols["samples"][i])), "0", cost, "0",
            "[]", _iso(created), _iso(created + 0.05), _iso(created + lat / 1000), str(lat),
            "synthetic failure" if status == "failed" else "", "f",
            ("t" if cols["correct"][i] else "f") if graded and not bench else "\\N", "\\N",
            ("t" if cols["correct"][i] else "f") if graded else "\\N", "[]", "\\N",
            "", "{}", "0", "0", "{}", "[]",
        ]  # fmt: skip
        buf.write("\t".join(row + extra_values))
        buf.write("\n")
    buf.seek(0)
    with transaction.atomic(), connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg 3 cursor under Django's wrapper
        sql = f"COPY routerapp_query ({', '.join(COLUMNS + extra_columns)}) FROM STDIN"
        with raw.copy(sql) as copy:
            while chunk := buf.read(1 << 20):
                copy.write(chunk)
    return n


def _default_columns() -> tuple[list[str], list[str]]:
    """Columns of Query that COLUMNS does not name and that need a value (NOT NULL without a
    database default), with their model default in COPY's text format: a column added later
    never breaks the bulk load."""
    from django.db.models import JSONField
    from django.db.models.fields import NOT_PROVIDED

    columns, values = [], []
    for f in Query._meta.concrete_fields:
        if f.column in COLUMNS or f.null or f.db_default is not NOT_PROVIDED:
            continue
        default = f.get_default()
        if isinstance(f, JSONField):
            text = json.dumps(default)
        elif isinstance(default, bool):
            text = "t" if default else "f"
        else:
            text = "" if default is None else str(default)
        columns.append(f.column)
        values.append(text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n"))
    return columns, values


def _write_orm(cols: dict[str, np.ndarray], catalog: Catalog) -> int:
    objs = []
    created = []
    for i in range(len(cols["team_id"])):
        ci = int(cols["config_idx"][i])
        graded = bool(cols["graded"][i])
        key = int(cols["api_key_id"][i])
        q = Query(
            team_id=int(cols["team_id"][i]),
            api_key_id=None if key < 0 else key,
            source=str(cols["source"][i]),
            prompt=f"synthetic prompt {i}",
            task=TASKS[int(cols["task_idx"][i])],
            status=str(cols["status"][i]),
            configuration=catalog.configurations[ci],
            router_version=catalog.router_version if cols["routed"][i] else None,
            samples_planned=int(cols["samples"][i]),
            samples_done=int(cols["samples"][i]),
            prompt_tokens=int(cols["prompt_tokens"][i]),
            completion_tokens=int(cols["completion_tokens"][i]),
            cost_usd=Decimal(_pico_to_str(int(cols["cost_pico"][i]))),
            latency_ms=int(cols["latency_ms"][i]),
            graded_correct=bool(cols["correct"][i]) if graded else None,
        )
        objs.append(q)
        created.append(dt.datetime.fromtimestamp(float(cols["created"][i]), dt.UTC))
    Query.objects.bulk_create(objs, batch_size=1000)
    for q, when in zip(objs, created, strict=True):
        Query.objects.filter(pk=q.pk).update(created_at=when)
    return len(objs)


def fill(
    *,
    rows: int,
    teams: list[Team],
    days: int = 90,
    seed: int = 0,
    router: bool = True,
    **kw: Any,
) -> dict[str, Any]:
    """Generate and insert `rows` synthetic queries for `teams`; return what was written."""
    catalog = catalog_ensure(router=router)
    cols = generate(rows=rows, teams=teams, catalog=catalog, days=days, seed=seed, **kw)
    written = write(cols, catalog)
    return {"rows": written, "catalog": catalog}
