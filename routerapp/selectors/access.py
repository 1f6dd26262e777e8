"""Who may call what: the configurations a team and an API key may use.

An allowlist holds model names (every configuration of that endpoint), configuration ids, or
shell-style patterns of either (``gpt-4o*``). An empty list sets no limit. A caller may use a
configuration that both its team's list and its key's list allow.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from routerapp.models import ApiKey, Configuration, Team


def allowlist_matches(entries: Iterable[str], configuration: Configuration) -> bool:
    """Return whether an allowlist lets ``configuration`` through (an empty one does)."""
    entries = [e for e in entries if e]
    if not entries:
        return True
    names = (configuration.slug, configuration.endpoint.name)
    return any(fnmatchcase(name, entry) for entry in entries for name in names)


def permitted_configuration_slugs(
    *, team: Team | None, api_key: ApiKey | None
) -> frozenset[str] | None:
    """Return the ids of the enabled configurations the caller may use, or None when neither
    the team nor the key has an allowlist (everything enabled is allowed)."""
    lists = [list(x.allowed_models or []) for x in (team, api_key) if x is not None]
    lists = [entries for entries in lists if entries]
    if not lists:
        return None
    configs = Configuration.objects.filter(enabled=True, endpoint__enabled=True).select_related(
        "endpoint"
    )
    return frozenset(
        c.slug for c in configs if all(allowlist_matches(entries, c) for entries in lists)
    )


MAX_ALLOWLIST_ENTRIES = 200


def allowlist_validate(value: object, *, param: str = "allowed_models") -> list[str]:
    """Return an allowlist as a clean list of names; raise InvalidInput when it is not a list
    of non-empty strings (at most MAX_ALLOWLIST_ENTRIES of at most 200 characters)."""
    from routerapp.errors import InvalidInput

    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{param} must be a list of model names or patterns", param=param)
    cleaned = [v.strip() for v in value]
    if any(not v or len(v) > 200 for v in cleaned):
        raise InvalidInput(f"{param} entries must be 1 to 200 characters", param=param)
    if len(cleaned) > MAX_ALLOWLIST_ENTRIES:
        raise InvalidInput(
            f"{param} has {len(cleaned)} entries; at most {MAX_ALLOWLIST_ENTRIES}", param=param
        )
    return list(dict.fromkeys(cleaned))
