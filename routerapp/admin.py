"""The admin: prices, strategies, configurations, teams, keys, budgets, router versions, queries.
Changes to prices, budgets, keys and configurations are written to the audit log."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import models, transaction
from django.http import HttpRequest

from routerapp import models as m
from routerapp.services.apikeys import api_key_create, api_key_revoke
from routerapp.services.audit import audit_diff, audit_record


class AuditedAdmin(admin.ModelAdmin):
    """Record who changed which audited field, from what to what."""

    audited_fields: list[str] = []
    # A URL typed without a scheme means https (Django 6's default; no deprecation warning).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        old = type(obj).objects.filter(pk=obj.pk).first() if change else None
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            audit_record(
                action="update" if change else "create",
                obj=obj,
                changes=audit_diff(old, obj, self.audited_fields),
                actor=request.user,
                team=getattr(obj, "team", None),
            )

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        with transaction.atomic():
            audit_record(
                action="delete",
                obj=obj,
                changes={},
                actor=request.user,
                team=getattr(obj, "team", None),
            )
            super().delete_model(request, obj)


class MembershipInline(admin.TabularInline):
    model = m.TeamMembership
    extra = 0
    autocomplete_fields = ["user"]


class AllowlistFormMixin:
    """Validates the `allowed_models` JSON of a team or a key."""

    def clean_allowed_models(self) -> list[str]:
        from routerapp.errors import InvalidInput
        from routerapp.selectors.access import allowlist_validate

        try:
            return allowlist_validate(self.cleaned_data.get("allowed_models"))  # type: ignore[attr-defined]
        except InvalidInput as exc:
            raise forms.ValidationError(exc.message) from exc


class TeamForm(AllowlistFormMixin, forms.ModelForm):
    class Meta:
        model = m.Team
        fields = ["name", "allowed_models"]


@admin.register(m.Team)
class TeamAdmin(AuditedAdmin):
    form = TeamForm
    list_display = ["name", "allowed_models", "created_at"]
    search_fields = ["name"]
    inlines = [MembershipInline]
    audited_fields = ["name", "allowed_models"]


class ModelEndpointForm(forms.ModelForm):
    class Meta:
        model = m.ModelEndpoint
        fields = [
            "name",
            "display_name",
            "engine",
            "engine_params",
            "input_usd_per_mtok",
            "output_usd_per_mtok",
            "cached_input_usd_per_mtok",
            "reasoning_usd_per_mtok",
            "gpu_usd_per_hour",
            "context_window",
            "max_output_tokens",
            "price_key",
            "price_source",
            "queue",
            "descriptors",
            "supports_json_mode",
            "supports_json_schema",
            "supports_tools",
            "supports_logprobs",
            "supports_images",
            "supports_audio",
            "serves_embeddings",
            "balancing",
            "enabled",
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        engine, params = data.get("engine"), data.get("engine_params")
        if engine and params is not None:
            from workers.engines import validate_engine_params

            try:
                data["engine_params"] = validate_engine_params(engine, params)
            except ValueError as exc:
                self.add_error("engine_params", str(exc))
        if engine:
            from workers.strategies.request_options import ENGINE_FEATURES

            # A flag the engine cannot act on would route requests it then cannot honour.
            features = ENGINE_FEATURES.get(engine, frozenset())
            for flag in ("json_mode", "json_schema", "tools", "images", "audio"):
                if data.get(f"supports_{flag}") and flag not in features:
                    self.add_error(
                        f"supports_{flag}", f"the {engine} engine cannot pass this through"
                    )
        return data


class DeploymentInline(admin.TabularInline):
    """More servers of the same model; their engine params override the endpoint's."""

    model = m.Deployment
    extra = 0
    fields = ["name", "engine_params", "weight", "enabled", "breaker"]
    readonly_fields = ["breaker"]

    @admin.display(description="circuit breaker")
    def breaker(self, obj: m.Deployment) -> str:
        if obj.pk is None:
            return "-"
        from routerapp.services.breakers import endpoint_health

        for row in endpoint_health(obj.endpoint):
            if row["target"] == f"ep{obj.endpoint_id}.d{obj.pk}":
                return _health_text(row)
        return "-"


def _health_text(row: dict[str, Any]) -> str:
    text = str(row["state"])
    if row["state"] != "closed":
        text += f" (retry in {row['retry_in_s']:g}s)"
    if row["failures"]:
        text += f", {row['failures']} failures: {row['last_error'][:80]}"
    return text


