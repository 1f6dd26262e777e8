"""OpenAPI schema helpers: every operation documents the errors it can answer, in OpenAI's
error shape, so generated clients and fuzzers know them."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse

from routerapp.api.serializers_openai import ErrorOut

# Errors any authenticated operation can answer.
COMMON_ERRORS = {
    400: "Invalid request (malformed JSON, a bad or unknown value)",
    401: "Missing, invalid, expired or revoked API key",
    403: "The key lacks the scope this operation needs",
    404: "Unknown id, or one that belongs to another team",
    409: "Conflicts with the object's state (e.g. cancelling a finished query)",
    413: "Request body or prompt too large",
    415: "Unsupported media type (send application/json)",
    422: "Well-formed but cannot be satisfied",
    429: "Rate limit of the key (see Retry-After)",
    503: "Database or task queue unavailable; nothing was written",
}
# And those of operations that spend money.
SPENDING_ERRORS = {
    402: "A hard budget cannot cover the request (names the budget, its limit, what is left)",
}


class ApiAutoSchema(AutoSchema):
    """AutoSchema that adds the API's error responses to every operation (those an
    operation already documents keep their own description)."""

    spends = False

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        bodies = super()._get_response_bodies(direction=direction)
        extra = {**COMMON_ERRORS, **(SPENDING_ERRORS if self.spends else {})}
        for code, description in extra.items():
            if str(code) not in bodies:
                bodies[str(code)] = self._get_response_for_code(
                    OpenApiResponse(ErrorOut, description=description),
                    str(code),
                    direction=direction,
                )
        return dict(sorted(bodies.items()))


class SpendingApiAutoSchema(ApiAutoSchema):
    spends = True
