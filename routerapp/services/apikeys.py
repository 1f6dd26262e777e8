"""API keys: created with a random secret shown once, stored as a SHA-256, revocable."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from routerapp.errors import InvalidInput
from routerapp.models import ApiKey, Team
from routerapp.services.audit import audit_record

KEY_PREFIX = "cp"


def hash_key(raw: str) -> str:
    """Return the stored digest of a key. Keys carry 190 random bits, so a fast hash is safe."""
    return hashlib.sha256(raw.encode()).hexdigest()


@transaction.atomic
def api_key_create(
    *,
    team: Team,
    name: str,
    created_by: Any = None,
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
    rate_limit_rpm: int | None = None,
    rate_limit_tpm: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for `team`; return the row and the full key, which is never shown again."""
    name = name.strip()
    if not name:
        raise InvalidInput("a key needs a name", param="name")
    scopes = list(scopes or [])
    unknown = sorted(set(scopes) - set(ApiKey.Scope.values))
    if unknown:
        raise InvalidInput(
            f"unknown scopes {unknown}; known scopes: {sorted(ApiKey.Scope.values)}",
            param="scopes",
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("expires_at must be in the future", param="expires_at")
    prefix = f"{KEY_PREFIX}_{secrets.token_hex(4)}"
    raw = f"{prefix}_{secrets.token_urlsafe(24)}"
    key = ApiKey.objects.create(
        team=team,
        name=name,
        prefix=prefix,
        hashed_key=hash_key(raw),
        scopes=scopes,
        created_by=created_by if getattr(created_by, "is_authenticated", False) else None,
        expires_at=expires_at,
        rate_limit_rpm=rate_limit_rpm,
        rate_limit_tpm=rate_limit_tpm,
    )
    audit_record(
        action="create",
        obj=key,
        team=team,
        actor=created_by,
        changes={"prefix": [None, prefix], "scopes": [None, scopes]},
    )
    return key, raw


@transaction.atomic
def api_key_revoke(*, key: ApiKey, actor: Any = None) -> ApiKey:
    """Revoke a key (idempotent); a revoked key fails authentication from now on."""
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit_record(
            action="revoke",
            obj=key,
            team=key.team,
            actor=actor,
            changes={"revoked_at": [None, key.revoked_at.isoformat()]},
        )
    return key


def api_key_authenticate(raw: str) -> ApiKey | None:
    """Return the live key matching `raw`, or None when unknown, revoked or expired."""
    if not raw or len(raw) > 200:
        return None
    try:
        key = ApiKey.objects.select_related("team").get(hashed_key=hash_key(raw))
    except ApiKey.DoesNotExist:
        return None
    now = timezone.now()
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        return None
    # Touch last_used_at at most once a minute: one write per request would serialise the API.
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key
