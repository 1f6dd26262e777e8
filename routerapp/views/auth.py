"""Log in and out with Django's auth (sessions); the templates are ours."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from routerapp.views.common import SESSION_TEAM, user_teams


class LoginView(auth_views.LoginView):
    template_name = "registration/login.html"
    redirect_authenticated_user = True


class LogoutView(auth_views.LogoutView):
    pass


@require_POST
def team_switch(request: HttpRequest) -> HttpResponse:
    """Choose which of the user's teams the pages show (ignored for teams they are not in)."""
    if not request.user.is_authenticated:
        return redirect("login")
    try:
        team_id = int(request.POST.get("team", ""))
    except ValueError:
        team_id = None
    if any(t.pk == team_id for t in user_teams(request.user)):
        request.session[SESSION_TEAM] = team_id
    nxt = request.POST.get("next") or "/"
    return redirect(nxt if nxt.startswith("/") and not nxt.startswith("//") else "/")
