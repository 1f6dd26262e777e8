"""Bearer API-key authentication for the REST API."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from routerapp.models import ApiKey
from routerapp.services.apikeys import api_key_authenticate


class ApiKeyPrincipal:
    """The caller of an API request: a team acting through one of its keys."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, key: ApiKey):
        self.key = key
        self.team = key.team

    def __str__(self) -> str:
        return f"api key {self.key.prefix}"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[ApiKeyPrincipal, ApiKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            raise exceptions.NotAuthenticated(
                "missing API key: send the header 'Authorization: Bearer <key>'"
            )
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != self.keyword.lower() or not raw.strip():
            raise exceptions.AuthenticationFailed(
                "malformed Authorization header: expected 'Bearer <key>'"
            )
        key = api_key_authenticate(raw.strip())
        if key is None:
            raise exceptions.AuthenticationFailed("invalid, expired or revoked API key")
        return ApiKeyPrincipal(key), key

    def authenticate_header(self, request: Request) -> str:
        # A WWW-Authenticate header makes DRF answer 401 rather than 403.
        return 'Bearer realm="costpass"'


def require_scope(principal: Any, scope: str) -> None:
    """Raise PermissionDenied unless the key holds `scope` (an empty scope list holds all)."""
    from routerapp.errors import PermissionDenied

    scopes = principal.key.scopes or []
    if scopes and scope not in scopes:
        raise PermissionDenied(f"this API key lacks the '{scope}' scope")


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Describes the bearer API key in the OpenAPI schema."""

    target_class = "routerapp.api.auth.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key of your team: 'Authorization: Bearer cp_...'",
        }


def admit_request(request: Request, prompt_text: str) -> None:
    """Count one request against its key's per-minute limits (raise RateLimited: 429), and
    leave the key's windows on the request for RateLimitHeadersMiddleware to report."""
    from routerapp.errors import RateLimited
    from routerapp.services.ratelimits import prompt_tokens_estimate, rate_limit_admit

    raw = request._request
    try:
        state = rate_limit_admit(
            key=request.user.key, prompt_tokens=prompt_tokens_estimate(prompt_text)
        )
    except RateLimited as exc:
        raw.costpass_ratelimit = exc.state
        raise
    raw.costpass_ratelimit = state


class RateLimitHeadersMiddleware:
    """Add OpenAI's ``x-ratelimit-*`` headers (limit, remaining, reset; requests and tokens)
    to every response of a request that was counted against a key's limits: answers, errors,
    429s and streams alike."""

    def __init__(self, get_response: Any):
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        response = self.get_response(request)
        state = getattr(request, "costpass_ratelimit", None)
        if state is not None:
            for name, value in state.headers().items():
                response[name] = value
        return response
