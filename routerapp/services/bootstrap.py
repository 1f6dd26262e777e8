"""First-start data: the demo team, the CPU model with a price, its strategy configurations,
and an admin user. Idempotent: running it again changes nothing that exists."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction

from routerapp.models import Configuration, ModelEndpoint, StrategyConfig, Team, TeamMembership

DEMO_TEAM = "demo"
CPU_ENDPOINT = "smollm2-135m"
# SmolLM2-135M priced like the smallest open-weight models in the reference price list
# (USD per million tokens); admins change it in the admin.
CPU_PRICE_IN = Decimal("0.05")
CPU_PRICE_OUT = Decimal("0.05")

# (strategy config name, strategy slug, params, description). Short generations keep the
# CPU model responsive; the router learns which of these pays off per prompt.
DEFAULT_STRATEGIES: list[tuple[str, str, dict[str, Any], str]] = [
    ("greedy", "single", {"temperature": 0.0, "max_tokens": 128}, "One greedy sample"),
    (
        "sampled",
        "single",
        {"temperature": 0.7, "top_p": 0.95, "max_tokens": 128},
        "One sample at temperature 0.7",
    ),
    (
        "majority-5",
        "majority_vote",
        {"n": 5, "temperature": 0.7, "max_tokens": 128},
        "Majority vote over 5 samples (self-consistency)",
    ),
    (
        "short-1-of-5",
        "short_m_at_k",
        {"k": 5, "m": 1, "temperature": 0.7, "max_tokens": 128},
        "Launch 5 samples, keep the first to finish, abort the rest",
    ),
    (
        "best-of-4",
        "best_of_n",
        {"n": 4, "scorer": "mean_logprob", "temperature": 0.7, "max_tokens": 128},
        "Best of 4 samples by mean token log-probability",
    ),
]


@dataclass
class BootstrapReport:
    created: list[str] = field(default_factory=list)
    admin_password: str | None = None


@transaction.atomic
def bootstrap(
    *,
    admin_username: str = "admin",
    admin_password: str | None = None,
    admin_email: str = "admin@example.com",
) -> BootstrapReport:
    """Create what is missing; return what was created (and a generated admin password)."""
    report = BootstrapReport()
    team, created = Team.objects.get_or_create(name=DEMO_TEAM)
    if created:
        report.created.append(f"team {team.name}")
    endpoint, created = ModelEndpoint.objects.get_or_create(
        name=CPU_ENDPOINT,
        defaults={
            "display_name": "SmolLM2-135M-Instruct (llama.cpp, CPU)",
            "engine": ModelEndpoint.Engine.LLAMA_CPP,
            "engine_params": {},
            "input_usd_per_mtok": CPU_PRICE_IN,
            "output_usd_per_mtok": CPU_PRICE_OUT,
            "descriptors": {"params_b": 0.135, "family": "smollm2", "quantization": "Q4_1"},
        },
    )
    if created:
        report.created.append(f"endpoint {endpoint.name}")
    for name, slug, params, description in DEFAULT_STRATEGIES:
        strategy, created = StrategyConfig.objects.get_or_create(
            name=name, defaults={"strategy": slug, "params": params, "description": description}
        )
        if created:
            report.created.append(f"strategy {name}")
        config, created = Configuration.objects.get_or_create(
            endpoint=endpoint,
            strategy=strategy,
            defaults={"slug": f"{endpoint.name}/{strategy.name}"},
        )
        if created:
            report.created.append(f"configuration {config.slug}")
    user_model = get_user_model()
    user = user_model.objects.filter(username=admin_username).first()
    if user is None:
        password = admin_password or secrets.token_urlsafe(12)
        user = user_model.objects.create_superuser(admin_username, admin_email, password)
        report.created.append(f"admin user {admin_username}")
        if admin_password is None:
            report.admin_password = password
    TeamMembership.objects.get_or_create(
        team=team, user=user, defaults={"role": TeamMembership.Role.ADMIN}
    )
    return report
