from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from routerapp.services.price_catalogue import (
    CatalogueError,
    endpoint_prices_import,
    price_catalogue_load,
    price_changes_plan,
)


class Command(BaseCommand):
    help = (
        "Update endpoint prices (input, output, cached input, reasoning; context windows) from "
        "LiteLLM's model_prices_and_context_window.json or a prices CSV, by file or URL. "
        "Shows the diff; nothing is written without --apply. Finished queries keep the price "
        "they were billed at."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("source", help="a file path or an http(s) URL")
        parser.add_argument("--apply", action="store_true", help="write the changes shown")
        parser.add_argument("--actor", default="", help="username recorded in the audit log")

    def handle(self, *args: Any, source: str, apply: bool, actor: str, **options: Any) -> None:
        user = None
        if actor:
            user = get_user_model().objects.filter(username=actor).first()
            if user is None:
                raise CommandError(f"no user named {actor!r}")
        try:
            catalogue = price_catalogue_load(source)
        except CatalogueError as exc:
            raise CommandError(str(exc)) from exc
        plan = price_changes_plan(catalogue=catalogue)
        self.stdout.write(f"{plan.entries} priced models in {source}")
        for change in plan.changes:
            self.stdout.write(f"~ {change.endpoint.name}  (catalogue: {change.key})")
            for name, (old, new) in change.changes.items():
                self.stdout.write(f"    {name}: {_show(old)} -> {_show(new)}")
        if plan.unchanged:
            self.stdout.write(f"= unchanged: {', '.join(plan.unchanged)}")
        if plan.unmatched:
            self.stdout.write(
                f"? not in the catalogue: {', '.join(plan.unmatched)} "
                "(set the endpoint's price_key to the catalogue's name)"
            )
        if not plan.changes:
            self.stdout.write("nothing to change")
            return
        if not apply:
            self.stdout.write(
                f"dry run: {len(plan.changes)} endpoint(s) would change; run again with --apply"
            )
            return
        updated = endpoint_prices_import(plan=plan, actor=user)
        skipped = len(plan.changes) - updated
        self.stdout.write(
            f"updated {updated} endpoint(s)"
            + (f"; {skipped} skipped (edited meanwhile, run again)" if skipped else "")
        )


def _show(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)
