"""Upstream health shared by every process: the targets that serve an endpoint (its deployments,
or the endpoint itself), their circuit breakers, and how busy each one is.

A target's key is ``ep<endpoint id>`` or ``ep<endpoint id>.d<deployment id>``. Breaker state
(transitions in workers.engines.resilience) lives in Redis when there is one (a hash per target
changed under WATCH, and a set of the targets whose state is not clean) and otherwise in the
CircuitBreaker table (rows changed under SELECT ... FOR UPDATE). A process reads the non-clean
states at most every HEALTH_CACHE_S (one round trip, usually answering "nothing to report"), and
writes only on a failure, on the success that closes a breaker, or to claim a probe, so a
healthy gateway pays one read per HEALTH_CACHE_S for all of this.

Balancing over an endpoint's deployments (what LiteLLM's router calls routing strategies):
``weighted`` picks at random in proportion to the deployments' weights; ``least_busy`` picks
the deployment with the fewest requests in flight (counted in Redis across processes, or in
this process without Redis), ties broken at random.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from routerapp.models import CircuitBreaker, Deployment, ModelEndpoint
from routerapp.services.streaming import redis_client
from workers.engines.resilience import BreakerPolicy, BreakerState

log = logging.getLogger(__name__)

_SET = "costpass:cb:targets"
_INFLIGHT_TTL_S = 3600


def breaker_policy() -> BreakerPolicy:
    return BreakerPolicy(
        failure_threshold=settings.BREAKER_FAILURES,
        cooldown_s=settings.BREAKER_COOLDOWN_S,
        max_cooldown_s=max(settings.BREAKER_MAX_COOLDOWN_S, settings.BREAKER_COOLDOWN_S),
        probe_timeout_s=max(30.0, settings.BREAKER_COOLDOWN_S),
    )


@dataclass(frozen=True)
class Target:
    """One upstream that can serve an endpoint's requests."""

    key: str
    endpoint_id: int
    label: str
    engine: str
    engine_params: dict[str, Any]
    weight: int = 1


def _hkey(key: str) -> str:
    return f"costpass:cb:{key}"


# -- targets (deployments) ----------------------------------------------------------------------


class _Cache:
    """A value re-read at most every HEALTH_CACHE_S in this process."""

    def __init__(self, load: Callable[[], Any]):
        self.load = load
        self.value: Any = None
        self.at = -1e18
        self.lock = threading.Lock()

    def get(self) -> Any:
        now = time.monotonic()
        if now - self.at >= settings.HEALTH_CACHE_S or self.value is None:
            value = self.load()
            with self.lock:
                self.value, self.at = value, now
        return self.value

    def clear(self) -> None:
        with self.lock:
            self.value = None


def _load_deployments() -> dict[int, list[tuple[int, str, dict[str, Any], int]]]:
    out: dict[int, list[tuple[int, str, dict[str, Any], int]]] = {}
    rows = Deployment.objects.filter(enabled=True).values_list(
        "endpoint_id", "pk", "name", "engine_params", "weight"
    )
    for endpoint_id, pk, name, params, weight in rows:
        out.setdefault(endpoint_id, []).append((pk, name, params or {}, weight))
    return out


_deployments = _Cache(_load_deployments)


def endpoint_targets(endpoint: ModelEndpoint) -> list[Target]:
    """Return the targets of an endpoint: its enabled deployments, or the endpoint itself."""
    deployments = _deployments.get().get(endpoint.pk)
    if not deployments:
        return [
            Target(
                key=f"ep{endpoint.pk}",
                endpoint_id=endpoint.pk,
                label=endpoint.name,
                engine=endpoint.engine,
                engine_params=dict(endpoint.engine_params or {}),
            )
        ]
    return [
        Target(
            key=f"ep{endpoint.pk}.d{pk}",
            endpoint_id=endpoint.pk,
            label=f"{endpoint.name}/{name}",
            engine=endpoint.engine,
            engine_params={**(endpoint.engine_params or {}), **params},
            weight=max(0, int(weight)),
        )
        for pk, name, params, weight in deployments
    ]


# -- breaker store ------------------------------------------------------------------------------


def _decode(raw: dict[Any, Any]) -> BreakerState:
    if not raw:
        return BreakerState()
    get = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    return BreakerState(
        state=get.get("state", "closed"),  # type: ignore[arg-type]
        failures=int(get.get("failures", 0)),
        trips=int(get.get("trips", 0)),
        open_until=float(get.get("open_until", 0.0)),
        probe_until=float(get.get("probe_until", 0.0)),
        last_error=get.get("last_error", ""),
    )


def _encode(s: BreakerState) -> dict[str, Any]:
    return {
        "state": s.state,
        "failures": s.failures,
        "trips": s.trips,
        "open_until": repr(s.open_until),
        "probe_until": repr(s.probe_until),
        "last_error": s.last_error,
    }


