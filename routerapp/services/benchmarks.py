"""Benchmark runs: a labelled set x configurations, run in the background; the graded queries
they leave behind are outcome data the router learns from."""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import random
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from routerapp.errors import Conflict, InvalidInput, ServiceError
from routerapp.models import BenchmarkRun, Configuration, Query, Team

log = logging.getLogger(__name__)

MAX_ITEMS = 500
MAX_UPLOAD_BYTES = 5_000_000
MAX_GENERATED = 200
ANSWER_KINDS = {"", "math", "mcq", "text"}


def _clean_item(raw: dict[str, Any], where: str) -> dict[str, str]:
    prompt = raw.get("prompt")
    gold = raw.get("gold")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInput(f"{where}: 'prompt' is missing or empty", param="file")
    if gold is None or (isinstance(gold, str) and not gold.strip()):
        raise InvalidInput(f"{where}: 'gold' is missing or empty", param="file")
    if isinstance(gold, (dict, list)):
        raise InvalidInput(f"{where}: 'gold' must be a string or a number", param="file")
    kind = str(raw.get("answer_kind") or "").strip()
    if kind not in ANSWER_KINDS:
        raise InvalidInput(
            f"{where}: answer_kind must be one of math, mcq, text (or empty)", param="file"
        )
    task = str(raw.get("task") or "").strip()[:64]
    return {"prompt": prompt, "gold": str(gold).strip(), "answer_kind": kind, "task": task}


def parse_labelled_file(uploaded: Any) -> list[dict[str, str]]:
    """Read an uploaded CSV (header with prompt, gold) or JSONL (one {"prompt", "gold"} object
    per line) file. Raise InvalidInput naming the line at fault."""
    name = str(getattr(uploaded, "name", "") or "")
    size = getattr(uploaded, "size", None)
    if size is not None and size > MAX_UPLOAD_BYTES:
        raise InvalidInput(
            f"the file is larger than {MAX_UPLOAD_BYTES // 1_000_000} MB", param="file"
        )
    data = uploaded.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise InvalidInput(
            f"the file is larger than {MAX_UPLOAD_BYTES // 1_000_000} MB", param="file"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("the file is not UTF-8 text", param="file") from None
    if not text.strip():
        raise InvalidInput("the file is empty", param="file")
    lowered = name.lower()
    is_jsonl = lowered.endswith((".jsonl", ".ndjson", ".json")) or (
        not lowered.endswith(".csv") and text.lstrip().startswith("{")
    )
    items = _parse_jsonl(text) if is_jsonl else _parse_csv(text)
    if not items:
        raise InvalidInput("the file has no items", param="file")
    if len(items) > MAX_ITEMS:
        raise InvalidInput(
            f"the file has {len(items)} items; at most {MAX_ITEMS} per run", param="file"
        )
    return items


def _parse_jsonl(text: str) -> list[dict[str, str]]:
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"line {lineno}: not valid JSON ({exc.msg})", param="file") from None
        if not isinstance(raw, dict):
            raise InvalidInput(f"line {lineno}: expected a JSON object", param="file")
        items.append(_clean_item(raw, f"line {lineno}"))
    return items


def _parse_csv(text: str) -> list[dict[str, str]]:
    try:
        reader = csv.DictReader(io.StringIO(text))
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
    except csv.Error as exc:
        raise InvalidInput(f"not a readable CSV file ({exc})", param="file") from None
    missing = {"prompt", "gold"} - set(header)
    if missing:
        raise InvalidInput(
            "a CSV needs a header row with 'prompt' and 'gold' columns "
            f"(missing: {', '.join(sorted(missing))}); or upload JSONL",
            param="file",
        )
    items = []
    try:
        for lineno, row in enumerate(reader, start=2):
            normalised = {(k or "").strip().lower(): v for k, v in row.items()}
            items.append(_clean_item(normalised, f"line {lineno}"))
    except csv.Error as exc:
        raise InvalidInput(f"not a readable CSV file ({exc})", param="file") from None
    return items


