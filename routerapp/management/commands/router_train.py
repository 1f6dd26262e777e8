from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from routerapp.errors import ServiceError
from routerapp.models import RouterVersion, Team
from routerapp.services.routers import router_version_fit, router_version_train


class Command(BaseCommand):
    help = (
        "Train a router version from the query log (graded queries, feedback, benchmark runs) "
        "or from a suite folder, evaluate it against baselines and store it."
    )

    def add_arguments(self, parser: Any) -> None:
        source = parser.add_mutually_exclusive_group()
        source.add_argument("--from-log", action="store_true", help="train on the query log")
        source.add_argument("--suite", metavar="DIR", help="train on a suite folder")
        parser.add_argument("--name", default=None)
        parser.add_argument(
            "--activate", action="store_true", help="serve with it once it is ready"
        )
        parser.add_argument(
            "--team",
            default=None,
            help="train on this team's log only; once activated it serves that team only",
        )
        parser.add_argument(
            "--background",
            action="store_true",
            help="enqueue on the training queue instead of fitting here",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        source = "suite" if opts["suite"] else "log"
        team = None
        if opts["team"]:
            team = Team.objects.filter(name=opts["team"]).first()
            if team is None:
                raise CommandError(f"no team named {opts['team']!r}")
        try:
            version = router_version_train(
                source=source,
                suite_dir=opts["suite"],
                name=opts["name"],
                activate=opts["activate"],
                enqueue=opts["background"],
                team=team,
            )
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        if opts["background"]:
            self.stdout.write(f"router version {version.pk} enqueued for training")
            return
        version = router_version_fit(version_id=version.pk)
        if version.status != RouterVersion.Status.READY:
            raise CommandError(f"router version {version.pk} failed: {version.error}")
        from routerapp.services.routers import floor_refusal

        policies = version.evaluation.get("policies", {})
        self.stdout.write(
            f"router version {version.pk} ({version.name}) is ready"
            + (" and active" if version.is_active else "")
        )
        floor = version.significance or {}
        if floor.get("n_prompts"):
            self.stdout.write(
                f"  floor: CoP router - best single ({floor.get('single_config')}) = "
                f"{floor.get('diff')} USD per correct, {round(100 * floor['confidence'])}% CI "
                f"[{floor.get('ci_low')}, {floor.get('ci_high')}] on {floor['n_prompts']} prompts: "
                f"{floor.get('verdict')}"
            )
        refusal = floor_refusal(version)
        if refusal and opts["activate"]:
            self.stdout.write(f"  not activated: {refusal}")
        for name in (
            "router",
            "best_single_cop",
            "best_single_acc",
            "knn",
            "random",
            "oracle_min_cop",
        ):
            if name in policies:
                self.stdout.write(f"  {name:18s} {json.dumps(policies[name], default=str)[:200]}")