@admin.register(m.ModelEndpoint)
class ModelEndpointAdmin(AuditedAdmin):
    form = ModelEndpointForm
    inlines = [DeploymentInline]
    list_display = [
        "name",
        "engine",
        "input_usd_per_mtok",
        "output_usd_per_mtok",
        "gpu_usd_per_hour",
        "enabled",
        "health",
        "updated_at",
    ]

    @admin.display(description="circuit breakers")
    def health(self, obj: m.ModelEndpoint) -> str:
        from routerapp.services.breakers import endpoint_health

        return "; ".join(f"{r['label']}: {_health_text(r)}" for r in endpoint_health(obj))

    list_editable = ["input_usd_per_mtok", "output_usd_per_mtok", "enabled"]
    list_filter = ["engine", "enabled", "supports_tools", "supports_json_schema"]
    search_fields = ["name", "display_name"]
    audited_fields = [
        "engine",
        "engine_params",
        "input_usd_per_mtok",
        "output_usd_per_mtok",
        "cached_input_usd_per_mtok",
        "reasoning_usd_per_mtok",
        "gpu_usd_per_hour",
        "context_window",
        "max_output_tokens",
        "price_key",
        "queue",
        "supports_json_mode",
        "supports_json_schema",
        "supports_tools",
        "supports_logprobs",
        "supports_images",
        "supports_audio",
        "serves_embeddings",
        "balancing",
        "enabled",
    ]


