from django.urls import path

from routerapp.api import views_queries

urlpatterns = [
    path("queries", views_queries.QueryListCreate.as_view(), name="api-queries"),
    path("queries/<str:query_id>", views_queries.QueryDetail.as_view(), name="api-query"),
    path(
        "queries/<str:query_id>/cancel",
        views_queries.QueryCancel.as_view(),
        name="api-query-cancel",
    ),
    path(
        "queries/<str:query_id>/feedback",
        views_queries.QueryFeedback.as_view(),
        name="api-query-feedback",
    ),
]
