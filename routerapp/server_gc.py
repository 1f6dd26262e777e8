"""Garbage collection of a server process: freeze what the warm-up left alive.

A web worker holds a few hundred thousand long-lived objects once it has served its first
requests (Django, DRF, the routing code and its caches). CPython's full collection walks every
one of them: measured here, about 100 ms once every couple of thousand requests, which lands on
whichever request triggers it (the max and the p99.9 of the latency). ``gc.freeze()`` moves the
objects alive at that moment into a permanent generation that collections skip; garbage made
afterwards is collected as before.

The web entry points (``routerapp.wsgi``, ``routerapp.asgi``) call :func:`freeze_after_warmup`,
so it applies to servers only (not to management commands, workers or tests):
``COSTPASS_GC_FREEZE_AFTER`` requests after start (default 50, once the request path's lazy
imports and caches are loaded), a process collects once and freezes; 0 turns it off.
"""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any

from django.core.signals import request_finished

from routerapp.env import env_int

log = logging.getLogger(__name__)


def freeze_after_warmup() -> None:
    """Freeze this process's heap once it has served ``COSTPASS_GC_FREEZE_AFTER`` requests."""
    after = env_int("COSTPASS_GC_FREEZE_AFTER", 50, minimum=0)
    if after == 0:
        return
    served = 0
    lock = threading.Lock()

    def on_request_finished(**_: Any) -> None:
        nonlocal served
        with lock:
            served += 1
            if served != after:
                return
        request_finished.disconnect(on_request_finished, dispatch_uid=__name__)
        gc.collect()
        gc.freeze()
        log.info("gc: froze %d objects after %d requests", gc.get_freeze_count(), after)

    request_finished.connect(on_request_finished, weak=False, dispatch_uid=__name__)
