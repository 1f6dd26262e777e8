"""The team's own keys, budgets and usage. Every read and write is scoped to the caller's team:
another team's key or budget answers 404, exactly like one that does not exist."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routerapp.api.auth import require_scope
from routerapp.api.schema import ApiAutoSchema
from routerapp.api.serializers import (
    ApiKeyCreatedOut,
    ApiKeyCreateInput,
    ApiKeyOut,
    ApiKeyUpdateInput,
    BudgetCreateInput,
    BudgetOut,
    BudgetUpdateInput,
    UsageOut,
    UsageQueryInput,
)
from routerapp.errors import Conflict, InvalidInput
from routerapp.models import ApiKey
from routerapp.selectors.apikeys import api_key_get_for_team, api_keys_for_team
from routerapp.selectors.budgets import budget_get_for_team, budget_status, budgets_for_team
from routerapp.selectors.usage import usage_for_team
from routerapp.services.apikeys import api_key_create, api_key_revoke, api_key_update_allowlist
from routerapp.services.budgets import budget_policy_create, budget_policy_update


def _key_out(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.pk,
        "name": key.name,
        "prefix": key.prefix,
        "scopes": list(key.scopes or []),
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "last_used_at": key.last_used_at,
        "rate_limit_rpm": key.rate_limit_rpm,
        "rate_limit_tpm": key.rate_limit_tpm,
        "allowed_models": list(key.allowed_models or []),
    }


class ApiKeyListCreate(APIView):
    schema = ApiAutoSchema()

    @extend_schema(
        responses={200: ApiKeyOut(many=True)}, operation_id="keys_list", tags=["tenancy"]
    )
    def get(self, request: Request) -> Response:
        require_scope(request.user, "admin")
        keys = api_keys_for_team(team=request.user.team)
        return Response(ApiKeyOut([_key_out(k) for k in keys], many=True).data)

    @extend_schema(
        request=ApiKeyCreateInput,
        responses={201: ApiKeyCreatedOut},
        operation_id="keys_create",
        tags=["tenancy"],
        description="Create a key for the caller's team. The full key is in the response once.",
    )
    def post(self, request: Request) -> Response:
        require_scope(request.user, "admin")
        form = ApiKeyCreateInput(data=request.data)
        form.is_valid(raise_exception=True)
        key, raw = api_key_create(
            team=request.user.team, actor_api_key=request.user.key, **form.validated_data
        )
        return Response(ApiKeyCreatedOut({**_key_out(key), "key": raw}).data, status=201)


class ApiKeyDetail(APIView):
    schema = ApiAutoSchema()

    @extend_schema(responses={200: ApiKeyOut}, operation_id="keys_read", tags=["tenancy"])
    def get(self, request: Request, key_id: str) -> Response:
        require_scope(request.user, "admin")
        key = api_key_get_for_team(team=request.user.team, key_id=key_id)
        return Response(ApiKeyOut(_key_out(key)).data)

    @extend_schema(
        request=ApiKeyUpdateInput,
        responses={200: ApiKeyOut},
        operation_id="keys_update",
        tags=["tenancy"],
        description="Replace the key's model allowlist (the team's allowlist always applies).",
    )
    def patch(self, request: Request, key_id: str) -> Response:
        require_scope(request.user, "admin")
        form = ApiKeyUpdateInput(data=request.data)
        form.is_valid(raise_exception=True)
        key = api_key_get_for_team(team=request.user.team, key_id=key_id)
        key = api_key_update_allowlist(
            key=key,
            allowed_models=form.validated_data["allowed_models"],
            actor_api_key=request.user.key,
        )
        return Response(ApiKeyOut(_key_out(key)).data)


class ApiKeyRevoke(APIView):
    schema = ApiAutoSchema()

    @extend_schema(
        request=None, responses={200: ApiKeyOut}, operation_id="keys_revoke", tags=["tenancy"]
    )
    def post(self, request: Request, key_id: str) -> Response:
        require_scope(request.user, "admin")
        key = api_key_get_for_team(team=request.user.team, key_id=key_id)
        if key.pk == request.user.key.pk:
            raise Conflict(
                "a key cannot revoke itself; revoke it with another admin key or in the admin",
                param="id",
            )
        key = api_key_revoke(key=key, actor_api_key=request.user.key)
        return Response(ApiKeyOut(_key_out(key)).data)


class BudgetListCreate(APIView):
    schema = ApiAutoSchema()

    @extend_schema(
        responses={200: BudgetOut(many=True)}, operation_id="budgets_list", tags=["tenancy"]
    )
    def get(self, request: Request) -> Response:
        require_scope(request.user, "usage")
        rows = [budget_status(p) for p in budgets_for_team(team=request.user.team)]
        return Response(BudgetOut(rows, many=True).data)

    @extend_schema(
        request=BudgetCreateInput,
        responses={201: BudgetOut},
        operation_id="budgets_create",
        tags=["tenancy"],
    )
    def post(self, request: Request) -> Response:
        require_scope(request.user, "admin")
        form = BudgetCreateInput(data=request.data)
        form.is_valid(raise_exception=True)
        data = dict(form.validated_data)
        key_ref = data.pop("api_key", None)
        key = api_key_get_for_team(team=request.user.team, key_id=key_ref) if key_ref else None
        policy = budget_policy_create(
            team=request.user.team, api_key=key, actor_api_key=request.user.key, **data
        )
        return Response(BudgetOut(budget_status(policy)).data, status=201)


class BudgetDetail(APIView):
    schema = ApiAutoSchema()

    @extend_schema(responses={200: BudgetOut}, operation_id="budgets_read", tags=["tenancy"])
    def get(self, request: Request, budget_id: str) -> Response:
        require_scope(request.user, "usage")
        policy = budget_get_for_team(team=request.user.team, policy_id=budget_id)
        return Response(BudgetOut(budget_status(policy)).data)

    @extend_schema(
        request=BudgetUpdateInput,
        responses={200: BudgetOut},
        operation_id="budgets_update",
        tags=["tenancy"],
        description="Change a budget; the audit log records the old and new values.",
    )
    def patch(self, request: Request, budget_id: str) -> Response:
        require_scope(request.user, "admin")
        form = BudgetUpdateInput(data=request.data)
        form.is_valid(raise_exception=True)
        policy = budget_get_for_team(team=request.user.team, policy_id=budget_id)
        policy = budget_policy_update(
            policy=policy, actor_api_key=request.user.key, **form.validated_data
        )
        return Response(BudgetOut(budget_status(policy)).data)


class UsageCSVRenderer(BaseRenderer):
    """``?format=csv``: the usage as CSV, one row per group (or one of totals), for
    spreadsheets and chargeback."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"
    COLUMNS = [
        "queries",
        "done",
        "failed",
        "cancelled",
        "running",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cost_usd",
        "reserved_usd",
        "graded",
        "correct",
        "accuracy",
        "cost_of_pass_usd",
    ]

    def render(
        self, data: Any, accepted_media_type: Any = None, renderer_context: Any = None
    ) -> bytes:
        import csv
        import io

        if not isinstance(data, dict) or "totals" not in data:  # an error body
            return JSONRenderer().render(data)
        out = io.StringIO()
        writer = csv.writer(out)
        group = data.get("group_by") or "total"
        writer.writerow(["team", "start", "end", group, *self.COLUMNS])
        rows = (data.get("groups") or []) if data.get("group_by") else [data["totals"]]
        for row in rows:
            key = row.get("key", "") if data.get("group_by") else "total"
            writer.writerow(
                [data["team"], data["start"] or "", data["end"], key]
                + ["" if row.get(c) is None else row.get(c) for c in self.COLUMNS]
            )
        return out.getvalue().encode()


