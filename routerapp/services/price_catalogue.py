"""Importing endpoint prices from a price catalogue: LiteLLM's
``model_prices_and_context_window.json`` (MIT) or the repository's own CSV (data/prices.csv).

Reading is in two steps so an operator sees what would change before anything is written:
:func:`price_catalogue_load` parses a file or URL into entries, :func:`price_changes_plan`
matches them to endpoints and returns the diff, :func:`endpoint_prices_import` writes it with one
audit row per changed endpoint. Prices only ever apply to queries that start after the change:
a finished query keeps the cost (and the ``billed_prices``) it was billed with.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.db import transaction

from routerapp.models import ModelEndpoint
from routerapp.services.audit import audit_record

_MTOK = Decimal(1_000_000)
_MICRO = Decimal("0.000001")
_MAX_PRICE = Decimal(10**12)  # what a price column (18 digits, 6 decimals) holds

#: Endpoint fields a catalogue entry can set, in the order the diff shows them.
PRICE_FIELDS = (
    "input_usd_per_mtok",
    "output_usd_per_mtok",
    "cached_input_usd_per_mtok",
    "reasoning_usd_per_mtok",
    "context_window",
    "max_output_tokens",
    "price_source",
)

#: LiteLLM modes whose token prices describe text generation (the others price images,
#: audio, embeddings...).
_LITELLM_TEXT_MODES = {"chat", "completion", "responses", None}


class CatalogueError(ValueError):
    """The catalogue could not be read or parsed (the message says where)."""


@dataclass(frozen=True)
class CatalogueEntry:
    """The prices of one model in a catalogue; None: the catalogue does not say."""

    key: str
    input_usd_per_mtok: Decimal | None = None
    output_usd_per_mtok: Decimal | None = None
    cached_input_usd_per_mtok: Decimal | None = None
    reasoning_usd_per_mtok: Decimal | None = None
    context_window: int | None = None
    max_output_tokens: int | None = None
    price_source: str = ""


@dataclass
class PriceChange:
    """What an import would change on one endpoint: ``{field: (old, new)}``."""

    endpoint: ModelEndpoint
    key: str
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)


@dataclass
class ImportPlan:
    changes: list[PriceChange]
    unchanged: list[str]  # endpoints whose catalogue entry matches what they have
    unmatched: list[str]  # endpoints the catalogue has no entry for
    entries: int


def _per_token_to_mtok(value: Any, where: str) -> Decimal | None:
    if value is None:
        return None
    try:
        price = Decimal(str(value)) * _MTOK
    except (InvalidOperation, ValueError) as exc:
        raise CatalogueError(f"{where}: not a number: {value!r}") from exc
    return _price(price, where)


def _price(value: Any, where: str) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        price = Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise CatalogueError(f"{where}: not a number: {value!r}") from exc
    if not price.is_finite() or price < 0 or price >= _MAX_PRICE:
        raise CatalogueError(
            f"{where}: a price must be a number >= 0 and < {_MAX_PRICE}, got {value!r}"
        )
    # Endpoint prices are stored to the micro-dollar per million tokens.
    return price.quantize(_MICRO, rounding=ROUND_HALF_UP)


def _count(value: Any, where: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(str(value).strip())
    except ValueError as exc:
        raise CatalogueError(f"{where}: not a whole number: {value!r}") from exc
    if number <= 0:
        raise CatalogueError(f"{where}: must be > 0, got {value!r}")
    return number


def parse_litellm(data: Any, source: str) -> dict[str, CatalogueEntry]:
    """Return the text-generation entries of a LiteLLM price map, keyed by lower-case name.

    Costs there are USD per token (``input_cost_per_token``, ``output_cost_per_token``,
    ``cache_read_input_token_cost``, ``output_cost_per_reasoning_token``); context windows are
    ``max_input_tokens`` and ``max_output_tokens`` (``max_tokens`` is the legacy field).
    """
    if not isinstance(data, dict):
        raise CatalogueError(f"{source}: a LiteLLM price map is a JSON object of models")
    entries: dict[str, CatalogueEntry] = {}
    for key, spec in data.items():
        if key == "sample_spec" or not isinstance(spec, dict):
            continue
        if spec.get("mode") not in _LITELLM_TEXT_MODES:
            continue
        if "input_cost_per_token" not in spec and "output_cost_per_token" not in spec:
            continue
        where = f"{source}: {key}"
        provider = spec.get("litellm_provider")
        entries[key.lower()] = CatalogueEntry(
            key=key,
            input_usd_per_mtok=_per_token_to_mtok(spec.get("input_cost_per_token"), where),
            output_usd_per_mtok=_per_token_to_mtok(spec.get("output_cost_per_token"), where),
            cached_input_usd_per_mtok=_per_token_to_mtok(
                spec.get("cache_read_input_token_cost"), where
            ),
            reasoning_usd_per_mtok=_per_token_to_mtok(
                spec.get("output_cost_per_reasoning_token"), where
            ),
            context_window=_count(spec.get("max_input_tokens"), where),
            max_output_tokens=_count(spec.get("max_output_tokens", spec.get("max_tokens")), where),
            price_source=f"litellm {key}" + (f" ({provider})" if provider else ""),
        )
    return entries


#: Columns of the repository's CSV; the first three are required.
CSV_COLUMNS = (
    "model",
    "input_usd_per_mtok",
    "output_usd_per_mtok",
    "cached_input_usd_per_mtok",
    "reasoning_usd_per_mtok",
    "context_window",
    "max_output_tokens",
    "price_source",
)


def parse_csv(text: str, source: str) -> dict[str, CatalogueEntry]:
    """Return the rows of a price CSV (USD per million tokens) keyed by lower-case model."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in CSV_COLUMNS[:3] if c not in header]
    if missing:
        raise CatalogueError(f"{source}: the CSV lacks the column(s) {', '.join(missing)}")
    entries: dict[str, CatalogueEntry] = {}
    for line, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        model = row.get("model", "")
        if not model:
            raise CatalogueError(f"{source} line {line}: the model is empty")
        where = f"{source} line {line} ({model})"
        entries[model.lower()] = CatalogueEntry(
            key=model,
            input_usd_per_mtok=_price(row.get("input_usd_per_mtok"), where),
            output_usd_per_mtok=_price(row.get("output_usd_per_mtok"), where),
            cached_input_usd_per_mtok=_price(row.get("cached_input_usd_per_mtok"), where),
            reasoning_usd_per_mtok=_price(row.get("reasoning_usd_per_mtok"), where),
            context_window=_count(row.get("context_window"), where),
            max_output_tokens=_count(row.get("max_output_tokens"), where),
            price_source=(row.get("price_source") or f"{Path(source).name} {model}")[:300],
        )
    return entries