@admin.register(m.CircuitBreaker)
class CircuitBreakerAdmin(admin.ModelAdmin):
    """Breakers kept in the database (no Redis); with Redis, see each endpoint's health."""

    list_display = ["target", "state", "failures", "trips", "last_error", "updated_at"]
    readonly_fields = [f.name for f in m.CircuitBreaker._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


class StrategyConfigForm(forms.ModelForm):
    class Meta:
        model = m.StrategyConfig
        fields = ["name", "strategy", "params", "description"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        slug, params = data.get("strategy"), data.get("params")
        if slug:
            from pydantic import ValidationError

            from workers.strategies import get_strategy

            try:
                strategy = get_strategy(slug)
            except KeyError as exc:
                self.add_error("strategy", str(exc.args[0] if exc.args else exc))
                return data
            try:
                validated = strategy.validate_params(params or {})
                data["params"] = validated.model_dump()
            except ValidationError as exc:
                self.add_error(
                    "params",
                    "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()),
                )
                return data
            from routerapp.services.pricing import stage_endpoints

            try:  # a cascade's stages name endpoints that must exist
                stage_endpoints(strategy, validated)
            except ValueError as exc:
                self.add_error("params", str(exc))
        return data


@admin.register(m.StrategyConfig)
class StrategyConfigAdmin(AuditedAdmin):
    form = StrategyConfigForm
    list_display = ["name", "strategy", "params", "updated_at"]
    list_filter = ["strategy"]
    search_fields = ["name", "strategy", "description"]
    audited_fields = ["strategy", "params"]


@admin.register(m.Configuration)
class ConfigurationAdmin(AuditedAdmin):
    list_display = ["slug", "endpoint", "strategy", "max_prompt_tokens", "enabled", "updated_at"]
    list_editable = ["enabled"]
    list_filter = ["enabled", "endpoint", "strategy__strategy"]
    search_fields = ["slug", "endpoint__name", "strategy__name"]
    autocomplete_fields = ["endpoint", "strategy"]
    audited_fields = ["endpoint", "strategy", "max_prompt_tokens", "enabled"]


class ApiKeyAddForm(AllowlistFormMixin, forms.ModelForm):
    class Meta:
        model = m.ApiKey
        fields = [
            "team",
            "name",
            "scopes",
            "expires_at",
            "rate_limit_rpm",
            "rate_limit_tpm",
            "allowed_models",
        ]


class ApiKeyForm(AllowlistFormMixin, forms.ModelForm):
    class Meta:
        model = m.ApiKey
        fields = [
            "team",
            "name",
            "scopes",
            "expires_at",
            "rate_limit_rpm",
            "rate_limit_tpm",
            "allowed_models",
        ]


@admin.register(m.ApiKey)
class ApiKeyAdmin(AuditedAdmin):
    form = ApiKeyForm
    list_display = [
        "name",
        "prefix",
        "team",
        "scopes",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    ]
    list_filter = ["team", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "team__name"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at", "created_by"]
    actions = ["revoke_keys"]
    audited_fields = [
        "name",
        "scopes",
        "expires_at",
        "rate_limit_rpm",
        "rate_limit_tpm",
        "allowed_models",
    ]

    def get_form(
        self, request: HttpRequest, obj: Any | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = ApiKeyAddForm
        return super().get_form(request, obj, change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.readonly_fields if obj is not None else []

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw = api_key_create(
            team=obj.team,
            name=obj.name,
            created_by=request.user,
            scopes=obj.scopes,
            expires_at=obj.expires_at,
            rate_limit_rpm=obj.rate_limit_rpm,
            rate_limit_tpm=obj.rate_limit_tpm,
            allowed_models=obj.allowed_models,
        )
        obj.pk = key.pk
        obj.prefix, obj.hashed_key, obj.created_at = key.prefix, key.hashed_key, key.created_at
        messages.warning(request, f"Copy this API key now, it will not be shown again: {raw}")

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request: HttpRequest, queryset: Any) -> None:
        for key in queryset:
            api_key_revoke(key=key, actor=request.user)
        messages.success(request, f"Revoked {queryset.count()} key(s).")


class BudgetUsageInline(admin.TabularInline):
    model = m.BudgetUsage
    extra = 0
    fields = readonly_fields = (
        "period_start",
        "end_user",
        "reserved_usd",
        "spent_usd",
        "updated_at",
    )
    can_delete = False
    ordering = ["-period_start", "-spent_usd"]


@admin.register(m.BudgetPolicy)
class BudgetPolicyAdmin(AuditedAdmin):
    list_display = [
        "name",
        "team",
        "api_key",
        "end_user",
        "per_end_user",
        "period",
        "limit_usd",
        "mode",
        "enabled",
    ]
    list_editable = ["limit_usd", "mode", "enabled"]
    list_filter = ["period", "mode", "enabled", "per_end_user", "team"]
    search_fields = ["name", "team__name", "api_key__prefix", "end_user", "usage__end_user"]
    inlines = [BudgetUsageInline]
    audited_fields = [
        "team",
        "api_key",
        "end_user",
        "per_end_user",
        "period",
        "limit_usd",
        "mode",
        "enabled",
    ]


@admin.register(m.BudgetAlert)
class BudgetAlertAdmin(admin.ModelAdmin):
    list_display = [
        "policy",
        "period_start",
        "end_user",
        "threshold",
        "spent_usd",
        "limit_usd",
        "created_at",
        "delivered_at",
        "webhook_status",
        "email_status",
    ]
    list_filter = ["threshold", "policy__team"]
    readonly_fields = [f.name for f in m.BudgetAlert._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(m.RouterVersion)
class RouterVersionAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "learner",
        "status",
        "team",
        "is_active",
        "is_shadow",
        "created_at",
        "trained_at",
    ]
    list_filter = ["status", "is_active", "is_shadow", "learner", "team"]
    search_fields = ["name"]
    # Which version serves changes only through the services (the floor check and the audit
    # log): the actions below, the Routers page, `router_train --activate`.
    readonly_fields = [
        "status",
        "is_active",
        "is_shadow",
        "trained_on",
        "evaluation",
        "significance",
        "progress",
        "error",
        "trained_at",
    ]
    actions = ["activate", "shadow_on", "shadow_off"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # versions are trained (Routers page, router_train), not typed in

    @admin.action(description="Activate (refused unless it passes the floor)")
    def activate(self, request: HttpRequest, queryset: Any) -> None:
        from routerapp.errors import ServiceError
        from routerapp.services.routers import router_version_activate

        if queryset.count() != 1:
            self.message_user(request, "Pick exactly one version to activate.", messages.ERROR)
            return
        version = queryset.get()
        try:
            router_version_activate(version=version, actor=request.user)
        except ServiceError as exc:
            self.message_user(request, exc.message, messages.ERROR)
        else:
            self.message_user(request, f"{version.name} is active.", messages.SUCCESS)

    def _shadow(self, request: HttpRequest, queryset: Any, shadow: bool) -> None:
        from routerapp.errors import ServiceError
        from routerapp.services.routers import router_version_set_shadow

        if shadow and queryset.count() != 1:
            self.message_user(request, "Only one version can run in shadow.", messages.ERROR)
            return
        for version in queryset:
            try:
                router_version_set_shadow(version=version, shadow=shadow, actor=request.user)
            except ServiceError as exc:
                self.message_user(request, exc.message, messages.ERROR)

    @admin.action(description="Run in shadow")
    def shadow_on(self, request: HttpRequest, queryset: Any) -> None:
        self._shadow(request, queryset, True)

    @admin.action(description="Stop shadow")
    def shadow_off(self, request: HttpRequest, queryset: Any) -> None:
        self._shadow(request, queryset, False)


class SampleInline(admin.TabularInline):
    model = m.Sample
    extra = 0
    can_delete = False
    _columns: list[Any] = [
        "index",
        "extracted_answer",
        "score",
        "prompt_tokens",
        "completion_tokens",
        "finish_reason",
        "aborted",
        "chosen",
        "cost_usd",
    ]
    fields = _columns
    readonly_fields = _columns


@admin.register(m.Query)
class QueryAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "team",
        "status",
        "configuration",
        "task",
        "cost_usd",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "graded_correct",
        "created_at",
    ]
    list_filter = ["status", "source", "team", "configuration", "graded_correct"]
    search_fields = ["id", "prompt", "task", "answer"]
    date_hierarchy = "created_at"
    list_select_related = ["team", "configuration"]
    inlines = [SampleInline]
    readonly_fields = [f.name for f in m.Query._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(m.AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "team",
        "actor",
        "actor_api_key",
        "action",
        "object_type",
        "object_repr",
        "changes",
    ]
    # API-driven changes (keys, budgets) carry the acting key instead of a user.
    list_filter = ["action", "object_type", "team", ("actor_api_key", admin.EmptyFieldListFilter)]
    search_fields = ["object_repr", "object_id", "actor__username"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
