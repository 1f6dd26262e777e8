"""Talking to upstreams that fail: the retry policy of one engine request and the transitions of
an upstream's circuit breaker. Django-free; the breaker's shared state is stored by
``routerapp.services.breakers`` (Redis, or the database without Redis).

Retries (tenacity): a request is retried only while nothing was generated for it, i.e. on a
connection error, or on an HTTP 429 / 5xx answered before the first token. The wait is
exponential with jitter, or what the server's ``Retry-After`` asks for when that is no longer
than ``retry_after_max_s`` (a longer wait gives up at once, so the router can fall back to
another configuration instead of holding the request). A read timeout is not retried: the
server may be generating (and billing) the first request still.

Circuit breaker (per upstream target): ``failure_threshold`` consecutive failures open it;
while open nobody sends to it; after a cool-down (doubling with each consecutive trip, up to
``max_cooldown_s``) one caller claims a probe (half-open); the probe's success closes it, its
failure opens it again. A probe that never reports back frees its claim after
``probe_timeout_s``.
"""

from __future__ import annotations

import contextvars
import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import httpx
import tenacity

T = TypeVar("T")

#: Where the engine requests made in this context note their retries (a list the caller sets,
#: e.g. the attempt being recorded on a query); None: not noted.
RETRY_LOG: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar(
    "costpass_retry_log", default=None
)

# Statuses that say "this endpoint cannot serve now" rather than "this request is wrong".
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})


class UpstreamError(RuntimeError):
    """An engine request failed at its upstream.

    ``transient``: the endpoint failed (connection, timeout, 429, 5xx), so another endpoint may
    well serve the same request and the failure counts against the endpoint's circuit breaker;
    False for an answer that says the request itself is wrong (other 4xx).
    ``partial``: what the failed request had generated and is billed for, as
    ``(prompt_tokens, completion_tokens, text)``; ``None`` when nothing was generated.
    ``retries``: the retries made before giving up.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        transient: bool = True,
        retry_after_s: float | None = None,
        partial: tuple[int, int, str] | None = None,
        retries: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient
        self.retry_after_s = retry_after_s
        self.partial = partial
        self.retries = retries or []


def retry_after_seconds(response: httpx.Response, now: float | None = None) -> float | None:
    """Return the wait a response's ``Retry-After`` (or ``retry-after-ms``) asks for, if any."""
    ms = response.headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_of_response(response: httpx.Response) -> UpstreamError:
    """Return the UpstreamError that an HTTP error answer (read already) stands for."""
    status = response.status_code
    try:
        detail = response.text[:300]
    except httpx.ResponseNotRead:
        detail = ""
    return UpstreamError(
        f"upstream answered HTTP {status}: {detail}".strip(),
        status=status,
        transient=status in RETRYABLE_STATUSES or status >= 500,
        retry_after_s=retry_after_seconds(response),
    )


def error_of_exception(exc: BaseException) -> UpstreamError:
    """Return the UpstreamError a transport exception stands for (every one is transient)."""
    if isinstance(exc, UpstreamError):
        return exc
    kind = type(exc).__name__
    return UpstreamError(f"{kind}: {exc}" if str(exc) else kind, transient=True)


@dataclass(frozen=True)
class RetryPolicy:
    """How one engine request is retried before its first token (see the module docstring)."""

    max_retries: int = 2
    initial_s: float = 0.25
    max_wait_s: float = 8.0
    jitter_s: float = 0.25
    retry_after_max_s: float = 10.0
    #: Give up once this much time has gone by since the first try.
    total_s: float = 30.0

    def retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, UpstreamError):
            if exc.partial is not None or not exc.transient:
                return False
            if exc.status is None:  # a transport failure before anything was generated
                return True
            return exc.retry_after_s is None or exc.retry_after_s <= self.retry_after_max_s
        return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, UpstreamError) and exc.retry_after_s is not None:
            return exc.retry_after_s
        backoff = tenacity.wait_exponential_jitter(
            multiplier=self.initial_s, max=self.max_wait_s, jitter=self.jitter_s
        )
        return float(backoff(state))

    def call(self, fn: Callable[[], T], *, log: list[dict[str, Any]] | None = None) -> T:
        """Return ``fn()``, retried per this policy; raise its last exception otherwise (an
        UpstreamError with ``retries`` set). Each retry is appended to ``log``."""
        retries: list[dict[str, Any]] = [] if log is None else log

        def note(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            retries.append(
                {
                    "error": str(exc)[:200],
                    "status": getattr(exc, "status", None),
                    "wait_s": round(float(wait), 3),
                }
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1)
            | tenacity.stop_after_delay(self.total_s),
            wait=self._wait,
            retry=tenacity.retry_if_exception(self.retryable),
            before_sleep=note,
            reraise=True,
        )
        try:
            return retrying(fn)
        except UpstreamError as exc:
            exc.retries = list(retries)
            raise
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise UpstreamError(
                f"{type(exc).__name__}: {exc}", transient=True, retries=list(retries)
            ) from exc


# -- circuit breaker ------------------------------------------------------------------------

Availability = Literal["closed", "open", "probe"]


@dataclass
class BreakerState:
    """The shared state of one target's breaker (times are Unix seconds)."""

    state: Literal["closed", "open", "half_open"] = "closed"
    failures: int = 0
    trips: int = 0
    open_until: float = 0.0
    probe_until: float = 0.0
    last_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_clean(self) -> bool:
        """True when there is nothing to remember (closed, no recent failure)."""
        return self.state == "closed" and self.failures == 0 and self.trips == 0


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 3
    cooldown_s: float = 30.0
    max_cooldown_s: float = 300.0
    probe_timeout_s: float = 60.0

    def availability(self, s: BreakerState, now: float) -> Availability:
        """``closed``: send; ``open``: do not; ``probe``: one caller may claim a probe."""
        if s.state == "closed":
            return "closed"
        if s.state == "open":
            return "open" if now < s.open_until else "probe"
        return "open" if now < s.probe_until else "probe"

    def retry_in(self, s: BreakerState, now: float) -> float:
        """Seconds until this target may be probed (0 when it may be now)."""
        if self.availability(s, now) != "open":
            return 0.0
        until = s.open_until if s.state == "open" else s.probe_until
        return max(0.0, until - now)

    def claim_probe(self, s: BreakerState, now: float) -> BreakerState:
        return replace(s, state="half_open", probe_until=now + self.probe_timeout_s)

    def on_success(self, s: BreakerState, now: float) -> BreakerState:
        if s.state == "open" and now < s.open_until:
            # A request sent before it opened came back fine: only a probe may close it.
            return s
        return BreakerState()

    def on_failure(self, s: BreakerState, now: float, error: str = "") -> BreakerState:
        failures = s.failures + 1
        if s.state == "open" and now < s.open_until:
            return replace(s, failures=failures, last_error=error[:300])
        if s.state == "half_open" or failures >= self.failure_threshold:
            cooldown = min(self.max_cooldown_s, self.cooldown_s * (2 ** min(s.trips, 16)))
            return BreakerState(
                state="open",
                failures=failures,
                trips=s.trips + 1,
                open_until=now + cooldown,
                probe_until=0.0,
                last_error=error[:300],
            )
        return replace(s, failures=failures, last_error=error[:300])
