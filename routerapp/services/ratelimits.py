"""Per-key rate limits: requests per minute and tokens per minute, held in Redis.

A sliding window over two fixed one-minute buckets: the estimate is this minute's count plus
last minute's count weighted by the part of last minute still inside the window. It is smooth at
the minute boundary (no double burst) and costs one round trip per check.

Requests are counted when admitted (a rejected request does not count). Tokens are counted when a
query finishes (its real prompt + completion tokens); a request is admitted while the key's
window has tokens left and its own prompt fits in the limit.

With REDIS_URL the counters live in Redis (shared by every web process and worker). Without it
(embedded default) they live in the Django cache, whose increments are atomic enough for one
host. When the store cannot be reached the limit is not enforced (logged): availability of the
API matters more than a per-minute cap, and budgets, not rate limits, protect the money.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from django.core.cache import cache

from routerapp.errors import RateLimited
from routerapp.services.streaming import redis_client

log = logging.getLogger(__name__)

WINDOW_S = 60
BUCKET_TTL_S = 3 * WINDOW_S


def _bucket_keys(key_id: int, what: str, now: float) -> tuple[str, str, float]:
    minute = int(now // WINDOW_S)
    fraction = (now % WINDOW_S) / WINDOW_S
    prefix = f"costpass:rl:{key_id}:{what}"
    return f"{prefix}:{minute}", f"{prefix}:{minute - 1}", fraction


def _add(key_id: int, what: str, amount: int, now: float) -> tuple[int, int, float]:
    """Add ``amount`` to this minute's bucket; return (this minute, last minute, fraction)."""
    current, previous, fraction = _bucket_keys(key_id, what, now)
    client = redis_client()
    if client is not None:
        pipe = client.pipeline(transaction=False)
        pipe.incrby(current, amount)
        pipe.expire(current, BUCKET_TTL_S)
        pipe.get(previous)
        count, _, prev = pipe.execute()
        return int(count), int(prev or 0), fraction
    cache.add(current, 0, timeout=BUCKET_TTL_S)
    count = cache.incr(current, amount) if amount else int(cache.get(current) or 0)
    return int(count), int(cache.get(previous) or 0), fraction


def _estimate(count: int, prev: int, fraction: float) -> float:
    return count + prev * (1.0 - fraction)


def _retry_after(limit: int, count: int, prev: int, fraction: float, need: int) -> int:
    """Seconds until the window holds ``need`` more (at least 1)."""
    if count + need > limit:
        # This minute alone is over: wait for it to become "last minute" and fade out.
        return max(1, math.ceil((1.0 - fraction) * WINDOW_S))
    if prev <= 0:
        return 1
    # prev * (1 - f') + count + need <= limit  =>  f' >= 1 - (limit - count - need) / prev
    target = 1.0 - (limit - count - need) / prev
    return max(1, math.ceil((target - fraction) * WINDOW_S))


def _duration(seconds: float) -> str:
    """OpenAI's duration format of the reset headers: 20ms, 1.5s, 6m0s."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    # Whole milliseconds first, so the seconds part is never rounded up to "60s" (1m60s) and
    # 60.4 s does not read as a flat minute (1m0s).
    minutes, ms = divmod(round(seconds * 1000), 60_000)
    return f"{minutes}m{ms / 1000:g}s"


def _full_reset_s(count: int, prev: int, fraction: float) -> float:
    """Seconds until the window holds nothing: last minute's bucket fades out by the end of
    this minute, this minute's bucket a minute later."""
    if count > 0:
        return (1.0 - fraction) * WINDOW_S + WINDOW_S
    if prev > 0:
        return (1.0 - fraction) * WINDOW_S
    return 0.0


