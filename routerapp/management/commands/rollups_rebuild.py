"""Rebuild the dashboards' daily rollups from the query log (backfill or repair)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from routerapp.models import Team
from routerapp.services.rollups import rollup_rebuild


class Command(BaseCommand):
    help = (
        "Recompute the dashboards' daily rollups from the query log: after a bulk import, on a "
        "database that predates them, or after API keys or router versions were deleted."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--team", help="only this team (by name)")
        parser.add_argument("--since", type=dt.date.fromisoformat, help="first day, YYYY-MM-DD")
        parser.add_argument("--until", type=dt.date.fromisoformat, help="last day, YYYY-MM-DD")

    def handle(self, *args: Any, team: str | None, since: Any, until: Any, **opts: Any) -> None:
        chosen = None
        if team:
            chosen = Team.objects.filter(name=team).first()
            if chosen is None:
                raise CommandError(f"no team named {team!r}")
        if since and until and since > until:
            raise CommandError("--since must not be after --until")
        written = rollup_rebuild(start=since, end=until, team=chosen)
        self.stdout.write(f"wrote {written} rollup rows")