def _load_snapshot() -> dict[str, BreakerState]:
    client = redis_client()
    if client is not None:
        try:
            keys = sorted(k.decode() if isinstance(k, bytes) else k for k in client.smembers(_SET))
            if not keys:
                return {}
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(_hkey(key))
            return {k: _decode(raw) for k, raw in zip(keys, pipe.execute(), strict=True)}
        except Exception:  # health is advisory: an unreachable store means "all closed"
            log.warning("breaker store unreachable; every target counts as healthy", exc_info=True)
            return {}
    rows = CircuitBreaker.objects.exclude(state="closed", failures=0)
    return {
        r.target: BreakerState(
            state=r.state,  # type: ignore[arg-type]
            failures=r.failures,
            trips=r.trips,
            open_until=r.open_until,
            probe_until=r.probe_until,
            last_error=r.last_error,
        )
        for r in rows
    }


_snapshot = _Cache(_load_snapshot)


def breaker_snapshot() -> dict[str, BreakerState]:
    """Return the targets whose breaker is not clean (absent ones are closed). Read only: the
    cache is replaced, never changed in place, so callers may keep it."""
    snapshot: dict[str, BreakerState] = _snapshot.get()
    return snapshot


def health_cache_clear() -> None:
    """Forget this process's view of deployments and breakers (tests, admin changes)."""
    _deployments.clear()
    _snapshot.clear()


def _update(
    key: str, change: Callable[[BreakerState], BreakerState | None]
) -> tuple[BreakerState, BreakerState | None]:
    """Apply ``change`` to a target's state atomically; return (old, new or None if unchanged)."""
    client = redis_client()
    if client is not None:
        out: list[tuple[BreakerState, BreakerState | None]] = []

        def tx(pipe: Any) -> None:
            old = _decode(pipe.hgetall(_hkey(key)))
            new = change(old)
            out.clear()
            out.append((old, new))
            if new is None:
                return
            pipe.multi()
            if new.is_clean:
                pipe.delete(_hkey(key))
                pipe.srem(_SET, key)
            else:
                pipe.hset(_hkey(key), mapping=_encode(new))
                pipe.sadd(_SET, key)

        client.transaction(tx, _hkey(key))
        old, new = out[0]
    else:
        with transaction.atomic():
            CircuitBreaker.objects.get_or_create(target=key)
            row = CircuitBreaker.objects.select_for_update().get(target=key)
            old = BreakerState(
                state=row.state,  # type: ignore[arg-type]
                failures=row.failures,
                trips=row.trips,
                open_until=row.open_until,
                probe_until=row.probe_until,
                last_error=row.last_error,
            )
            new = change(old)
            if new is not None:
                for name, value in dataclasses.asdict(new).items():
                    if name != "extra":
                        setattr(row, name, value)
                row.save()
    if new is not None:
        # This process sees its own change at once; others within HEALTH_CACHE_S.
        with _snapshot.lock:
            if _snapshot.value is not None:
                value = dict(_snapshot.value)
                if new.is_clean:
                    value.pop(key, None)
                else:
                    value[key] = new
                _snapshot.value = value
        if old.state != new.state:
            log.warning("circuit breaker of %s: %s -> %s", key, old.state, new.state)
    return old, new


def breaker_claim(target: Target, now: float | None = None) -> bool:
    """Return whether a request may be sent to ``target`` now: its breaker is closed, or it may
    be probed and this caller won the probe (half-open)."""
    policy = breaker_policy()
    now = time.time() if now is None else now
    state = breaker_snapshot().get(target.key)
    if state is None or policy.availability(state, now) == "closed":
        return True
    if policy.availability(state, now) == "open":
        return False

    def claim(s: BreakerState) -> BreakerState | None:
        return policy.claim_probe(s, now) if policy.availability(s, now) == "probe" else None

    try:
        _, new = _update(target.key, claim)
    except Exception:
        log.warning("breaker store unreachable; sending to %s", target.key, exc_info=True)
        return True
    return new is not None


def breaker_record(*, target: Target, ok: bool, error: str = "", now: float | None = None) -> None:
    """Feed one request's outcome to its target's breaker (best effort: never raises)."""
    policy = breaker_policy()
    now = time.time() if now is None else now
    if ok and target.key not in breaker_snapshot():
        return  # closed with no failure to forget: nothing to write
    try:
        if ok:
            _update(target.key, lambda s: None if s.is_clean else policy.on_success(s, now))
        else:
            _update(target.key, lambda s: policy.on_failure(s, now, error))
    except Exception:
        log.warning("breaker store unreachable; outcome of %s not recorded", target.key)


def target_available(target: Target, snapshot: dict[str, BreakerState], now: float) -> bool:
    state = snapshot.get(target.key)
    return state is None or breaker_policy().availability(state, now) != "open"