def generated_items(*, n: int, seed: int = 0, difficulty: str | None = None) -> list[dict]:
    """Return `n` built-in labelled problems (seeded, no download)."""
    from workers.grading.generated import generate_problems

    if not 1 <= n <= MAX_GENERATED:
        raise InvalidInput(f"n must be between 1 and {MAX_GENERATED}", param="n")
    try:
        problems = generate_problems(n, seed=seed, difficulty=difficulty)
    except ValueError as exc:
        raise InvalidInput(str(exc), param="difficulty") from exc
    return [
        {
            "prompt": p.prompt,
            "gold": str(p.gold),
            "answer_kind": p.answer_kind or "math",
            "task": f"{p.family}-{p.difficulty}"[:64],
        }
        for p in problems
    ]


def shared_labelled_path() -> Path:
    """Where the labelled sets of the data folder are read from (never copied)."""
    return Path(settings.SHARED_DATA_DIR) / "data" / "dev_labeled_sets.parquet"


@functools.lru_cache(maxsize=4)
def _shared_counts(path: str, mtime: float) -> tuple[tuple[str, int], ...]:
    import pandas as pd

    counts = pd.read_parquet(path, columns=["dataset"])["dataset"].value_counts()
    return tuple(sorted((str(k), int(v)) for k, v in counts.items()))


def shared_labelled_sets() -> list[tuple[str, int]]:
    """Return (dataset, items) of the data folder's labelled sets; [] when it is absent."""
    path = shared_labelled_path()
    if not path.is_file():
        return []
    return list(_shared_counts(str(path), path.stat().st_mtime))


def shared_items(*, dataset: str, n: int, seed: int = 0) -> list[dict]:
    """Return `n` items of one dataset of the data folder's labelled sets, drawn with `seed`."""
    from workers.grading.labelled import load_labelled_set

    known = dict(shared_labelled_sets())
    if dataset not in known:
        raise InvalidInput(
            f"no labelled set {dataset!r} in {shared_labelled_path()}"
            + (f"; known: {', '.join(sorted(known))}" if known else " (the file is absent)"),
            param="dataset",
        )
    if not 1 <= n <= MAX_ITEMS:
        raise InvalidInput(f"n must be between 1 and {MAX_ITEMS}", param="n")
    items = load_labelled_set(shared_labelled_path(), dataset=dataset)
    picked = random.Random(seed).sample(items, min(n, len(items)))
    return [
        {"prompt": it.prompt, "gold": it.gold, "answer_kind": it.answer_kind, "task": dataset[:64]}
        for it in picked
    ]


@transaction.atomic
def benchmark_run_create(
    *,
    team: Team,
    name: str,
    configurations: list[Configuration],
    items: list[dict] | None = None,
    generated: dict[str, Any] | None = None,
    shared: dict[str, Any] | None = None,
    user: Any = None,
    purpose: str = "",
) -> BenchmarkRun:
    """Create a run and start it once the transaction commits."""
    name = (name or "").strip()
    if not name:
        raise InvalidInput("a benchmark run needs a name", param="name")
    if not configurations:
        raise InvalidInput("pick at least one configuration", param="configurations")
    disabled = [c.slug for c in configurations if not c.enabled or not c.endpoint.enabled]
    if disabled:
        raise InvalidInput(
            f"disabled configurations: {', '.join(disabled)}", param="configurations"
        )
    if sum(x is not None for x in (items, generated, shared)) != 1:
        raise InvalidInput(
            "give exactly one of items, a generated set or a shared labelled set",
            param="labelled_set",
        )
    if shared is not None:
        items = shared_items(
            dataset=str(shared.get("dataset") or ""),
            n=int(shared.get("n", 20)),
            seed=int(shared.get("seed", 0)),
        )
        labelled_set = BenchmarkRun.LabelledSet.SHARED
    elif generated is not None:
        items = generated_items(
            n=int(generated.get("n", 20)),
            seed=int(generated.get("seed", 0)),
            difficulty=generated.get("difficulty") or None,
        )
        labelled_set = BenchmarkRun.LabelledSet.GENERATED
    else:
        assert items is not None
        items = [_clean_item(item, f"item {i + 1}") for i, item in enumerate(items)]
        if not items or len(items) > MAX_ITEMS:
            raise InvalidInput(f"a run needs 1 to {MAX_ITEMS} items", param="items")
        labelled_set = BenchmarkRun.LabelledSet.UPLOAD
    run = BenchmarkRun.objects.create(
        team=team,
        name=name[:100],
        labelled_set=labelled_set,
        items=items,
        planned=len(items) * len(configurations),
        created_by=user if getattr(user, "is_authenticated", False) else None,
        purpose=purpose,
    )
    run.configurations.set(configurations)
    transaction.on_commit(lambda: _enqueue_start(run.pk))
    return run


