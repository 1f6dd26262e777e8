"""factory_boy factories for the data model."""

from __future__ import annotations

from decimal import Decimal

import factory
from django.contrib.auth import get_user_model

from routerapp import models as m


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = m.Team
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"team-{n}")


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", "correct-horse-battery")

    @factory.post_generation
    def _save_password(obj, create: bool, extracted: object, **kwargs: object) -> None:  # type: ignore[no-untyped-def]  # noqa: N805
        if create:
            obj.save(update_fields=["password"])


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = m.TeamMembership

    team = factory.SubFactory(TeamFactory)
    user = factory.SubFactory(UserFactory)


class EndpointFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = m.ModelEndpoint
        django_get_or_create = ("name",)

    name = "smollm2-135m"
    engine = m.ModelEndpoint.Engine.LLAMA_CPP
    engine_params = factory.LazyFunction(dict)
    input_usd_per_mtok = Decimal("0.05")
    output_usd_per_mtok = Decimal("0.10")


class StrategyConfigFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = m.StrategyConfig
        django_get_or_create = ("name",)

    name = "greedy-short"
    strategy = "single"
    params = factory.LazyFunction(lambda: {"temperature": 0.0, "max_tokens": 24})


class ConfigurationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = m.Configuration
        django_get_or_create = ("slug",)

    endpoint = factory.SubFactory(EndpointFactory)
    strategy = factory.SubFactory(StrategyConfigFactory)
    slug = factory.LazyAttribute(lambda o: f"{o.endpoint.name}/{o.strategy.name}")


class BudgetPolicyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = m.BudgetPolicy

    team = factory.SubFactory(TeamFactory)
    name = factory.Sequence(lambda n: f"budget-{n}")
    period = m.BudgetPolicy.Period.MONTH
    limit_usd = Decimal("1.00")
    mode = m.BudgetPolicy.Mode.HARD_REJECT
