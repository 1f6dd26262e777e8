"""Forms of the web UI. They check shape and range; the services check meaning and answer
with a ServiceError that the view shows on the form (views.common.add_service_error)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings

from routerapp.models import Configuration, ModelEndpoint
from routerapp.selectors.dashboards import DashboardFilters, Traffic

ANSWER_KINDS = [
    ("", "Guess from the prompt"),
    ("math", "Math (number or expression)"),
    ("mcq", "Multiple choice (letter)"),
    ("text", "Text (exact match)"),
]


def _choices(form: forms.Form, name: str, choices: list[tuple[str, str]]) -> None:
    field = form.fields[name]
    assert isinstance(field, forms.ChoiceField)
    field.choices = choices


def _configuration_choices(
    blank: str, permitted: frozenset[str] | None = None
) -> list[tuple[str, str]]:
    configs = Configuration.objects.filter(enabled=True, endpoint__enabled=True).order_by("slug")
    if permitted is not None:
        configs = configs.filter(slug__in=permitted)
    return [("", blank)] + [(c.slug, c.slug) for c in configs]


class PlaygroundForm(forms.Form):
    prompt = forms.CharField(
        widget=forms.Textarea(
            attrs={"rows": 5, "placeholder": "What is 17 * 23? Answer with a number."}
        ),
        max_length=settings.MAX_PROMPT_CHARS,
        help_text="Sent as the user message.",
    )
    task = forms.CharField(
        required=False,
        max_length=64,
        label="Task tag",
        help_text="Optional, e.g. 'arithmetic': the router learns per task.",
    )
    answer_kind = forms.ChoiceField(choices=ANSWER_KINDS, required=False, label="Answer kind")
    configuration = forms.ChoiceField(required=False, label="Configuration")
    model = forms.ChoiceField(required=False, label="Model")
    max_cost_usd = forms.DecimalField(
        required=False,
        min_value=Decimal(0),
        max_digits=24,
        decimal_places=12,
        label="Max cost (USD)",
        help_text="Worst-case cost allowed for this prompt.",
    )
    min_accuracy = forms.FloatField(
        required=False, min_value=0.0, max_value=1.0, label="Min predicted accuracy (0–1)"
    )
    max_latency_s = forms.FloatField(required=False, min_value=0.001, label="Max latency (s)")

    def __init__(self, *args: Any, team: Any = None, **kwargs: Any) -> None:
        from routerapp.selectors.access import permitted_configuration_slugs

        super().__init__(*args, **kwargs)
        # Only what the team's allowlist permits is offered.
        permitted = permitted_configuration_slugs(team=team, api_key=None)
        _choices(
            self, "configuration", _configuration_choices("Auto: the router decides", permitted)
        )
        endpoints = ModelEndpoint.objects.filter(enabled=True)
        if permitted is not None:
            endpoints = endpoints.filter(configurations__slug__in=permitted).distinct()
        _choices(
            self,
            "model",
            [("", "Any model")] + [(e.name, e.display_name or e.name) for e in endpoints],
        )


class FilterForm(forms.Form):
    """The dashboards' filters (GET). Invalid values are reported and fall back to defaults."""

    PERIODS = [
        ("7", "Last 7 days"),
        ("30", "Last 30 days"),
        ("90", "Last 90 days"),
        ("365", "Last 365 days"),
        ("custom", "Custom dates"),
    ]

    period = forms.ChoiceField(choices=PERIODS, required=False, initial="30")
    start = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), label="From"
    )
    end = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), label="To"
    )
    model = forms.ChoiceField(required=False)
    strategy = forms.ChoiceField(required=False)
    configuration = forms.ChoiceField(required=False)
    task = forms.ChoiceField(required=False)
    api_key = forms.ChoiceField(required=False, label="API key")
    traffic = forms.ChoiceField(choices=Traffic.CHOICES, required=False, initial=Traffic.ALL)

    MAX_DAYS = 731

    def __init__(
        self, *args: Any, options: dict[str, list[tuple[str, str]]] | None, **kwargs: Any
    ) -> None:
        """With `options`, dimension filters are menus of what exists; without (a panel
        request, which needs no menus), any value is taken as given: the selectors scope every
        read to the team, so an unknown value only matches nothing."""
        super().__init__(*args, **kwargs)
        if options is None:
            for name in ("model", "strategy", "configuration", "task"):
                self.fields[name] = forms.CharField(required=False, max_length=200)
            self.fields["api_key"] = forms.IntegerField(required=False, min_value=1)
            return
        blank = {
            "model": "All models",
            "strategy": "All strategies",
            "configuration": "All configurations",
            "task": "All tasks",
            "api_key": "All keys and the playground",
        }
        for name, label in blank.items():
            _choices(self, name, [("", label)] + options.get(name, []))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("period") == "custom":
            start, end = data.get("start"), data.get("end")
            if not start or not end:
                raise forms.ValidationError("Custom dates need both 'From' and 'To'.")
            if start > end:
                raise forms.ValidationError("'From' must not be after 'To'.")
            if (end - start).days >= self.MAX_DAYS:
                raise forms.ValidationError(f"Choose at most {self.MAX_DAYS} days.")
        return data

    def filters(self, *, today: dt.date | None = None) -> DashboardFilters:
        """Return the filters to apply (defaults for anything invalid or missing)."""
        data = self.cleaned_data if self.is_valid() else {}
        extra: dict[str, Any] = {
            "model": data.get("model") or "",
            "strategy": data.get("strategy") or "",
            "configuration": data.get("configuration") or "",
            "task": data.get("task") or "",
            "api_key": int(data["api_key"]) if data.get("api_key") else None,
            "traffic": data.get("traffic") or Traffic.ALL,
        }
        if data.get("period") == "custom":
            return DashboardFilters(start=data["start"], end=data["end"], **extra)
        days = int(data.get("period") or 30)
        return DashboardFilters.last_days(days, today=today, **extra)