def _enqueue_start(run_id: int) -> None:
    from workers.queues import Queue
    from workers.tasks import benchmark_run_start

    benchmark_run_start.apply_async(args=[run_id], queue=Queue.TRAINING.value)


def benchmark_run_start(*, run_id: int) -> None:
    """Mark a queued run running and dispatch its first queries."""
    updated = BenchmarkRun.objects.filter(pk=run_id, status=BenchmarkRun.Status.QUEUED).update(
        status=BenchmarkRun.Status.RUNNING
    )
    if updated:
        benchmark_run_refresh(run_id=run_id)


def _dispatch(run: BenchmarkRun, total: int, finished: int) -> int:
    """Create the run's next queries (item-major: every configuration of an item, then the
    next item) until `BENCHMARK_IN_FLIGHT` are unfinished, so a run never floods the engine
    queues ahead of interactive traffic. Return how many queries exist afterwards. A query
    that cannot be created (e.g. a budget ran out) ends the run where it is."""
    from routerapp.services.queries import query_create
    from routerapp.services.routing import RequestConstraints

    configurations = list(run.configurations.order_by("slug"))
    in_flight = settings.BENCHMARK_IN_FLIGHT
    while total < run.planned and total - finished < in_flight:
        item = run.items[total // len(configurations)]
        config = configurations[total % len(configurations)]
        try:
            with transaction.atomic():
                query_create(
                    team=run.team,
                    prompt=item["prompt"],
                    task=item.get("task") or run.name[:64],
                    constraints=RequestConstraints(configuration=config.slug),
                    user=run.created_by,
                    source=Query.Source.BENCHMARK,
                    gold=item["gold"],
                    answer_kind=item.get("answer_kind", ""),
                    benchmark_run=run,
                )
        except ServiceError as exc:
            log.warning("benchmark run %s stopped after %d queries: %s", run.pk, total, exc)
            run.planned = total
            run.error = f"stopped after {total} of the planned queries: {exc.message}"
            break
        total += 1
    return total


def benchmark_run_refresh(*, run_id: int) -> BenchmarkRun:
    """Recount finished queries, dispatch the next ones, and when all are finished store the
    results table (idempotent; called after each of the run's queries finishes)."""
    from routerapp.selectors.benchmarks import benchmark_run_table

    with transaction.atomic():
        run = BenchmarkRun.objects.select_for_update().get(pk=run_id)
        counts = run.queries.aggregate(
            total=Count("id"), finished=Count("id", filter=Q(status__in=Query.FINISHED))
        )
        run.done = counts["finished"]
        total = counts["total"]
        if run.status == BenchmarkRun.Status.RUNNING:
            total = _dispatch(run, total, run.done)
        complete = run.status == BenchmarkRun.Status.RUNNING and run.done >= run.planned
        if complete:
            run.results = {row["configuration"]: row for row in benchmark_run_table(run)}
            run.status = (
                BenchmarkRun.Status.FAILED if run.planned == 0 else BenchmarkRun.Status.DONE
            )
            run.finished_at = timezone.now()
        run.save(update_fields=["done", "planned", "error", "results", "status", "finished_at"])
    if complete and run.purpose == "calibration":
        from routerapp.services.routers import calibration_finished

        transaction.on_commit(lambda: calibration_finished(run_id=run.pk))
    return run


@transaction.atomic
def benchmark_run_cancel(*, run: BenchmarkRun) -> BenchmarkRun:
    """Stop a run: queued queries are cancelled, running ones abort at their next token."""
    from routerapp.services.queries import query_cancel

    locked = BenchmarkRun.objects.select_for_update().get(pk=run.pk)
    if locked.status not in (BenchmarkRun.Status.QUEUED, BenchmarkRun.Status.RUNNING):
        raise Conflict(f"benchmark run {locked.pk} has already finished ({locked.status})")
    locked.status = BenchmarkRun.Status.CANCELLED
    locked.finished_at = timezone.now()
    locked.save(update_fields=["status", "finished_at"])
    for query in locked.queries.exclude(status__in=Query.FINISHED):
        query_cancel(query=query)
    return locked
