from django.apps import AppConfig


class RouterAppConfig(AppConfig):
    name = "routerapp"
    verbose_name = "costpass"
    default_auto_field = "django.db.models.BigAutoField"