def price_catalogue_load(source: str, *, timeout_s: float = 30.0) -> dict[str, CatalogueEntry]:
    """Read a catalogue from a path or an http(s) URL; the format is told by its content
    (a JSON object is a LiteLLM price map, anything else the CSV).

    Raise CatalogueError when it cannot be fetched, read or parsed.
    """
    if source.startswith(("http://", "https://")):
        import httpx

        try:
            response = httpx.get(source, timeout=timeout_s, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise CatalogueError(f"could not fetch {source}: {exc}") from exc
        text = response.text
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogueError(f"could not read {source}: {exc}") from exc
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise CatalogueError(f"{source}: invalid JSON: {exc}") from exc
        return parse_litellm(data, source)
    return parse_csv(text, source)


def endpoint_catalogue_keys(endpoint: ModelEndpoint) -> list[str]:
    """Return the names an endpoint is looked up by, first match wins: its ``price_key`` when
    set (only that), else the upstream model name of its engine, then its own name; a name
    with a provider prefix (``openai/gpt-4o``) is also tried without it."""
    if endpoint.price_key:
        return [endpoint.price_key.lower()]
    names = [str((endpoint.engine_params or {}).get("model") or ""), endpoint.name]
    keys: list[str] = []
    for name in names:
        for key in (name, name.split("/", 1)[-1]):
            if key and key.lower() not in keys:
                keys.append(key.lower())
    return keys


def price_changes_plan(*, catalogue: dict[str, CatalogueEntry]) -> ImportPlan:
    """Match every endpoint to the catalogue and return what an import would change.

    A field the catalogue does not give is left as it is.
    """
    plan = ImportPlan(changes=[], unchanged=[], unmatched=[], entries=len(catalogue))
    for endpoint in ModelEndpoint.objects.order_by("name"):
        entry = next(
            (catalogue[k] for k in endpoint_catalogue_keys(endpoint) if k in catalogue), None
        )
        if entry is None:
            plan.unmatched.append(endpoint.name)
            continue
        change = PriceChange(endpoint=endpoint, key=entry.key)
        for name in PRICE_FIELDS:
            new = getattr(entry, name)
            if new is None or new == "":
                continue
            old = getattr(endpoint, name)
            if old != new:
                change.changes[name] = (old, new)
        # Only a price change needs a new source; a source alone is not worth an update.
        if set(change.changes) == {"price_source"}:
            change.changes = {}
        if change.changes:
            plan.changes.append(change)
        else:
            plan.unchanged.append(endpoint.name)
    return plan


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


@transaction.atomic
def endpoint_prices_import(*, plan: ImportPlan, actor: Any = None) -> int:
    """Write a plan's changes, one audit row per endpoint; return how many were updated.

    Each endpoint is re-read under a row lock and its changes are applied only if it still
    has the old values the plan was made from, so an edit made meanwhile is never overwritten
    unseen (that endpoint is skipped).
    """
    updated = 0
    for change in plan.changes:
        endpoint = ModelEndpoint.objects.select_for_update().get(pk=change.endpoint.pk)
        if any(getattr(endpoint, f) != old for f, (old, _new) in change.changes.items()):
            continue
        for name, (_old, new) in change.changes.items():
            setattr(endpoint, name, new)
        endpoint.save(update_fields=[*change.changes, "updated_at"])
        audit_record(
            action="update",
            obj=endpoint,
            actor=actor,
            changes={
                name: [_plain(old), _plain(new)] for name, (old, new) in change.changes.items()
            },
        )
        updated += 1
    return updated
