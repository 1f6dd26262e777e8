"""Diagnostic only (bench/gateway_overhead.py --without-rollup): the product's WSGI app with the
dashboards' per-query rollup refresh turned off, to show what that refresh costs the request
path. Never used to serve anything."""

from routerapp.wsgi import application  # noqa: F401 - sets Django up first
from routerapp.services import rollups

rollups.rollup_refresh_for_query = lambda **_: None  # type: ignore[assignment]