class BenchmarkForm(forms.Form):
    SETS = [("generated", "Built-in generated problems"), ("upload", "Upload a CSV or JSONL file")]

    name = forms.CharField(max_length=100, initial="benchmark")
    labelled_set = forms.ChoiceField(
        choices=SETS, widget=forms.RadioSelect, initial="generated", label="Labelled set"
    )
    n = forms.IntegerField(
        min_value=1, max_value=200, initial=10, required=False, label="Number of problems"
    )
    seed = forms.IntegerField(min_value=0, max_value=2**31 - 1, initial=0, required=False)
    dataset = forms.ChoiceField(required=False, label="Labelled set")
    file = forms.FileField(
        required=False,
        label="Labelled file",
        help_text="CSV with a header row containing prompt and gold (optional answer_kind, task), "
        'or JSONL with one {"prompt": ..., "gold": ...} object per line.',
    )
    configurations = forms.MultipleChoiceField(
        widget=forms.CheckboxSelectMultiple, label="Configurations"
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from routerapp.services.benchmarks import shared_labelled_sets

        super().__init__(*args, **kwargs)
        _choices(self, "configurations", _configuration_choices("")[1:])
        shared = shared_labelled_sets()
        if shared:
            _choices(
                self, "labelled_set", [*self.SETS, ("shared", "Labelled set from the data folder")]
            )
            _choices(self, "dataset", [(name, f"{name} ({count} items)") for name, count in shared])
        else:
            del self.fields["dataset"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("labelled_set") == "upload" and not data.get("file"):
            self.add_error("file", "Choose a CSV or JSONL file to upload.")
        if data.get("labelled_set") in ("generated", "shared") and not data.get("n"):
            self.add_error("n", "How many problems? (1 to 200)")
        if data.get("labelled_set") == "shared" and not data.get("dataset"):
            self.add_error("dataset", "Pick a labelled set.")
        return data


class RouterTrainForm(forms.Form):
    source = forms.ChoiceField(label="Learn from", required=False)
    name = forms.CharField(
        max_length=100, required=False, help_text="Optional; a name is generated otherwise."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from routerapp.services.routers import shared_suites

        super().__init__(*args, **kwargs)
        _choices(
            self,
            "source",
            [("log", "The query log (graded queries)")]
            + [(f"suite:{name}", f"Suite {name} (evaluation only)") for name in shared_suites()],
        )


class RouterSeedForm(forms.Form):
    """Seed a router from public outcome data: the source, then one source model per enabled
    endpoint (preselected from the proposal: exact name, alias, or nearest by family and price;
    blank = leave that endpoint out)."""

    source = forms.ChoiceField(label="Public outcome data")
    name = forms.CharField(max_length=100, required=False, help_text="Optional.")
    activate = forms.BooleanField(
        required=False,
        initial=True,
        label="Serve with it once fitted, if it passes the floor against the best single "
        "configuration",
    )

    def __init__(self, *args: Any, proposals: list[Any] | None = None, models: list[Any] | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        from routerapp.services.coldstart import outcome_sources

        super().__init__(*args, **kwargs)
        _choices(self, "source", [(s, s) for s in outcome_sources()])
        self.proposals = {p.endpoint: p for p in proposals or []}
        model_choices = [("", "— leave this endpoint out —")] + [
            (m.name, f"{m.name} ({m.rows:,} rows"
             + (f", ${m.usd_per_mtok:g}/Mtok)" if m.usd_per_mtok else ")"))
            for m in models or []
        ]  # fmt: skip
        self.endpoint_fields: list[tuple[str, Any]] = []
        for ep in ModelEndpoint.objects.filter(enabled=True).order_by("name"):
            key = f"map__{ep.pk}"
            proposal = self.proposals.get(ep.name)
            self.fields[key] = forms.ChoiceField(
                label=ep.name, choices=model_choices, required=False,
                initial=proposal.model if proposal and proposal.model else "",
                widget=forms.Select(attrs={"aria-label": f"Source model for {ep.name}"}),
            )  # fmt: skip
            self.endpoint_fields.append((key, ep))

    def rows(self) -> list[dict[str, Any]]:
        """Return one row per endpoint for the template: field, endpoint, proposal."""
        return [
            {"field": self[key], "endpoint": ep, "proposal": self.proposals.get(ep.name)}
            for key, ep in self.endpoint_fields
        ]

    def mapping(self) -> dict[str, str]:
        """Return the confirmed endpoint name -> source model mapping (blanks left out)."""
        return {
            ep.name: self.cleaned_data[key]
            for key, ep in self.endpoint_fields
            if self.cleaned_data.get(key)
        }


__all__ = ["BenchmarkForm", "FilterForm", "PlaygroundForm", "RouterSeedForm", "RouterTrainForm"]
