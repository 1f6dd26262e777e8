"""Number formatting for pages and CSV: money with enough digits to be exact where it matters."""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any

from django import template

register = template.Library()


def _dec(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


@register.filter
def usd(value: Any, digits: int = 4) -> str:
    """'$0.0001234' — `digits` significant digits, never scientific notation; '∞' for None."""
    d = _dec(value)
    if d is None:
        return "∞" if value is None or value == "inf" else "—"
    if d == 0:
        return "$0"
    exponent = d.adjusted()
    places = max(2, int(digits) - 1 - exponent)
    text = f"{abs(d):,.{places}f}"
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0").ljust(2, "0")  # $0.50, $0.00001235, never $0.5000
    return f"{'-' if d < 0 else ''}${whole}.{frac}"


@register.filter
def usd_or_dash(value: Any) -> str:
    return "—" if value is None else usd(value)


@register.filter
def pct(value: Any, places: int = 1) -> str:
    """0.4567 -> '45.7%'; '—' when unknown."""
    if value is None:
        return "—"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "—"
    return "—" if not math.isfinite(v) else f"{100 * v:.{int(places)}f}%"


@register.filter
def num(value: Any, places: int = 1) -> str:
    """A number with thousands separators and `places` decimals (integers stay integers)."""
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "—" if not math.isfinite(v) else f"{v:,.{int(places)}f}"


@register.filter
def ms(value: Any) -> str:
    """Milliseconds as '850 ms' / '12.3 s' / '4.1 min'."""
    if value is None:
        return "—"
    v = float(value)
    if v < 1000:
        return f"{v:,.0f} ms"
    if v < 60_000:
        return f"{v / 1000:,.1f} s"
    return f"{v / 60_000:,.1f} min"


@register.filter
def percent_width(value: Any, total: Any) -> str:
    """A CSS width in percent for a bar: value / total, clamped to 0..100."""
    try:
        v, t = float(value), float(total)
    except (TypeError, ValueError):
        return "0%"
    return "0%" if t <= 0 else f"{max(0.0, min(100.0, 100 * v / t)):.1f}%"


@register.filter
def get(mapping: Any, key: Any) -> Any:
    try:
        return mapping.get(key)
    except AttributeError:
        return None


@register.filter
def pretty(value: Any) -> str:
    """Lists as 'a, b', booleans as yes/no, dicts as 'k: v; ...' (for JSON facts on a page)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(pretty(v) for v in value) or "—"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {pretty(v)}" for k, v in value.items()) or "—"
    if value is None or value == "":
        return "—"
    return str(value)


@register.filter
def label(value: Any) -> str:
    """'outcome_rows' -> 'outcome rows'."""
    return str(value).replace("_", " ")
