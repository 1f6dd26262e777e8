from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from routerapp.errors import ServiceError
from routerapp.models import Team
from routerapp.services.apikeys import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a team; the key is printed alone on the last line."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--team", required=True, help="team name")
        parser.add_argument("--name", default="cli", help="a label for the key")
        parser.add_argument("--scopes", default="", help="comma-separated; empty = all scopes")

    def handle(self, *args: Any, team: str, name: str, scopes: str, **options: Any) -> None:
        try:
            team_obj = Team.objects.get(name=team)
        except Team.DoesNotExist:
            known = ", ".join(Team.objects.values_list("name", flat=True)) or "none"
            raise CommandError(f"no team named {team!r} (teams: {known})") from None
        try:
            key, raw = api_key_create(
                team=team_obj,
                name=name,
                scopes=[s.strip() for s in scopes.split(",") if s.strip()],
            )
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        self.stderr.write(f"created key {key.prefix} for team {team_obj.name}; it is shown once")
        self.stdout.write(raw)
