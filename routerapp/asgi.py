"""ASGI entry point."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "routerapp.settings")
application = get_asgi_application()

from routerapp.server_gc import freeze_after_warmup  # noqa: E402  (needs the settings)

freeze_after_warmup()
