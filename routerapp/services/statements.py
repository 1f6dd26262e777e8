"""Several writes as one guarded Postgres statement, for the request's hot path.

A request's writes (reserve the budget and store the query; settle it and store the samples)
each go to Postgres as one ``WITH <write>, <write>, ... SELECT`` statement, the SQL Django's
compilers build for each write. One statement is atomic on its own, so outside a transaction it
needs no ``BEGIN`` / ``COMMIT`` (three round trips less than a transaction around it), and
Postgres runs every data-modifying ``WITH`` part exactly once, whatever the final ``SELECT``
reads.

The *guard* is what keeps it all-or-nothing: an SQL expression that counts what the
conditional parts matched (the reservations that fitted, the query row still running). The
final ``SELECT`` divides by it, so when one of them matched nothing the statement fails with a
division by zero and Postgres undoes every part of it; the caller gets :class:`Refused` and takes
its general path (which says why, e.g. which budget is exhausted). Inside a transaction the
statement runs under a savepoint, so a refusal leaves the transaction usable.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

from django.db import DataError, connection, transaction
from django.db.models import AutoField, Field, Model
from django.db.models.sql.subqueries import InsertQuery, UpdateQuery

__all__ = ["Refused", "available", "insert_sql", "run_guarded", "update_sql"]


class Refused(Exception):
    """The statement's guard failed: nothing it would have written was written."""


def available() -> bool:
    """Whether the default database runs guarded statements (Postgres)."""
    return connection.vendor == "postgresql"


@functools.cache
def _insert_fields(model: type[Model]) -> tuple[list[Field[Any, Any]], bool]:
    """The fields an insert writes (every concrete one but an auto id), and whether they all
    bind as a plain ``%s``."""
    fields = [f for f in model._meta.concrete_fields if not isinstance(f, AutoField)]
    return fields, _plain(fields)


def _plain(fields: list[Field[Any, Any]]) -> bool:
    """Whether every field binds as a plain ``%s`` (no field-specific SQL placeholder)."""
    return not any(hasattr(f, "get_placeholder") for f in fields)


def insert_sql(model: type[Model], objs: list[Any]) -> tuple[str, list[Any]]:
    """Return the ``INSERT`` of ``objs`` (every concrete field but an auto id), each value
    prepared as Django's insert compiler prepares it (``pre_save``, so ``auto_now_add``
    fields are stamped on the objects, then ``get_db_prep_save``). The SQL text depends only
    on the model and the number of rows; building it directly costs a fifth of compiling an
    ``InsertQuery`` (which is used when a value is an expression)."""
    fields, plain = _insert_fields(model)
    rows = [[f.pre_save(obj, True) for f in fields] for obj in objs]
    if not plain or any(hasattr(v, "resolve_expression") for r in rows for v in r):
        insert = InsertQuery(model)
        insert.insert_values(fields, objs)
        [(sql, params)] = insert.get_compiler(connection=connection).as_sql()
        return sql, list(params)
    qn = connection.ops.quote_name
    columns = ", ".join(qn(str(f.column)) for f in fields)
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    sql = f"INSERT INTO {qn(model._meta.db_table)} ({columns}) VALUES " + ", ".join(
        [row] * len(objs)
    )
    params = [
        f.get_db_prep_save(v, connection=connection)
        for r in rows
        for f, v in zip(fields, r, strict=True)
    ]
    return sql, params


def _field(model: type[Model], name: str) -> Field[Any, Any]:
    field = model._meta.get_field(name)
    assert isinstance(field, Field), f"{model.__name__}.{name} is not a concrete field"
    return field


def update_sql(
    model: type[Model], values: dict[str, Any], where: dict[str, Any]
) -> tuple[str, list[Any]]:
    """Return ``UPDATE <model> SET <values> WHERE <field = value AND ...>`` (no
    ``RETURNING``), each value prepared as Django's update compiler and exact lookups prepare
    it. Expressions among the values are compiled by Django."""
    sets = [(_field(model, name), value) for name, value in values.items()]
    conds = [(_field(model, name), value) for name, value in where.items()]
    if not _plain([f for f, _ in sets]) or any(hasattr(v, "resolve_expression") for _, v in sets):
        update = model._default_manager.filter(**where).query.chain(UpdateQuery)
        assert isinstance(update, UpdateQuery)
        update.add_update_values(values)
        sql, compiled = update.get_compiler(connection=connection).as_sql()
        return sql, list(compiled)
    qn = connection.ops.quote_name
    sql = (
        f"UPDATE {qn(model._meta.db_table)} SET "
        + ", ".join(f"{qn(str(f.column))} = %s" for f, _ in sets)
        + " WHERE "
        + " AND ".join(f"{qn(str(f.column))} = %s" for f, _ in conds)
    )
    params = [f.get_db_prep_save(v, connection=connection) for f, v in sets]
    params += [f.get_db_prep_value(v, connection=connection, prepared=False) for f, v in conds]
    return sql, params


def run_guarded(
    parts: list[tuple[str, str, list[Any]]],
    guard: str,
    *,
    select: str = "",
    joins: str = "",
    params: list[Any] | None = None,
) -> list[tuple[Any, ...]]:
    """Run ``WITH name AS (sql), ... SELECT 1 / (guard), select FROM (SELECT 1) AS one joins``
    as one statement and return its rows (the first column is the guard's 1).

    ``parts``: (name, sql, params) of each write, in order. ``guard``: an integer SQL
    expression over the parts, 0 when the statement must not take effect (then nothing is
    written and :class:`Refused` is raised). ``select`` / ``joins``: what else to read, e.g.
    ``b.*`` with ``LEFT JOIN b ON true`` to return a part's ``RETURNING`` rows."""
    ctes = ", ".join(f"{name} AS ({sql})" for name, sql, _ in parts)
    args = [a for _, _, p in parts for a in p] + list(params or [])
    sql = f"WITH {ctes} SELECT 1 / ({guard})::int" + (f", {select}" if select else "")
    sql += f" FROM (SELECT 1) AS one {joins}".rstrip()
    # Outside a transaction the statement commits alone; inside one, a savepoint keeps a
    # refusal from breaking the caller's transaction.
    scope = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    try:
        with scope, connection.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())
    except DataError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == "22012":  # division_by_zero: the guard
            raise Refused() from exc
        raise
