"""WSGI entry point (gunicorn routerapp.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "routerapp.settings")
application = get_wsgi_application()

from routerapp.server_gc import freeze_after_warmup  # noqa: E402  (needs the settings)

freeze_after_warmup()
