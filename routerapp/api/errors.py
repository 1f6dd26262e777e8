"""Every API error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, DataError, IntegrityError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from routerapp.errors import Conflict, ServiceError

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


def _first_error(detail: Any, path: str = "") -> tuple[str, str]:
    """Return the first leaf message of a DRF validation detail and its field path
    (`messages[0].role`; list items are keyed by index)."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key == "non_field_errors":
                return _first_error(value, path)
            here = (
                f"{path}[{key}]"
                if isinstance(key, int)
                else (f"{path}.{key}" if path else str(key))
            )
            return _first_error(value, here)
    if isinstance(detail, list) and detail:
        return _first_error(detail[0], path)
    return str(detail), path


def _flatten(detail: Any, prefix: str = "") -> tuple[str, str | None]:
    """Return a readable message and the offending field of a DRF validation detail."""
    message, path = _first_error(detail)
    return (f"{path}: {message}" if path else message), (path or None)


def openai_exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF exception handler: map domain and framework errors to OpenAI's error JSON."""
    if isinstance(exc, ServiceError):
        response = Response(
            error_body(exc.message, exc.error_type, exc.code, exc.param), status=exc.status
        )
        if exc.retry_after_s is not None:
            response["Retry-After"] = str(exc.retry_after_s)
        if isinstance(exc, Conflict):
            # OpenAI's clients retry 409 by default; a conflict here never clears by retrying.
            response["x-should-retry"] = "false"
        return response
    if isinstance(exc, DataError | IntegrityError):
        # A value the database refuses (out of range, a clash with a unique row): the
        # request's fault, and nothing was written (its transaction rolled back).
        log.warning("database refused a value: %s", exc)
        conflict = isinstance(exc, IntegrityError)
        return Response(
            error_body(
                "the request conflicts with existing data"
                if conflict
                else "a value is out of the range the database can store",
                "invalid_request_error",
                "conflict" if conflict else "invalid_value",
            ),
            status=409 if conflict else 400,
        )
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
    if isinstance(exc, RequestDataTooBig):
        return Response(
            error_body(
                f"request body too large; the limit is {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes",
                "invalid_request_error",
                "payload_too_large",
            ),
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, RecursionError | UnicodeError):
        # Input the parser let through that breaks a later step (a structure too deep to
        # walk, text that cannot be encoded): the request's fault, whatever step noticed.
        log.warning("refused input: %s: %s", type(exc).__name__, exc)
        return Response(
            error_body(
                "the request is nested too deeply"
                if isinstance(exc, RecursionError)
                else "the request contains text that is not valid Unicode (e.g. a lone "
                "UTF-16 surrogate)",
                "invalid_request_error",
                "invalid_value",
            ),
            status=status.HTTP_400_BAD_REQUEST,
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


API_PREFIXES = ("/v1/", "/api/")


def is_api_path(request: HttpRequest) -> bool:
    """Return whether a request is for the API (JSON errors) rather than a page (HTML errors)."""
    return request.path.startswith(API_PREFIXES) or request.path == "/v1"


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404: OpenAI-shaped JSON under /v1 and /api, Django's page elsewhere."""
    if is_api_path(request):
        return json_error(request, 404, f"no route {request.method} {request.path}", "not_found")
    from django.views.defaults import page_not_found

    return page_not_found(request, exception or Http404())


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: OpenAI-shaped JSON under /v1 and /api, Django's page elsewhere."""
    if is_api_path(request):
        return JsonResponse(
            error_body("internal error; nothing was written", "api_error", "internal_error"),
            status=500,
        )
    from django.views.defaults import server_error as page_server_error

    return page_server_error(request)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler400 (e.g. a body over the size limit read outside DRF, a bad Host header)."""
    if is_api_path(request):
        if isinstance(exception, RequestDataTooBig):
            return json_error(request, 413, "request body too large", "payload_too_large")
        return json_error(request, 400, "bad request", "invalid_request")
    from django.views.defaults import bad_request as page_bad_request

    return page_bad_request(request, exception or Exception())