@dataclass
class RateLimitState:
    """A key's per-minute windows as of one admitted (or refused) request: what the
    ``x-ratelimit-*`` headers report (OpenAI's names and formats). A dimension without a limit
    is None and reported by no header."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float = 0.0
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float = 0.0

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.limit_requests is not None:
            out["x-ratelimit-limit-requests"] = str(self.limit_requests)
            out["x-ratelimit-remaining-requests"] = str(max(0, self.remaining_requests or 0))
            out["x-ratelimit-reset-requests"] = _duration(self.reset_requests_s)
        if self.limit_tokens is not None:
            out["x-ratelimit-limit-tokens"] = str(self.limit_tokens)
            out["x-ratelimit-remaining-tokens"] = str(max(0, self.remaining_tokens or 0))
            out["x-ratelimit-reset-tokens"] = _duration(self.reset_tokens_s)
        return out


def prompt_tokens_estimate(text: str) -> int:
    """About four characters a token: what the tokens-per-minute limit admits a request by
    (its real tokens are charged when it finishes)."""
    return math.ceil(len(text) / 4) + 8


def rate_limit_admit(
    *, key: Any, prompt_tokens: int = 0, now: float | None = None
) -> RateLimitState | None:
    """Admit one request of ``key`` or raise RateLimited (HTTP 429 with Retry-After).

    Counts the request when admitted. ``prompt_tokens`` (an upper bound) is checked against the
    tokens-per-minute limit; tokens are charged when the query finishes. Return the key's
    windows after this request (None: the key has no limit, or the store is unreachable); a
    RateLimited carries them as ``state``.
    """
    rpm, tpm = key.rate_limit_rpm, key.rate_limit_tpm
    if not rpm and not tpm:
        return None
    now = time.time() if now is None else now
    state = RateLimitState()
    try:
        if tpm:
            count, prev, fraction = _add(key.pk, "tok", 0, now)
            used = _estimate(count, prev, fraction)
            state.limit_tokens = tpm
            state.remaining_tokens = int(tpm - used - prompt_tokens)
            state.reset_tokens_s = _full_reset_s(count, prev, fraction)
            if prompt_tokens > tpm:
                raise RateLimited(
                    f"this request needs about {prompt_tokens} tokens; the key's limit is {tpm} "
                    "tokens per minute",
                    retry_after_s=WINDOW_S,
                    param="messages",
                    state=state,
                )
            if used + prompt_tokens > tpm:
                state.remaining_tokens = max(0, int(tpm - used))
                raise RateLimited(
                    f"rate limit reached: {int(used)} of {tpm} tokens per minute used by this key",
                    retry_after_s=_retry_after(tpm, count, prev, fraction, max(1, prompt_tokens)),
                    state=state,
                )
        if rpm:
            count, prev, fraction = _add(key.pk, "req", 1, now)
            estimate = _estimate(count, prev, fraction)
            state.limit_requests = rpm
            state.remaining_requests = int(rpm - math.ceil(estimate))
            state.reset_requests_s = _full_reset_s(count, prev, fraction)
            if estimate > rpm:
                _add(key.pk, "req", -1, now)  # a rejected request does not count
                state.remaining_requests = max(0, int(rpm - math.ceil(estimate - 1)))
                raise RateLimited(
                    f"rate limit reached: {rpm} requests per minute for this key",
                    retry_after_s=_retry_after(rpm, count - 1, prev, fraction, 1),
                    state=state,
                )
    except RateLimited:
        raise
    except Exception:
        log.warning("rate limit store unreachable; admitting the request", exc_info=True)
        return None
    return state


def rate_limit_charge_tokens(
    *, key_id: int | None, tokens: int, now: float | None = None, pipe: Any = None
) -> None:
    """Charge a finished query's tokens to its key's tokens-per-minute window (best effort).

    With ``pipe`` (a Redis pipeline) the commands are added to it for the caller to execute.
    """
    if key_id is None or tokens <= 0:
        return
    if pipe is not None:
        current, _, _ = _bucket_keys(key_id, "tok", time.time() if now is None else now)
        pipe.incrby(current, int(tokens))
        pipe.expire(current, BUCKET_TTL_S)
        return
    try:
        _add(key_id, "tok", int(tokens), time.time() if now is None else now)
    except Exception:
        log.warning("rate limit store unreachable; tokens of key %s not charged", key_id)
