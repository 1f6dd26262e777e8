"""The audit trail of changes to prices, budgets, keys and configurations."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import models

from routerapp.models import ApiKey, AuditLog, Team


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, models.Model):
        return str(value.pk)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def audit_diff(old: models.Model | None, new: models.Model, fields: list[str]) -> dict[str, list]:
    """Return `{field: [old, new]}` for the fields whose value differs (all of them if no old)."""
    changes: dict[str, list] = {}
    for name in fields:
        before = None if old is None else _jsonable(getattr(old, name))
        after = _jsonable(getattr(new, name))
        if old is None or before != after:
            changes[name] = [before, after]
    return changes


def audit_record(
    *,
    action: str,
    obj: models.Model,
    changes: dict[str, list],
    actor: Any = None,
    actor_api_key: ApiKey | None = None,
    team: Team | None = None,
) -> AuditLog | None:
    """Write one audit row; return None when an update changed nothing."""
    if action == "update" and not changes:
        return None
    return AuditLog.objects.create(
        team=team,
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        actor_api_key=actor_api_key,
        action=action,
        object_type=obj._meta.model_name or type(obj).__name__,
        object_id=str(obj.pk),
        object_repr=str(obj)[:200],
        changes=changes,
    )
