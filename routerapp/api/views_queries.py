"""The native jobs API: create a query (202), read it, cancel it, send feedback."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routerapp.api.auth import admit_request, require_scope
from routerapp.api.schema import ApiAutoSchema, SpendingApiAutoSchema
from routerapp.api.serializers import FeedbackInput, QueryCreateInput, QueryOut
from routerapp.models import Query
from routerapp.selectors.queries import query_get_for_team
from routerapp.services.queries import (
    TAGS_HEADER,
    query_cancel,
    query_create,
    query_feedback,
    query_tags_parse,
)
from routerapp.services.routing import RequestConstraints


def constraints_from(data: dict) -> RequestConstraints:
    """Turn validated request fields into router constraints ('auto' = the router chooses)."""
    model = (data.get("model") or "").strip()
    configuration = None
    model_name = None
    if model and model != "auto":
        from routerapp.models import Configuration

        if Configuration.objects.filter(slug=model).exists():
            configuration = model
        else:
            model_name = model
    return RequestConstraints(
        configuration=configuration,
        model=model_name,
        strategy=(data.get("strategy") or None),
        allowed_models=data.get("allowed_models"),
        max_cost_usd=data.get("max_cost_usd"),
        min_accuracy=data.get("min_accuracy"),
        max_latency_s=data.get("max_latency_s"),
    )


class QueryListCreate(APIView):
    schema = SpendingApiAutoSchema()

    @extend_schema(request=QueryCreateInput, responses={202: QueryOut}, operation_id="query_create")
    def post(self, request: Request) -> Response:
        require_scope(request.user, "query")
        form = QueryCreateInput(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        text = data.get("prompt") or " ".join(
            str(m.get("content") or "") for m in data.get("messages") or []
        )
        admit_request(request, text)
        query = query_create(
            team=request.user.team,
            api_key=request.user.key,
            prompt=data.get("prompt", ""),
            messages=data.get("messages"),
            task=data.get("task", ""),
            end_user=data.get("user", ""),
            tags=query_tags_parse(request.headers.get(TAGS_HEADER)),
            constraints=constraints_from(data),
            source=Query.Source.API,
        )
        return Response(
            QueryOut(query).data, status=202, headers={"Location": f"/api/v1/queries/{query.pk}"}
        )


class QueryDetail(APIView):
    schema = ApiAutoSchema()

    @extend_schema(responses={200: QueryOut}, operation_id="query_read")
    def get(self, request: Request, query_id: str) -> Response:
        query = query_get_for_team(team=request.user.team, query_id=query_id)
        return Response(QueryOut(query).data)


class QueryCancel(APIView):
    schema = ApiAutoSchema()

    @extend_schema(request=None, responses={202: QueryOut}, operation_id="query_cancel")
    def post(self, request: Request, query_id: str) -> Response:
        require_scope(request.user, "query")
        query = query_get_for_team(team=request.user.team, query_id=query_id)
        query = query_cancel(query=query)
        return Response(QueryOut(query).data, status=202)


class QueryFeedback(APIView):
    schema = ApiAutoSchema()

    @extend_schema(request=FeedbackInput, responses={200: QueryOut}, operation_id="query_feedback")
    def post(self, request: Request, query_id: str) -> Response:
        require_scope(request.user, "feedback")
        form = FeedbackInput(data=request.data)
        form.is_valid(raise_exception=True)
        query = query_get_for_team(team=request.user.team, query_id=query_id)
        query = query_feedback(query=query, **form.validated_data)
        return Response(QueryOut(query).data)
