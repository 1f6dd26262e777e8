from django.apps import AppConfig


class RouterAppConfig(AppConfig):
    name = "routerapp"
    verbose_name = "costpass"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        # Every web and worker process (Celery's Django fix-up runs this in workers too)
        # starts tracing before it serves or runs anything; off, nothing is imported.
        if settings.OTEL_ENABLED:
            from routerapp.observability.tracing import tracing_setup

            tracing_setup()
