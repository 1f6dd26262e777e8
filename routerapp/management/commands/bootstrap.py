from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from routerapp.services.bootstrap import bootstrap


class Command(BaseCommand):
    help = "Create the demo team, the CPU model, its configurations and an admin user (idempotent)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--admin-username", default="admin")
        parser.add_argument(
            "--calibrate",
            action="store_true",
            help="when no router version exists, start the calibration benchmark that trains "
            "and activates the first one (runs in the workers)",
        )

    def handle(self, *args: Any, admin_username: str, calibrate: bool, **options: Any) -> None:
        report = bootstrap(
            admin_username=admin_username,
            admin_password=os.environ.get("COSTPASS_ADMIN_PASSWORD") or None,
        )
        for item in report.created:
            self.stdout.write(f"created {item}")
        if not report.created:
            self.stdout.write("nothing to do: everything exists")
        if report.admin_password:
            path = settings.VAR_DIR / "admin-password.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(report.admin_password + "\n")
            path.chmod(0o600)
            self.stdout.write(
                f"admin login: {admin_username} / {report.admin_password} (also in {path})"
            )
        if calibrate:
            from routerapp.services.routers import calibration_ensure

            run = calibration_ensure()
            if run is not None:
                self.stdout.write(
                    f"calibration started: {run.items_count} generated problems x "
                    f"{run.configurations.count()} configurations; then a router version is "
                    "trained, and serves only if it beats the best single configuration with "
                    "95% confidence (more batches run while that is undecided; see the Routers "
                    "page)"
                )
