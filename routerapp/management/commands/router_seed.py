from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from routerapp.errors import ServiceError
from routerapp.models import ModelEndpoint, RouterVersion


class Command(BaseCommand):
    help = (
        "Cold start: seed a router version for this installation's endpoints from public outcome "
        "data (a suite or a source of the data folder). Without --map it proposes a mapping "
        "(exact name, alias, nearest by family and price) and stops, for you to confirm."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--source", help="suite:<name> or data:<source> (--list shows them)")
        parser.add_argument("--list", action="store_true", help="list the outcome sources")
        parser.add_argument(
            "--map",
            action="append",
            default=[],
            metavar="ENDPOINT=MODEL",
            help="confirmed mapping (repeat per endpoint); 'proposed' takes the proposal",
        )
        parser.add_argument("--name", default=None)
        parser.add_argument("--activate", action="store_true", help="serve if it passes the floor")

    def handle(self, *args: Any, **opts: Any) -> None:
        from routerapp.services.coldstart import (
            outcome_sources,
            propose_mapping,
            router_version_seed,
        )
        from routerapp.services.routers import floor_refusal, router_version_fit

        if opts["list"]:
            for source in outcome_sources():
                self.stdout.write(source)
            return
        if not opts["source"]:
            raise CommandError("give --source (see --list)")
        try:
            endpoints = list(ModelEndpoint.objects.filter(enabled=True).order_by("name"))
            proposals = propose_mapping(source=opts["source"], endpoints=endpoints)
            if not opts["map"]:
                for p in proposals:
                    self.stdout.write(f"{p.endpoint}={p.model or ''}  # {p.how}: {p.detail}")
                self.stdout.write("confirm with --map ENDPOINT=MODEL ... (or --map proposed)")
                return
            if opts["map"] == ["proposed"]:
                mapping = {p.endpoint: p.model for p in proposals if p.model}
            else:
                pairs = [m.split("=", 1) for m in opts["map"]]
                if any(len(p) != 2 or not p[0] for p in pairs):
                    raise CommandError("--map takes ENDPOINT=MODEL")
                mapping = {k: v for k, v in pairs}
            version = router_version_seed(
                source=opts["source"], mapping=mapping, name=opts["name"],
                activate=opts["activate"], enqueue=False,
            )  # fmt: skip
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        version = router_version_fit(version_id=version.pk)
        if version.status != RouterVersion.Status.READY:
            raise CommandError(f"router version {version.pk} failed: {version.error}")
        floor = version.significance or {}
        self.stdout.write(
            f"router version {version.pk} ({version.name}) is ready"
            + (" and active" if version.is_active else "")
        )
        self.stdout.write(
            f"  floor: CoP router - best single ({floor.get('single_config')}) = "
            f"{floor.get('diff')} USD per correct, CI [{floor.get('ci_low')}, "
            f"{floor.get('ci_high')}] on {floor.get('n_prompts')} held-out prompts: "
            f"{floor.get('verdict')}"
        )
        refusal = floor_refusal(version)
        if refusal:
            self.stdout.write(f"  may not serve: {refusal}")
