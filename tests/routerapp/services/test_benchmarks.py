"""Benchmark runs: labelled files, validation, and a small run through the real worker."""

from __future__ import annotations

from io import BytesIO

import pytest

from routerapp.errors import InvalidInput
from routerapp.models import BenchmarkRun, Query
from routerapp.selectors.benchmarks import benchmark_run_table
from routerapp.services.benchmarks import benchmark_run_create, parse_labelled_file
from tests.conftest import wait_for
from tests.factories import ConfigurationFactory, StrategyConfigFactory, TeamFactory


def _file(name: str, data: bytes) -> BytesIO:
    f = BytesIO(data)
    f.name = name  # type: ignore[attr-defined]
    f.size = len(data)  # type: ignore[attr-defined]
    return f


def test_csv_and_jsonl_are_read() -> None:
    items = parse_labelled_file(_file("set.csv", b'prompt,gold\n"What is 2+2?",4\nHi?,hello\n'))
    assert items == [
        {"prompt": "What is 2+2?", "gold": "4", "answer_kind": "", "task": ""},
        {"prompt": "Hi?", "gold": "hello", "answer_kind": "", "task": ""},
    ]
    items = parse_labelled_file(
        _file("set.jsonl", b'{"prompt": "1+1?", "gold": 2, "answer_kind": "math", "task": "t"}\n\n')
    )
    assert items == [{"prompt": "1+1?", "gold": "2", "answer_kind": "math", "task": "t"}]


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("a.csv", b"", "empty"),
        ("a.csv", b"question,answer\nx,y\n", "'prompt' and 'gold' columns"),
        ("a.csv", b"prompt,gold\nx,\n", "line 2: 'gold' is missing"),
        ("a.jsonl", b'{"prompt": "x", "gold": "y"}\n{oops\n', "line 2: not valid JSON"),
        ("a.jsonl", b"[1, 2]\n", "expected a JSON object"),
        ("a.csv", "prompt,gold\nx,y\n".encode("utf-16"), "not UTF-8"),
        ("a.jsonl", b'{"prompt": "x", "gold": "y", "answer_kind": "poem"}\n', "answer_kind"),
        ("a.csv", b"prompt,gold\n" + b"x,y\n" * 501, "at most 500"),
    ],
)
def test_bad_files_name_the_problem(name: str, data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_labelled_file(_file(name, data))


@pytest.mark.django_db
def test_bad_runs_write_nothing() -> None:
    team = TeamFactory()
    config = ConfigurationFactory()
    for kwargs, message in [
        ({"name": "", "configurations": [config], "generated": {"n": 2}}, "name"),
        ({"name": "r", "configurations": [], "generated": {"n": 2}}, "configuration"),
        ({"name": "r", "configurations": [config], "generated": {"n": 0}}, "between 1 and"),
        ({"name": "r", "configurations": [config]}, "exactly one of items, a generated set"),
        ({"name": "r", "configurations": [config], "items": [{"prompt": "x"}]}, "gold"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            benchmark_run_create(team=team, **kwargs)
    assert BenchmarkRun.objects.count() == 0 and Query.objects.count() == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.worker
@pytest.mark.model
def test_small_run_reaches_100_percent_with_results(celery_worker_process) -> None:  # type: ignore[no-untyped-def]
    team = TeamFactory(name="bench")
    greedy = ConfigurationFactory()
    vote = ConfigurationFactory(
        strategy=StrategyConfigFactory(
            name="short-1-of-3",
            strategy="short_m_at_k",
            params={"k": 3, "m": 1, "temperature": 0.7, "max_tokens": 24},
        )
    )
    run = benchmark_run_create(
        team=team, name="small", configurations=[greedy, vote], generated={"n": 2, "seed": 1}
    )
    assert run.planned == 4

    def finished() -> BenchmarkRun | None:
        run.refresh_from_db()
        return run if run.status in ("done", "failed") else None

    wait_for(finished, timeout=300, interval=1)
    assert run.status == "done", run.error
    assert run.done == 4 and run.progress == 1.0
    queries = list(run.queries.all())
    assert len(queries) == 4 and all(q.graded_correct is not None for q in queries)
    table = {row["configuration"]: row for row in benchmark_run_table(run)}
    assert set(table) == {greedy.slug, vote.slug}
    assert all(row["n"] == 2 for row in table.values())
    assert run.results[vote.slug]["n"] == 2
    # short-1@3 ran 3 samples per problem; the ones it aborted are billed too.
    samples = [s for q in queries if q.configuration_id == vote.pk for s in q.samples.all()]
    assert len(samples) == 6
