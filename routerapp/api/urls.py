from django.urls import path

from routerapp.api import views_queries, views_tenancy

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
    path("usage", views_tenancy.Usage.as_view(), name="api-usage"),
    path("keys", views_tenancy.ApiKeyListCreate.as_view(), name="api-keys"),
    path("keys/<str:key_id>", views_tenancy.ApiKeyDetail.as_view(), name="api-key"),
    path("keys/<str:key_id>/revoke", views_tenancy.ApiKeyRevoke.as_view(), name="api-key-revoke"),
    path("budgets", views_tenancy.BudgetListCreate.as_view(), name="api-budgets"),
    path("budgets/<str:budget_id>", views_tenancy.BudgetDetail.as_view(), name="api-budget"),
]
