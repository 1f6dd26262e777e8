"""Diagnostic only (bench/gateway_overhead.py --without-rollup): the product's WSGI app with the
dashboards' per-query rollup refresh turned off, to show what that refresh costs the request
path. Never used to serve anything."""

import importlib

from routerapp.wsgi import application  # sets Django up; must come before any model import

__all__ = ["application"]

rollups = importlib.import_module("routerapp.services.rollups")
rollups.rollup_refresh_for_query = lambda **_: None
