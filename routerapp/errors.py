"""Domain errors raised by services and selectors, each with the HTTP status and OpenAI error
type the API answers with, so every surface reports the same failure the same way."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A request that cannot be served as asked; nothing has been written."""

    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"
    #: Seconds after which the same request may succeed (sent as Retry-After), if known.
    retry_after_s: int | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class InvalidInput(ServiceError):
    status = 400
    code = "invalid_value"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class PermissionDenied(ServiceError):
    status = 403
    error_type = "permission_error"
    code = "forbidden"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class Unprocessable(ServiceError):
    """Well-formed but cannot be satisfied (e.g. no configuration meets the constraints)."""

    status = 422
    code = "unprocessable"


class BudgetExceeded(ServiceError):
    status = 402
    error_type = "insufficient_quota"
    code = "budget_exceeded"


class RateLimited(ServiceError):
    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self, message: str, *, retry_after_s: int, param: str | None = None, state: Any = None
    ):
        super().__init__(message, param=param, retry_after_s=retry_after_s)
        #: The key's windows (services.ratelimits.RateLimitState), for the x-ratelimit headers.
        self.state = state


class ServiceUnavailable(ServiceError):
    status = 503
    error_type = "service_unavailable"
    code = "service_unavailable"
