"""Every API error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from routerapp.errors import RateLimited, ServiceError

log = logging.getLogger(__name__)

_DRF_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    406: ("invalid_request_error", "not_acceptable"),
    413: ("invalid_request_error", "payload_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def error_body(message: str, error_type: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _flatten(detail: Any, prefix: str = "") -> tuple[str, str | None]:
    """Return a readable message and the first offending field of a DRF validation detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = key if key != "non_field_errors" else None
            message, param = _flatten(value, f"{prefix}{key}." if name else prefix)
            full = f"{prefix}{key}" if name else param
            return (f"{full}: {message}" if name else message), full
    if isinstance(detail, list) and detail:
        return _flatten(detail[0], prefix)
    return str(detail), None


def openai_exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF exception handler: map domain and framework errors to OpenAI's error JSON."""
    if isinstance(exc, ServiceError):
        response = Response(
            error_body(exc.message, exc.error_type, exc.code, exc.param), status=exc.status
        )
        if isinstance(exc, RateLimited):
            response["Retry-After"] = str(exc.retry_after_s)
        return response
    if isinstance(exc, DatabaseError):
        log.exception("database error")
        return Response(
            error_body(
                "the database is unavailable; nothing was written, retry later",
                "service_unavailable",
                "database_unavailable",
            ),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "not found")
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        message, param = _flatten(exc.detail)
        response.data = error_body(message, "invalid_request_error", "invalid_value", param)
        return response
    if isinstance(exc, exceptions.ParseError):
        response.data = error_body(
            f"malformed JSON body: {exc.detail}", "invalid_request_error", "invalid_json"
        )
        return response
    error_type, code = _DRF_TYPES.get(response.status_code, ("api_error", "error"))
    detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
    response.data = error_body(str(detail), error_type, code)
    return response


def json_error(request: HttpRequest, status_code: int, message: str, code: str) -> JsonResponse:
    error_type = _DRF_TYPES.get(status_code, ("api_error", code))[0]
    return JsonResponse(error_body(message, error_type, code), status=status_code)


def not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return json_error(request, 404, f"no route {request.path}", "not_found")


def server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        error_body("internal error; nothing was written", "api_error", "internal_error"),
        status=500,
    )
