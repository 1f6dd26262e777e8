"""Per-process cache of what every request reads and almost never changes: the enabled
configurations, the router versions that serve, the budget policies that cover a caller.

A cached value is valid for one *catalog version*: a counter in ``costpass_catalog_version``
that Postgres triggers (migration 0020) bump in the same transaction as any INSERT, UPDATE,
DELETE or TRUNCATE on the tables these values are read from (``CATALOG_TABLES``), whoever
writes: a service, the admin, a migration, plain SQL, another process. A request reads the
version (one primary-key SELECT) instead of re-reading the rows, and sees every committed
change at once: there is no staleness window. A reader that reads the version, then rows
that changed meanwhile, caches newer rows under the older version: the next request sees a
newer version and reads them again (never the other way round).

Without the counter (SQLite, the embedded default) nothing is cached.

Cached rows are shared by this process's threads: callers treat them as read-only.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from django.db import connection

T = TypeVar("T")

VERSION_TABLE = "costpass_catalog_version"
# What the cached values are read from (the triggers of migration 0020 watch these).
CATALOG_TABLES = (
    "routerapp_configuration",
    "routerapp_modelendpoint",
    "routerapp_strategyconfig",
    "routerapp_routerversion",
    "routerapp_budgetpolicy",
    "routerapp_team",
)
MAX_ENTRIES = 4096

_cache: dict[Any, tuple[int, Any]] = {}
_lock = threading.Lock()
_pinned: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "costpass_catalog_version", default=None
)


# The catalog version this process read last (what an optimistic pin starts from).
_newest: int | None = None
# An SQL test, for a guarded statement (services.statements), that is 1 while the catalog is
# still at the version given as its parameter, else 0.
CATALOG_AT = f'(SELECT count(*) FROM "{VERSION_TABLE}" WHERE "id" = 1 AND "n" = %s)'


class CatalogChanged(Exception):
    """The catalog moved after an optimistic pin: route again on the current version."""


def catalog_version(*, fresh: bool = False) -> int | None:
    """Return the catalog version now (one round trip), or None where there is none. Inside
    ``catalog_pinned``, the pinned version unless ``fresh``."""
    global _newest
    if connection.vendor != "postgresql":
        return None
    pinned = _pinned.get()
    if pinned is not None and not fresh:
        return pinned
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT "n" FROM "{VERSION_TABLE}" WHERE "id" = 1')
        row = cursor.fetchone()
    if row is None:
        return None
    version = int(row[0])
    # The last version read, not the largest: after a database was restored or recreated the
    # counter restarts, and pinning a number it will not reach soon would refuse every write.
    # (Two threads racing here leave the older of two reads at worst: one refused statement.)
    _newest = version
    return version


@contextmanager
def catalog_pinned(*, optimistic: bool = False) -> Iterator[int | None]:
    """Pin one catalog version for every cached lookup inside (one request's); yield it.

    By default the version is read (one round trip). ``optimistic`` pins the version this
    process read last, with no round trip (when it has read one): the caller must then
    check, in the statement that writes what it decided, that the catalog is still at that
    version (``CATALOG_AT``), and decide again on a fresh pin when it is not. The versions
    come from a sequence, so a catalog that moved never comes back to an older number."""
    version = _newest if optimistic and _newest is not None else catalog_version()
    token = _pinned.set(version)
    try:
        yield version
    finally:
        _pinned.reset(token)


def cached(key: Any, load: Callable[[], T]) -> T:
    """Return ``load()``, from this process's cache when it was loaded at the current
    catalog version."""
    version = catalog_version()
    if version is None:
        return load()
    hit = _cache.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    value = load()
    with _lock:
        if len(_cache) >= MAX_ENTRIES:
            _cache.clear()
        _cache[key] = (version, value)
    return value
