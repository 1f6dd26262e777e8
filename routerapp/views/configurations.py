"""The configurations page: every (endpoint, strategy) pair the router may choose, and a form
that creates one with the strategy's parameters validated (staff only: configurations are
shared by every team)."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from routerapp.errors import ServiceError
from routerapp.models import Configuration, ModelEndpoint
from routerapp.views.common import add_service_error, team_view


def strategy_choices() -> list[tuple[str, str]]:
    from workers.strategies import STRATEGIES

    return [(slug, slug) for slug in sorted(STRATEGIES)]


def default_params() -> dict[str, Any]:
    """Each strategy's default params (what an empty params object means), for the form."""
    from workers.strategies import STRATEGIES

    out: dict[str, Any] = {}
    for slug, impl in sorted(STRATEGIES.items()):
        try:
            out[slug] = impl.validate_params({}).model_dump()
        except Exception:  # a strategy with required params (a cascade's stages) has none
            out[slug] = None
    return out


class ConfigurationForm(forms.Form):
    name = forms.SlugField(max_length=100, help_text="Name of the strategy configuration")
    endpoint = forms.ModelChoiceField(queryset=ModelEndpoint.objects.filter(enabled=True))
    strategy = forms.ChoiceField(choices=strategy_choices)
    params = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8, "class": "mono"}),
        required=False,
        help_text="A JSON object; empty: the strategy's defaults",
    )
    description = forms.CharField(max_length=300, required=False)

    def clean_params(self) -> dict[str, Any]:
        raw = (self.cleaned_data.get("params") or "").strip()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"not valid JSON: {exc.msg} (line {exc.lineno})") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("params must be a JSON object")
        return value


@team_view
def configurations(request: HttpRequest) -> HttpResponse:
    from routerapp.services.configurations import configuration_create

    can_create = bool(getattr(request.user, "is_staff", False))
    form = ConfigurationForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if not can_create:
            form.add_error(None, "Only staff can create configurations (they serve every team).")
            status = 403
        elif form.is_valid():
            data = form.cleaned_data
            try:
                config = configuration_create(
                    endpoint=data["endpoint"],
                    strategy=data["strategy"],
                    name=data["name"],
                    params=data["params"],
                    description=data["description"],
                    actor=request.user,
                )
            except ServiceError as exc:
                add_service_error(form, exc)
                status = 400
            else:
                return redirect(f"{request.path}?created={config.slug}")
        else:
            status = 400
    rows = Configuration.objects.select_related("endpoint", "strategy").order_by("slug")
    return render(
        request,
        "ui/configurations.html",
        {
            "nav": "configurations",
            "form": form,
            "rows": rows,
            "can_create": can_create,
            "created": request.GET.get("created", ""),
            "defaults_json": json.dumps(default_params(), indent=1),
        },
        status=status,
    )
