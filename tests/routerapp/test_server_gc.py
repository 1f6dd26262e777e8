"""The web entry points freeze the heap once the warm-up requests have been served."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from django.core.signals import request_finished

from routerapp.server_gc import freeze_after_warmup


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()
    request_finished.disconnect(dispatch_uid="routerapp.server_gc")


def test_the_heap_is_frozen_once_after_the_warmup_requests(
    unfrozen: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COSTPASS_GC_FREEZE_AFTER", "3")
    freeze_after_warmup()
    for _ in range(2):
        request_finished.send(sender=None)
    assert gc.get_freeze_count() == 0
    request_finished.send(sender=None)
    frozen = gc.get_freeze_count()
    assert frozen > 1000  # the modules, Django, this test run
    gc.unfreeze()
    request_finished.send(sender=None)  # once only: the hook is gone
    assert gc.get_freeze_count() == 0


def test_zero_turns_it_off(unfrozen: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSTPASS_GC_FREEZE_AFTER", "0")
    freeze_after_warmup()
    for _ in range(5):
        request_finished.send(sender=None)
    assert gc.get_freeze_count() == 0
