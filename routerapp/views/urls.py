"""Routes of the web UI (included at the site root by routerapp.urls)."""

from django.urls import path

from routerapp.views import auth, benchmarks, configurations, dashboards, home, playground, routers

urlpatterns = [
    path("", home.home, name="home"),
    path("login/", auth.LoginView.as_view(), name="login"),
    path("logout/", auth.LogoutView.as_view(), name="logout"),
    path("team/", auth.team_switch, name="ui-team"),
    path("playground/", playground.playground, name="ui-playground"),
    path("queries/", playground.query_log, name="ui-queries"),
    path("queries/<str:query_id>/", playground.query_detail, name="ui-query"),
    path("queries/<str:query_id>/live", playground.query_live, name="ui-query-live"),
    path("queries/<str:query_id>/cancel", playground.query_cancel_view, name="ui-query-cancel"),
    path(
        "queries/<str:query_id>/feedback", playground.query_feedback_view, name="ui-query-feedback"
    ),
    path("dashboards/", dashboards.dashboards, name="ui-dashboards"),
    path("dashboards/panel/<slug:slug>", dashboards.dashboard_panel, name="ui-dashboard-panel"),
    path("benchmarks/", benchmarks.benchmarks, name="ui-benchmarks"),
    path("benchmarks/<int:run_id>/", benchmarks.benchmark_detail, name="ui-benchmark"),
    path("benchmarks/<int:run_id>/live", benchmarks.benchmark_live, name="ui-benchmark-live"),
    path("benchmarks/<int:run_id>/cancel", benchmarks.benchmark_cancel, name="ui-benchmark-cancel"),
    path("configurations/", configurations.configurations, name="ui-configurations"),
    path("routers/", routers.routers, name="ui-routers"),
    path("routers/live", routers.routers_live, name="ui-routers-live"),
    path("routers/train", routers.router_train, name="ui-router-train"),
    path("routers/seed", routers.router_seed, name="ui-router-seed"),
    path("routers/<int:version_id>/", routers.router_detail, name="ui-router"),
    path("routers/<int:version_id>/activate", routers.router_activate, name="ui-router-activate"),
    path("routers/<int:version_id>/shadow", routers.router_shadow, name="ui-router-shadow"),
]
