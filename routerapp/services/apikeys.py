"""API keys: created with a random secret shown once, stored as a SHA-256, revocable."""

from __future__ import annotations

import copy
import hashlib
import secrets
import threading
import time
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from routerapp.errors import InvalidInput
from routerapp.models import ApiKey, Team
from routerapp.services.audit import audit_record

KEY_PREFIX = "cp"
# A key row read for authentication serves this process's requests for this long (seconds):
# one SELECT a second per key instead of one per request. A revocation, expiry or any other
# change made elsewhere (another process, the admin, SQL) takes effect within this time; one
# made through this module in this process takes effect at once (_auth_cache_drop).
AUTH_CACHE_S = 1.0
AUTH_CACHE_MAX = 10_000
_auth_cache: dict[str, tuple[float, ApiKey]] = {}
_auth_lock = threading.Lock()


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
    actor_api_key: ApiKey | None = None,
    allowed_models: list[str] | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for `team`; return the row and the full key, which is never shown again.

    ``actor_api_key`` (a key creating another through the API) may only grant scopes it holds
    itself, and only models its own allowlist holds: a key cannot mint a more powerful one.
    Raise InvalidInput otherwise."""
    allowed_models = _allowlist_within(allowed_models, actor_api_key)
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
    if actor_api_key is not None and actor_api_key.scopes:
        held = set(actor_api_key.scopes)
        if not scopes or not set(scopes) <= held:
            raise InvalidInput(
                f"a key with scopes {sorted(held)} can only create keys with some of them; "
                "list them in 'scopes'",
                param="scopes",
            )
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("expires_at must be in the future", param="expires_at")
    for field, value in (("rate_limit_rpm", rate_limit_rpm), ("rate_limit_tpm", rate_limit_tpm)):
        if value is not None and value < 1:
            raise InvalidInput(f"{field} must be a positive integer or empty", param=field)
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
        allowed_models=allowed_models,
    )
    audit_record(
        action="create",
        obj=key,
        team=team,
        actor=created_by,
        actor_api_key=actor_api_key,
        changes={
            "name": [None, name],
            "prefix": [None, prefix],
            "scopes": [None, scopes],
            "expires_at": [None, expires_at.isoformat() if expires_at else None],
            "rate_limit_rpm": [None, rate_limit_rpm],
            "rate_limit_tpm": [None, rate_limit_tpm],
            "allowed_models": [None, allowed_models],
        },
    )
    return key, raw


def _allowlist_within(value: Any, actor_api_key: ApiKey | None) -> list[str]:
    from routerapp.selectors.access import allowlist_validate

    allowed = allowlist_validate(value)
    held = list(actor_api_key.allowed_models or []) if actor_api_key is not None else []
    if held and (not allowed or not set(allowed) <= set(held)):
        raise InvalidInput(
            f"a key allowed only {held} can only grant some of those models; list them in "
            "'allowed_models'",
            param="allowed_models",
        )
    return allowed


@transaction.atomic
def api_key_update_allowlist(
    *,
    key: ApiKey,
    allowed_models: list[str] | None,
    actor: Any = None,
    actor_api_key: ApiKey | None = None,
) -> ApiKey:
    """Replace a key's allowlist (empty: every model its team may call), audited. A key
    editing another may only grant models its own allowlist holds."""
    allowed = _allowlist_within(allowed_models, actor_api_key)
    locked = ApiKey.objects.select_for_update().get(pk=key.pk)
    before = list(locked.allowed_models or [])
    if before != allowed:
        locked.allowed_models = allowed
        locked.save(update_fields=["allowed_models"])
        _auth_cache_drop(locked)
        audit_record(
            action="update",
            obj=locked,
            team=locked.team,
            actor=actor,
            actor_api_key=actor_api_key,
            changes={"allowed_models": [before, allowed]},
        )
    return locked


@transaction.atomic
def api_key_revoke(
    *, key: ApiKey, actor: Any = None, actor_api_key: ApiKey | None = None
) -> ApiKey:
    """Revoke a key (idempotent); a revoked key fails authentication from now on."""
    locked = ApiKey.objects.select_for_update().get(pk=key.pk)
    if locked.revoked_at is None:
        locked.revoked_at = timezone.now()
        locked.save(update_fields=["revoked_at"])
        _auth_cache_drop(locked)
        audit_record(
            action="revoke",
            obj=locked,
            team=locked.team,
            actor=actor,
            actor_api_key=actor_api_key,
            changes={"revoked_at": [None, locked.revoked_at.isoformat()]},
        )
    key.revoked_at = locked.revoked_at
    return key


def api_key_authenticate(raw: str) -> ApiKey | None:
    """Return the live key matching `raw` (a copy of its row with its team, read at most
    AUTH_CACHE_S ago), or None when unknown, revoked or expired."""
    if not raw or len(raw) > 200:
        return None
    digest = hash_key(raw)
    tick = time.monotonic()
    hit = _auth_cache.get(digest)
    if hit is not None and tick - hit[0] < AUTH_CACHE_S:
        key = hit[1]
    else:
        try:
            key = ApiKey.objects.select_related("team").get(hashed_key=digest)
        except ApiKey.DoesNotExist:
            return None  # unknown keys are not cached: nothing to remember about a guess
        with _auth_lock:
            if len(_auth_cache) >= AUTH_CACHE_MAX:
                _auth_cache.clear()
            _auth_cache[digest] = (tick, key)
    now = timezone.now()
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        return None
    # Touch last_used_at at most once a minute: one write per request would serialise the API.
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    # Each request gets its own copy: the cached row is shared by this process's threads.
    mine = copy.copy(key)
    mine.team = copy.copy(key.team)
    return mine


def _auth_cache_drop(key: ApiKey) -> None:
    """Forget a changed key in this process once the change commits (other processes see it
    within AUTH_CACHE_S)."""

    def drop() -> None:
        with _auth_lock:
            _auth_cache.pop(key.hashed_key, None)

    drop()
    transaction.on_commit(drop)  # a request may have cached the old row meanwhile