def endpoint_available(endpoint: ModelEndpoint, now: float | None = None) -> bool:
    """Return whether any target of the endpoint may be sent to (closed or probe-able)."""
    snapshot = breaker_snapshot()
    if not snapshot:
        return True
    now = time.time() if now is None else now
    return any(target_available(t, snapshot, now) for t in endpoint_targets(endpoint))


def endpoint_retry_in(endpoint: ModelEndpoint, now: float | None = None) -> float:
    """Seconds until some target of the endpoint may be probed."""
    snapshot = breaker_snapshot()
    now = time.time() if now is None else now
    policy = breaker_policy()
    waits = [
        policy.retry_in(snapshot[t.key], now) if t.key in snapshot else 0.0
        for t in endpoint_targets(endpoint)
    ]
    return min(waits) if waits else 0.0


def endpoints_health() -> list[dict[str, Any]]:
    """Return every target of every enabled endpoint with its breaker's state (the UI)."""
    snapshot = _load_snapshot()
    now = time.time()
    return [
        row
        for endpoint in ModelEndpoint.objects.filter(enabled=True).order_by("name")
        for row in endpoint_health(endpoint, now, snapshot=snapshot)
    ]


def endpoint_health(
    endpoint: ModelEndpoint,
    now: float | None = None,
    *,
    snapshot: dict[str, BreakerState] | None = None,
) -> list[dict[str, Any]]:
    """Return each target of an endpoint with its breaker's state, for the UI and the admin."""
    if snapshot is None:
        snapshot = _load_snapshot()  # fresh: what an operator looks at must not lag
    now = time.time() if now is None else now
    policy = breaker_policy()
    out = []
    for t in endpoint_targets(endpoint):
        s = snapshot.get(t.key, BreakerState())
        availability = policy.availability(s, now)
        out.append(
            {
                "target": t.key,
                "label": t.label,
                "weight": t.weight,
                # half_open: a probe is out, or the cool-down is over and the next call probes.
                "state": "half_open"
                if s.state == "half_open" or availability == "probe"
                else s.state,
                "failures": s.failures,
                "retry_in_s": round(policy.retry_in(s, now), 1),
                "last_error": s.last_error,
                "in_flight": _inflight_count(t.key),
            }
        )
    return out


# -- balancing ----------------------------------------------------------------------------------

_local_inflight: dict[str, int] = {}
_local_lock = threading.Lock()


def _inflight_count(key: str) -> int:
    client = redis_client()
    if client is not None:
        try:
            return max(0, int(client.get(f"costpass:inflight:{key}") or 0))
        except Exception:
            return 0
    return _local_inflight.get(key, 0)


def _inflight_counts(keys: list[str]) -> list[int]:
    client = redis_client()
    if client is not None:
        try:
            values = client.mget([f"costpass:inflight:{k}" for k in keys])
            return [max(0, int(v or 0)) for v in values]
        except Exception:
            return [0] * len(keys)
    with _local_lock:
        return [_local_inflight.get(k, 0) for k in keys]


@contextmanager
def target_busy(target: Target, counted: bool) -> Iterator[None]:
    """Count a request in flight on ``target`` while the block runs (least-busy balancing)."""
    if not counted:
        yield
        return
    client = redis_client()
    name = f"costpass:inflight:{target.key}"
    try:
        if client is not None:
            pipe = client.pipeline(transaction=False)
            pipe.incr(name)
            pipe.expire(name, _INFLIGHT_TTL_S)
            pipe.execute()
        else:
            with _local_lock:
                _local_inflight[target.key] = _local_inflight.get(target.key, 0) + 1
    except Exception:
        log.warning("in-flight counter of %s unreachable", target.key)
    try:
        yield
    finally:
        try:
            if client is not None:
                client.decr(name)
            else:
                with _local_lock:
                    _local_inflight[target.key] = max(0, _local_inflight.get(target.key, 1) - 1)
        except Exception:
            log.warning("in-flight counter of %s unreachable", target.key)


def target_pick(
    endpoint: ModelEndpoint, *, exclude: set[str] | frozenset[str] = frozenset()
) -> Target | None:
    """Choose the target of an endpoint that serves the next request: among those not excluded
    and not open, by the endpoint's balancing; claim a probe when the chosen one is half-open.
    Return None when none may be sent to."""
    now = time.time()
    snapshot = breaker_snapshot()
    targets = [
        t
        for t in endpoint_targets(endpoint)
        if t.key not in exclude and target_available(t, snapshot, now)
    ]
    while targets:
        if len(targets) == 1:
            chosen = targets[0]
        elif endpoint.balancing == "least_busy":
            counts = _inflight_counts([t.key for t in targets])
            low = min(counts)
            chosen = random.choice([t for t, c in zip(targets, counts, strict=True) if c == low])
        else:
            weights = [t.weight for t in targets]
            if sum(weights) <= 0:
                weights = [1] * len(targets)
            chosen = random.choices(targets, weights=weights)[0]
        if breaker_claim(chosen, now):
            return chosen
        targets.remove(chosen)
    return None
