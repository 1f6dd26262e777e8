from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from routerapp.health import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("routerapp.api.urls")),
    path(
        "api/schema/",
        SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]),
        name="schema",
    ),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(
            url_name="schema", authentication_classes=[], permission_classes=[]
        ),
        name="api-docs",
    ),
    path("healthz", healthz, name="healthz"),
    # The web UI for teams (pages, login); see routerapp/views/urls.py.
    path("", include("routerapp.views.urls")),
]
