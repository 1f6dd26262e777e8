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
