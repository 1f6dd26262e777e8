"""The Celery application. Configuration comes from Django settings (CELERY_* names).

Start a worker with `celery -A workers worker -Q <queues>`; GPU workers add `--pool=solo`.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "routerapp.settings")

app = Celery("costpass")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.on_configure.connect
def _configure(sender: Celery, **_: object) -> None:
    from django.conf import settings

    from workers.queues import Queue

    conf = sender.conf
    conf.task_default_queue = Queue.DEFAULT.value
    conf.task_acks_late = True
    conf.task_reject_on_worker_lost = True
    conf.worker_prefetch_multiplier = 1
    conf.task_track_started = True
    conf.result_expires = 24 * 3600
    conf.broker_connection_retry_on_startup = True
    conf.imports = ("workers.tasks",)
    transport_options: dict[str, object] = {
        # Must exceed the hard time limit, or the broker redelivers a task still running.
        "visibility_timeout": settings.CELERY_VISIBILITY_TIMEOUT_S,
    }
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        broker_dir = settings.CELERY_BROKER_DIR
        processed = broker_dir.parent / "processed"
        # Exchange tables; kombu's default is a "control" folder in the working directory.
        control = broker_dir.parent / "control"
        for path in (broker_dir, processed, control):
            path.mkdir(parents=True, exist_ok=True)
        transport_options.update(
            data_folder_in=str(broker_dir),
            data_folder_out=str(broker_dir),
            processed_folder=str(processed),
            control_folder=str(control),
            store_processed=False,
        )
    if settings.CELERY_RESULT_BACKEND.startswith("file://"):
        os.makedirs(settings.CELERY_RESULT_BACKEND.removeprefix("file://"), exist_ok=True)
    conf.broker_transport_options = transport_options


def consumed_queues() -> list[str]:
    """Return the queue names this worker was started with (`-Q`), or [] outside a worker."""
    consume_from = app.amqp.queues.consume_from or {}
    return list(consume_from)


@worker_process_init.connect
def _preload_in_child(**_: object) -> None:
    """Prefork pool: each child loads its engines once, before its first query."""
    from routerapp.services.execution import engines_preload

    engines_preload(queues=consumed_queues())


@worker_ready.connect
def _preload_in_main(sender: object = None, **_: object) -> None:
    """Solo and thread pools run tasks in the main process: load the engines there, once."""
    pool_module = type(getattr(sender, "pool", None)).__module__
    if pool_module.endswith(("solo", "thread")):
        from routerapp.services.execution import engines_preload

        engines_preload(queues=consumed_queues())