class Usage(APIView):
    schema = ApiAutoSchema()
    renderer_classes = [JSONRenderer, UsageCSVRenderer]

    @extend_schema(
        parameters=[
            OpenApiParameter("period", str, enum=["day", "week", "month", "all"]),
            OpenApiParameter(
                "group_by",
                str,
                enum=["model", "strategy", "configuration", "key", "task", "user", "tag"],
            ),
            OpenApiParameter("user", str, description="Only this end user's queries"),
            OpenApiParameter("tag", str, description="Only queries with this tag"),
            OpenApiParameter(
                "format", str, enum=["json", "csv"], description="csv: one row per group"
            ),
            OpenApiParameter("start", OpenApiTypes.DATETIME, description="Overrides the start"),
            OpenApiParameter("end", OpenApiTypes.DATETIME, description="Overrides the end"),
        ],
        responses={200: UsageOut},
        operation_id="usage_read",
        tags=["tenancy"],
    )
    def get(self, request: Request) -> Response:
        require_scope(request.user, "usage")
        for name in ("period", "group_by", "start", "end", "tag"):
            if name in request.query_params and not request.query_params[name].strip():
                raise InvalidInput(f"{name} must not be empty", param=name)
        form = UsageQueryInput(data=request.query_params)
        form.is_valid(raise_exception=True)
        body = usage_for_team(team=request.user.team, **form.validated_data)
        return Response(UsageOut(body).data)
