"""Guarded one-statement writes (services.statements) on the real Postgres."""

from __future__ import annotations

import pytest
from django.db import transaction

from routerapp.models import Team
from routerapp.services import statements

pytestmark = pytest.mark.django_db(transaction=True)


def _insert_team(name: str) -> tuple[str, str, list[object]]:
    return ("t", *statements.insert_sql(Team, [Team(name=name)]))


def test_a_refused_statement_writes_none_of_its_parts() -> None:
    with pytest.raises(statements.Refused):
        statements.run_guarded([_insert_team("refused")], "0")
    assert not Team.objects.filter(name="refused").exists()
    [row] = statements.run_guarded([_insert_team("kept")], "(SELECT 1)")
    assert row == (1,) and Team.objects.filter(name="kept").exists()


def test_a_refusal_inside_a_transaction_leaves_it_usable() -> None:
    with transaction.atomic():
        Team.objects.create(name="before")
        with pytest.raises(statements.Refused):
            statements.run_guarded([_insert_team("refused")], "0")
        Team.objects.create(name="after")  # the transaction is not broken
    assert set(Team.objects.values_list("name", flat=True)) >= {"before", "after"}
    assert not Team.objects.filter(name="refused").exists()


def test_other_errors_are_not_taken_for_a_refusal() -> None:
    from django.db import IntegrityError

    Team.objects.create(name="dup")
    with pytest.raises(IntegrityError):
        statements.run_guarded([_insert_team("dup")], "1")


def test_the_built_insert_and_update_store_what_the_orm_stores() -> None:
    """insert_sql / update_sql build their SQL directly: every field of a query (JSON,
    decimals, times, foreign keys, nulls) reads back as the ORM's own insert and update."""
    import datetime as dt
    from decimal import Decimal

    from django.utils import timezone

    from routerapp.models import Query

    team = Team.objects.create(name="fields")
    made = {
        "team": team,
        "prompt": "",
        "messages": [{"role": "user", "content": "é \\u2028 ' \" ; --"}],
        "tags": ["a", "b"],
        "request_options": {"temperature": 0.5, "stop": ["\n"]},
        "reserved_usd": Decimal("0.000123456789"),
        "budget_windows": [3, 1],
        "status": Query.Status.RUNNING,
        "started_at": timezone.now() - dt.timedelta(seconds=3),
        "predicted_p_correct": 0.25,
    }
    by_orm = Query.objects.create(**made)
    built = Query(**made)
    statements.run_guarded([("q", *statements.insert_sql(Query, [built]))], "1")
    final = {
        "status": Query.Status.DONE,
        "prompt_tokens": 12,
        "cost_usd": Decimal("0.0000042"),
        "trace": {"steps": [1, None, "x"]},
        "finished_at": timezone.now(),
        "answer": "4",
        "votes": None,
    }
    Query.objects.filter(pk=by_orm.pk, status=Query.Status.RUNNING).update(**final)
    sql, params = statements.update_sql(
        Query, final, {"id": built.pk, "status": Query.Status.RUNNING}
    )
    statements.run_guarded([("f", f"{sql} RETURNING 1", params)], "(SELECT count(*) FROM f)")
    a, b = Query.objects.get(pk=by_orm.pk), Query.objects.get(pk=built.pk)
    skip = {"id", "created_at"}
    fields = [f.attname for f in Query._meta.concrete_fields if f.attname not in skip]
    assert {f: getattr(b, f) for f in fields} == {f: getattr(a, f) for f in fields}
    assert abs(b.created_at - a.created_at) < dt.timedelta(seconds=5)
    # A guard over an update that matched nothing refuses it.
    with pytest.raises(statements.Refused):
        statements.run_guarded([("f", f"{sql} RETURNING 1", params)], "(SELECT count(*) FROM f)")
