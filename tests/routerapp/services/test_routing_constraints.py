"""min_accuracy and max_latency_s are never ignored: a request that sets them is served only
by a configuration the router predicts meets them, else refused with 422 (no router version,
or a single allowed configuration, used to serve the cheapest one blind)."""

from __future__ import annotations

import pytest

from routerapp.errors import Unprocessable
from routerapp.models import Configuration
from routerapp.services import routers as svc
from routerapp.services.bootstrap import bootstrap
from routerapp.services.routing import RequestConstraints, decide
from tests.routerapp.services.test_routers import _log

pytestmark = pytest.mark.django_db


@pytest.fixture
def installed(settings, tmp_path):  # type: ignore[no-untyped-def]
    settings.VAR_DIR = tmp_path
    settings.ROUTER_EXPLORE = False
    bootstrap(admin_password="x" * 12)


HARD = "hard problem 99: what is 99 + 99?"


def _decide(**constraints: object):  # type: ignore[no-untyped-def]
    return decide(
        prompt=HARD, task="hard", constraints=RequestConstraints(**constraints), prompt_tokens=30
    )


def test_without_a_router_accuracy_and_latency_floors_are_refused(installed) -> None:  # type: ignore[no-untyped-def]
    assert _decide().router_version is None  # served: nothing asked that needs a prediction
    for field, value in (("min_accuracy", 0.5), ("max_latency_s", 10.0)):
        with pytest.raises(Unprocessable) as err:
            _decide(**{field: value})
        assert err.value.param == field and err.value.status == 422


def test_a_single_allowed_configuration_is_still_checked_by_the_router(installed) -> None:  # type: ignore[no-untyped-def]
    _log()
    version = svc.router_version_fit(
        version_id=svc.router_version_train(source="log", enqueue=False, name="v1").pk
    )
    svc.router_version_activate(version=version)
    greedy = Configuration.objects.get(strategy__name="greedy")
    # On hard prompts the greedy answer is right 3% of the time: a 0.9 floor is not met.
    with pytest.raises(Unprocessable) as err:
        _decide(configuration=greedy.slug, min_accuracy=0.9)
    assert err.value.param == "min_accuracy"
    # A floor it meets is served, with the router's prediction.
    served = _decide(configuration=greedy.slug, min_accuracy=0.0)
    assert served.configuration == greedy and served.p_correct is not None
