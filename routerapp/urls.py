from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from routerapp.health import healthz, metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("routerapp.api.urls")),
    path("v1/", include("routerapp.api.urls_openai")),
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
    path("metrics", metrics_view, name="metrics"),
    # The web UI for teams (pages, login); see routerapp/views/urls.py.
    path("", include("routerapp.views.urls")),
]

# JSON errors in OpenAI's shape under /v1 and /api, Django's pages elsewhere.
handler400 = "routerapp.api.errors.bad_request"
handler404 = "routerapp.api.errors.not_found"
handler500 = "routerapp.api.errors.server_error"
