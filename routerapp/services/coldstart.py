"""Cold start: seed a router for this installation's endpoints from public outcome tables.

A new installation has no graded traffic. An admin picks a source of public outcomes (a suite of
the data folder, or one `source` of its outcome file), and each enabled endpoint is mapped to a
model of that source: by exact name, by an alias (the built-in table below, or the endpoint's
``descriptors["aliases"]``), or to the nearest model by family and price. The admin confirms or
changes the mapping; the source rows of each mapped model become outcomes of the endpoint's
single-sample configurations, re-priced with the endpoint's own prices, and a router is fitted on
them with the installation's configurations (multi-sample configurations of a mapped endpoint get
no rows; the learner places them from their model and sample count). It is evaluated on held-out
source prompts and passes the same floor as every version before it can serve. Then online
learning takes over: the live router replays the installation's graded queries.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from django.conf import settings

from routerapp.errors import InvalidInput
from routerapp.models import Configuration, ModelEndpoint, RouterVersion

SUITE_PREFIX = "suite:"
DATA_PREFIX = "data:"
OUTCOME_FILE = "dev_outcomes_single.parquet"
PROMPT_FILE = "dev_prompts.parquet"
PRICE_FILE = "prices.csv"
# Sources whose `correct` is a judge's preference score, not correctness: not a prior for
# cost-of-pass.
JUDGE_SOURCES = ("alpaca_eval", "routellm_evals(mtbench)")

# Common names of hosted and open models -> names used in public outcome tables (lower case,
# tried in order; the first one the source has wins).
ALIASES: dict[str, tuple[str, ...]] = {
    "gpt-4": ("gpt-4", "gpt-4-0613", "gpt-4-1106-preview", "gpt4_1106_preview"),
    "gpt-4-turbo": ("gpt-4-turbo-2024-04-09", "gpt-4-1106-preview", "gpt4_1106_preview"),
    "gpt-4o": ("gpt-4o-2024-08-06", "gpt-4o-2024-05-13"),
    "gpt-4o-mini": ("gpt-4o-mini-2024-07-18",),
    "gpt-3.5-turbo": ("gpt-3.5-turbo-1106", "gpt-3.5-turbo-0125", "gpt-3.5-turbo-0613"),
    "claude-2": ("claude-v2", "claude-2", "claude-2.1"),
    "claude-instant": ("claude-instant-v1", "claude-instant-1.2"),
    "claude-3-haiku": ("claude-3-haiku-20240307",),
    "claude-3-sonnet": ("claude-3-sonnet-20240229",),
    "claude-3-opus": ("claude-3-opus-20240229",),
    "claude-3.5-sonnet": ("claude-3-5-sonnet-20240620",),
    "mixtral-8x7b": ("mistralai/mixtral-8x7b-chat", "mistralai/mixtral-8x7b-instruct-v0.1"),
    "mistral-7b": ("mistralai/mistral-7b-chat", "mistral-7b-instruct-v0.2"),
    "llama-2-70b": ("meta/llama-2-70b-chat", "llama-2-70b-hf"),
    "llama-3-8b": ("meta-llama-3-8b-instruct", "meta-llama/meta-llama-3-8b-instruct"),
    "llama-3.1-8b": ("meta-llama-3.1-8b-instruct", "meta-llama/meta-llama-3.1-8b-instruct"),
    "llama-3.1-70b": ("meta-llama-3.1-70b-instruct", "meta-llama/meta-llama-3.1-70b-instruct"),
}

# Family markers, most specific first (gpt-4o before gpt-4, mixtral before mistral).
FAMILIES = (
    "gpt-4o", "gpt-4", "gpt-3.5", "o1", "claude", "mixtral", "mistral", "codellama",
    "llama", "qwen", "gemma", "yi", "deepseek", "phi", "wizardlm", "zephyr", "smollm",
    "command", "dbrx", "granite", "internlm", "athene", "nemotron",
)  # fmt: skip


@dataclass(frozen=True)
class SourceModel:
    name: str
    rows: int
    usd_per_mtok: float | None  # mean of input and output list prices, when known
    family: str | None


@dataclass(frozen=True)
class Proposal:
    """The proposed source model of one endpoint, and how it was found."""

    endpoint: str
    model: str | None
    how: str  # "exact", "alias", "nearest" or "none"
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "model": self.model, "how": self.how,
                "detail": self.detail}  # fmt: skip


def data_dir() -> Path:
    return Path(settings.SHARED_DATA_DIR)


def _norm(name: str) -> str:
    return name.strip().lower()


def _base(name: str) -> str:
    return _norm(name).rsplit("/", 1)[-1]


def model_family(name: str, descriptors: dict[str, Any] | None = None) -> str | None:
    """Return a model's family: the endpoint's ``descriptors["family"]``, else the first family
    marker in its name (None when there is none)."""
    fam = (descriptors or {}).get("family")
    if fam:
        return str(fam).lower()
    compact = _base(name).replace("_", "-").replace(" ", "-")
    squashed = compact.replace("-", "")
    for f in FAMILIES:
        if f == "codellama" and ("code-llama" in _norm(name) or "codellama" in squashed):
            return "llama"
        if f == "yi":
            if re.search(r"(^|[-/])yi([-/]|$)", compact) or _norm(name).startswith("01-ai/"):
                return f
            continue
        if f in compact or f.replace("-", "") in squashed:
            return "gpt-4" if f == "gpt-4o" else f
    return None


@functools.lru_cache(maxsize=2)
def _prices(path: str, mtime: float) -> dict[str, float]:
    df = pd.read_csv(path)
    out = {}
    for row in df.itertuples(index=False):
        usd = (float(row.input_usd_per_mtok) + float(row.output_usd_per_mtok)) / 2.0
        out[_norm(str(row.model))] = usd
        out.setdefault(_base(str(row.model)), usd)
    return out


def source_prices() -> dict[str, float]:
    """Return list prices (mean of input and output USD per million tokens) by model name."""
    path = data_dir() / "data" / PRICE_FILE
    if not path.is_file():
        return {}
    return _prices(str(path), path.stat().st_mtime)


@functools.lru_cache(maxsize=2)
def _outcome_index(path: str, mtime: float) -> pd.DataFrame:
    df = pd.read_parquet(path, columns=["source", "model"])
    return df.groupby(["source", "model"]).size().rename("rows").reset_index()


def outcome_sources() -> list[str]:
    """Return every source that can seed a router: ``suite:<name>`` and ``data:<source>``."""
    from routerapp.services.routers import shared_suites

    out = [f"{SUITE_PREFIX}{s}" for s in shared_suites()]
    path = data_dir() / "data" / OUTCOME_FILE
    if path.is_file():
        index = _outcome_index(str(path), path.stat().st_mtime)
        out += [
            f"{DATA_PREFIX}{s}"
            for s in sorted(index["source"].unique())
            if s not in JUDGE_SOURCES and index[index["source"] == s]["model"].nunique() >= 2
        ]
    return out


def _check_source(source: str) -> str:
    if source not in outcome_sources():
        raise InvalidInput(
            f"unknown outcome source {source!r}; known: {', '.join(outcome_sources()) or 'none'}",
            param="source",
        )
    return source


def source_models(source: str) -> list[SourceModel]:
    """Return the models of a source with their row counts, list prices and families."""
    _check_source(source)
    prices = source_prices()
    if source.startswith(SUITE_PREFIX):
        path = data_dir() / "suites" / source.removeprefix(SUITE_PREFIX)
        cands = pd.read_csv(path / "candidates.csv")
        train = pd.read_parquet(path / "train_outcomes.parquet", columns=["model"])
        counts = train["model"].value_counts()
        names = list(dict.fromkeys(str(m) for m in cands["model"]))
        rows = {m: int(counts.get(m, 0)) for m in names}
    else:
        path = data_dir() / "data" / OUTCOME_FILE
        index = _outcome_index(str(path), path.stat().st_mtime)
        sub = index[index["source"] == source.removeprefix(DATA_PREFIX)]
        rows = {str(m): int(n) for m, n in zip(sub["model"], sub["rows"], strict=True)}
        names = sorted(rows)
    return [
        SourceModel(
            name=m,
            rows=rows[m],
            usd_per_mtok=prices.get(_norm(m), prices.get(_base(m))),
            family=model_family(m),
        )
        for m in names
    ]


def _endpoint_price(endpoint: ModelEndpoint) -> float | None:
    usd = (float(endpoint.input_usd_per_mtok) + float(endpoint.output_usd_per_mtok)) / 2.0
    return usd if usd > 0 else None


def propose_mapping(*, source: str, endpoints: list[ModelEndpoint]) -> list[Proposal]:
    """Return one proposal per endpoint: exact name, alias, or nearest by family then price."""
    models = source_models(source)
    by_norm = {_norm(m.name): m for m in models}
    by_base: dict[str, SourceModel] = {}
    for m in models:
        by_base.setdefault(_base(m.name), m)
    out = []
    for ep in endpoints:
        exact = by_norm.get(_norm(ep.name)) or by_base.get(_base(ep.name))
        if exact is not None:
            out.append(Proposal(ep.name, exact.name, "exact", "same model name"))
            continue
        aliases = [str(a) for a in (ep.descriptors or {}).get("aliases", []) or []]
        aliases += list(ALIASES.get(_base(ep.name), ()))
        hit = next(
            (by_norm.get(_norm(a)) or by_base.get(_base(a)) for a in aliases if
             by_norm.get(_norm(a)) or by_base.get(_base(a))),
            None,
        )  # fmt: skip
        if hit is not None:
            out.append(Proposal(ep.name, hit.name, "alias", f"alias of {ep.name}"))
            continue
        out.append(_nearest(ep, models))
    return out


def _nearest(ep: ModelEndpoint, models: list[SourceModel]) -> Proposal:
    fam = model_family(ep.name, ep.descriptors)
    price = _endpoint_price(ep)

    def key(m: SourceModel) -> tuple[int, float, int]:
        gap = (
            abs(math.log10(price) - math.log10(m.usd_per_mtok))
            if price and m.usd_per_mtok
            else 10.0
        )
        return (0 if fam and m.family == fam else 1, gap, -m.rows)

    if not models:
        return Proposal(ep.name, None, "none", "the source has no models")
    best = min(models, key=key)
    same = bool(fam and best.family == fam)
    if not same and (price is None or best.usd_per_mtok is None):
        return Proposal(ep.name, None, "none", "no model of the same family or a known price")
    parts = [f"same family ({fam})" if same else f"no {fam or 'known'}-family model"]
    if price and best.usd_per_mtok:
        parts.append(f"${best.usd_per_mtok:g} vs ${price:g} per Mtok (mean of in/out)")
    return Proposal(
        ep.name, best.name, "nearest", "nearest by family and price: " + ", ".join(parts)
    )


def _load_source(source: str, models: set[str]) -> tuple[pd.DataFrame, pd.DataFrame, set[str]]:
    """Return (outcomes of `models`, prompts, test prompt ids) of a source."""
    from routerapp.services.routers import _split

    if source.startswith(SUITE_PREFIX):
        path = data_dir() / "suites" / source.removeprefix(SUITE_PREFIX)
        tr_o = pd.read_parquet(path / "train_outcomes.parquet")
        te_o = pd.read_parquet(path / "test_outcomes.parquet")
        prompts = pd.concat(
            [
                pd.read_parquet(path / "train_prompts.parquet"),
                pd.read_parquet(path / "test_prompts.parquet"),
            ]
        )[["prompt_uid", "dataset", "prompt"]].drop_duplicates("prompt_uid")
        cands = pd.read_csv(path / "candidates.csv")
        model_of = dict(
            zip(cands["config_id"].astype(str), cands["model"].astype(str), strict=True)
        )
        outcomes = pd.concat([tr_o, te_o])
        if "model" not in outcomes:
            outcomes["model"] = outcomes["config_id"].map(model_of)
        outcomes["model"] = outcomes["model"].fillna(outcomes["config_id"].map(model_of))
        test = set(te_o["prompt_uid"].astype(str))
    else:
        name = source.removeprefix(DATA_PREFIX)
        outcomes = pd.read_parquet(
            data_dir() / "data" / OUTCOME_FILE,
            filters=[("source", "==", name), ("model", "in", sorted(models))],
        )
        outcomes = outcomes[outcomes["score_kind"].fillna("binary") == "binary"]
        uids = set(outcomes["prompt_uid"].astype(str))
        prompts = pd.read_parquet(
            data_dir() / "data" / PROMPT_FILE, columns=["prompt_uid", "dataset", "prompt"]
        )
        prompts = prompts[prompts["prompt_uid"].isin(uids)].drop_duplicates("prompt_uid")
        _, test = _split(sorted(uids))
    outcomes = outcomes[outcomes["model"].isin(models)]
    return outcomes, prompts, test


def _reprice(rows: pd.DataFrame, prompts: pd.DataFrame, config: Configuration) -> pd.DataFrame:
    """Return `rows` with cost_usd at the endpoint's own prices: from token counts where the
    source has them (input estimated from the prompt's length / 4 when missing), else the
    source's USD scaled by the ratio of list prices, else the source's USD as it is."""
    ep = config.endpoint
    pin, pout = float(ep.input_usd_per_mtok), float(ep.output_usd_per_mtok)
    out_tok = rows.get("output_tokens", pd.Series(index=rows.index, dtype=float))
    if "output_tokens_est" in rows:
        out_tok = out_tok.fillna(rows["output_tokens_est"])
    length = rows["prompt_uid"].map(prompts.set_index("prompt_uid")["prompt"].str.len())
    in_tok = rows.get("input_tokens", pd.Series(index=rows.index, dtype=float)).fillna(length / 4)
    by_tokens = (in_tok * pin + out_tok * pout) / 1e6
    prices = source_prices()
    model_price = rows["model"].map(lambda m: prices.get(_norm(m), prices.get(_base(m))))
    ep_price = _endpoint_price(ep)
    scaled = rows["cost_usd"] * (ep_price / model_price.astype(float)) if ep_price else None
    cost = by_tokens.where(out_tok.notna() & in_tok.notna())
    if scaled is not None:
        cost = cost.fillna(scaled)
    cost = cost.fillna(rows["cost_usd"])
    return rows.assign(cost_usd=cost.astype(float))


def mapped_outcomes(
    *, source: str, mapping: dict[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame, set[str], list[Any], dict[str, Any]]:
    """Return (outcomes relabelled to this installation's configurations, prompts, test prompt
    ids, candidates, a summary for the version's record) for an endpoint -> model mapping.

    Raise InvalidInput when a model is not in the source, an endpoint is unknown or disabled,
    or fewer than two configurations get rows.
    """
    from routerapp.services.routers import product_candidates
    from workers.strategies import get_strategy

    _check_source(source)
    known = {m.name for m in source_models(source)}
    unknown = sorted(set(mapping.values()) - known)
    if unknown:
        raise InvalidInput(f"{source} has no model {', '.join(unknown)}", param="mapping")
    endpoints = {
        e.name: e for e in ModelEndpoint.objects.filter(enabled=True, name__in=list(mapping))
    }
    missing = sorted(set(mapping) - set(endpoints))
    if missing:
        raise InvalidInput(f"unknown or disabled endpoint {', '.join(missing)}", param="mapping")
    outcomes, prompts, test = _load_source(source, set(mapping.values()))
    configs = Configuration.objects.filter(
        enabled=True, endpoint__name__in=list(mapping)
    ).select_related("endpoint", "strategy")
    parts, seeded, unseeded = [], [], []
    for config in configs:
        strategy = get_strategy(config.strategy.strategy)
        if strategy.planned_samples(strategy.validate_params(config.strategy.params)) != 1:
            unseeded.append(config.slug)
            continue
        rows = outcomes[outcomes["model"] == mapping[config.endpoint.name]]
        if rows.empty:
            unseeded.append(config.slug)
            continue
        rows = _reprice(rows, prompts, config)
        rows = rows[rows["cost_usd"].notna()]
        parts.append(
            pd.DataFrame(
                {
                    "prompt_uid": rows["prompt_uid"].astype(str),
                    "dataset": rows["dataset"].astype(str),
                    "config_id": config.slug,
                    "model": config.endpoint.name,
                    "correct": rows["correct"].astype(float),
                    "cost_usd": rows["cost_usd"],
                }
            )
        )
        seeded.append(config.slug)
    if len(seeded) < 2:
        raise InvalidInput(
            "the mapping gives outcome rows to fewer than two single-sample configurations; "
            "map at least two endpoints (a router needs a choice)",
            param="mapping",
        )
    table = pd.concat(parts, ignore_index=True)
    cand_ids = {c.slug for c in configs}
    candidates = [c for c in product_candidates() if c.config_id in cand_ids]
    summary = {
        "source": source,
        "mapping": dict(sorted(mapping.items())),
        "seeded_configurations": sorted(seeded),
        "configurations_without_rows": sorted(unseeded),
        "source_rows": int(len(table)),
        "source_prompts": int(table["prompt_uid"].nunique()),
        "datasets": sorted(table["dataset"].unique().tolist())[:20],
    }
    return table, prompts, test, candidates, summary


def router_version_seed(
    *,
    source: str,
    mapping: dict[str, str],
    name: str | None = None,
    created_by: Any = None,
    activate: bool = False,
    enqueue: bool = True,
) -> RouterVersion:
    """Create a version seeded from `source` with `mapping` (endpoint name -> source model) and
    fit it in the background (or not, with `enqueue=False`). The mapping is checked now, so a
    bad one writes nothing."""
    from django.db import transaction
    from django.utils import timezone

    from routerapp.services.routers import LEARNER, _enqueue_fit

    mapping = {str(k): str(v) for k, v in mapping.items() if v}
    if not mapping:
        raise InvalidInput("map at least two endpoints to source models", param="mapping")
    mapped_outcomes(source=source, mapping=mapping)  # validates; raises before any write
    with transaction.atomic():
        version = RouterVersion.objects.create(
            name=(name or f"prior-{timezone.now():%Y%m%d-%H%M%S}")[:100],
            learner=LEARNER,
            trained_on={
                "source": "prior",
                "prior": {"source": source, "mapping": dict(sorted(mapping.items()))},
                "activate_when_ready": activate,
            },
            created_by=created_by if getattr(created_by, "is_authenticated", False) else None,
        )
        if enqueue:
            transaction.on_commit(lambda: _enqueue_fit(version.pk))
    return version


def fit_prior(version: RouterVersion, fit_router: Any, evaluate: Any) -> tuple:
    """Fit a seeded version: train on the source's training prompts, evaluate and check the
    floor on its held-out prompts, then fit on every mapped row."""
    from routerapp.services.routers import _floor_held_out, _online_curve, _progress

    prior = version.trained_on["prior"]
    table, prompts, test, candidates, summary = mapped_outcomes(
        source=prior["source"], mapping=prior["mapping"]
    )
    _progress(version.pk, 0.2)
    train_o = table[~table["prompt_uid"].isin(test)]
    test_o = table[table["prompt_uid"].isin(test)]
    if train_o.empty or test_o.empty:
        raise InvalidInput(f"{prior['source']} has no held-out prompts for the mapped models")
    router = fit_router(train_o, prompts, candidates, learner=version.learner, seed=0)
    _progress(version.pk, 0.5)
    evaluation = evaluate(router, test_o, prompts, train_o, prompts)
    evaluation["online_curve"] = _online_curve(router, test_o, prompts, train_o)
    _progress(version.pk, 0.7)
    floor = _floor_held_out(router, test_o, prompts, train_o)
    full = fit_router(table, prompts, candidates, learner=version.learner, seed=0)
    counts = {
        "prompts": summary["source_prompts"],
        "outcome_rows": summary["source_rows"],
        "train_prompts": int(train_o["prompt_uid"].nunique()),
        "test_prompts": int(test_o["prompt_uid"].nunique()),
        "candidates": sorted(c.config_id for c in candidates),
        "prior": {**prior, **summary},
    }
    return router, full, evaluation, counts, floor
