"""Django's PostgreSQL backend, with the connection health check skipped while a connection is
known to be fresh.

Persistent connections (``CONN_MAX_AGE``) are health-checked (``CONN_HEALTH_CHECKS``) before a
request first uses them: a ``SELECT 1``, one round trip on every request. A connection that
served the previous request without an error less than ``FRESH_S`` ago is not checked again:
what the check guards against is a connection that died while idle (a server restart, an idle
timeout), and a busy connection is idle for less than that. Should one die within that second
anyway, the request that meets it fails as it would have without checks, the error marks the
connection, and it is closed and replaced at the end of that request.
"""

from __future__ import annotations

import time

from django.db.backends.postgresql import base

FRESH_S = 1.0


class DatabaseWrapper(base.DatabaseWrapper):
    health_check_done: bool  # Django's: checked (or connected) during this request
    _fresh_until = 0.0

    def close_if_unusable_or_obsolete(self) -> None:
        # At the end of a request (Django calls this at its start and its end), a connection
        # that the request used (checked or new: ``health_check_done``) without an error is
        # fresh for FRESH_S.
        used = self.connection is not None and self.health_check_done and not self.errors_occurred
        super().close_if_unusable_or_obsolete()
        if used and self.connection is not None:
            self._fresh_until = time.monotonic() + FRESH_S

    def close_if_health_check_failed(self) -> None:
        if (
            self.connection is not None
            and not self.health_check_done
            and time.monotonic() < self._fresh_until
        ):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()
