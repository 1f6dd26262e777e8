"""Budget alerts: when a budget's spend crosses one of its thresholds (e.g. 50 / 80 / 100 % of
its limit) in a period, one BudgetAlert is raised (a unique row per policy, period and
threshold, so it is never sent twice), then delivered to the policy's webhook (JSON, signed with
HMAC-SHA256) and email addresses (Django's mail backend).

Raising happens where the money is settled (a query finishing), in the same transaction;
delivery runs in the Celery task budget_alerts_deliver, enqueued once the settlement commits and
run by beat every minute for anything a failure left undelivered.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from routerapp.models import BudgetAlert, BudgetPolicy, BudgetUsage

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
SIGNATURE_HEADER = "x-costpass-signature"


def policy_thresholds(policy: BudgetPolicy) -> list[int]:
    """Return the policy's alert thresholds in percent (its own, else the installation's)."""
    values = policy.alert_thresholds or settings.BUDGET_ALERT_THRESHOLDS
    if not isinstance(values, list):
        return []
    return sorted(
        {int(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)}
        & set(range(1, 1001))
    )


def budget_alerts_raise(
    *, usage_ids: list[int], windows: list[BudgetUsage] | None = None
) -> list[BudgetAlert]:
    """Raise the alerts of the thresholds these budget windows have crossed and not yet raised
    this period; return the new ones. Run inside the transaction that settles the spend.
    ``windows``: the windows as the settlement left them, each with its policy (what
    budgets.budget_settle returns on Postgres); by default they are read here."""
    if not usage_ids:
        return []
    raised: list[BudgetAlert] = []
    if windows is None:
        windows = list(
            BudgetUsage.objects.filter(pk__in=usage_ids, policy__enabled=True).select_related(
                "policy"
            )
        )
    for usage in windows:
        policy = usage.policy
        if not policy.enabled or policy.limit_usd <= 0:
            continue
        percent = usage.spent_usd * 100 / policy.limit_usd
        crossed = [t for t in policy_thresholds(policy) if percent >= t]
        if not crossed:
            continue
        existing = set(
            BudgetAlert.objects.filter(
                policy=policy,
                period_start=usage.period_start,
                end_user=usage.end_user,
                threshold__in=crossed,
            ).values_list("threshold", flat=True)
        )
        for threshold in crossed:
            if threshold in existing:
                continue
            with transaction.atomic():  # a concurrent finisher may raise it first: keep theirs
                alert, created = BudgetAlert.objects.get_or_create(
                    policy=policy,
                    period_start=usage.period_start,
                    end_user=usage.end_user,
                    threshold=threshold,
                    defaults={"spent_usd": usage.spent_usd, "limit_usd": policy.limit_usd},
                )
            if created:
                raised.append(alert)
    if raised:
        transaction.on_commit(_enqueue_delivery, robust=True)
    return raised


def _enqueue_delivery() -> None:
    from workers.celery import app

    app.send_task("costpass.budget_alerts_deliver", queue="default")


def alert_payload(alert: BudgetAlert) -> dict[str, Any]:
    policy = alert.policy
    return {
        "type": "budget.threshold_crossed",
        "alert_id": alert.pk,
        "team": policy.team.name,
        "budget": policy.name,
        "budget_id": policy.pk,
        "api_key": policy.api_key.prefix if policy.api_key else None,
        # The end user the policy covers, or (a per-end-user policy) whose window crossed.
        "end_user": alert.end_user or policy.end_user or None,
        "per_end_user": policy.per_end_user,
        "period": policy.period,
        "period_start": alert.period_start.isoformat(),
        "threshold_percent": alert.threshold,
        "spent_usd": str(alert.spent_usd),
        "limit_usd": str(alert.limit_usd),
        "mode": policy.mode,
        "raised_at": alert.created_at.isoformat(),
    }


def webhook_secret() -> bytes:
    """The HMAC key: COSTPASS_ALERT_WEBHOOK_SECRET, else one derived from the SECRET_KEY."""
    if settings.ALERT_WEBHOOK_SECRET:
        return settings.ALERT_WEBHOOK_SECRET.encode()
    return hmac.new(settings.SECRET_KEY.encode(), b"costpass-webhooks", hashlib.sha256).digest()


def sign(body: bytes, timestamp: str) -> str:
    """Return the signature header value of a webhook body sent at ``timestamp``."""
    digest = hmac.new(webhook_secret(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},sha256={digest.hexdigest()}"


def budget_alerts_deliver(*, limit: int = 200) -> int:
    """Deliver the alerts not yet delivered (webhook and email); return how many were. An
    alert whose webhook failed is tried again on the next run, up to MAX_ATTEMPTS."""
    pending = list(
        BudgetAlert.objects.filter(delivered_at__isnull=True, attempts__lt=MAX_ATTEMPTS)
        .select_related("policy__team", "policy__api_key")
        .order_by("created_at", "threshold")[:limit]
    )
    delivered = 0
    for alert in pending:
        # Lowest threshold first (alerts raised by one settlement share created_at).
        # Claim it: two deliverers never send the same alert at the same time.
        claimed = BudgetAlert.objects.filter(
            pk=alert.pk, delivered_at__isnull=True, attempts=alert.attempts
        ).update(attempts=alert.attempts + 1)
        if not claimed:
            continue
        ok = _deliver(alert)
        delivered += ok
    return delivered


def _deliver(alert: BudgetAlert) -> bool:
    import httpx
    from django.core.mail import send_mail

    policy = alert.policy
    payload = alert_payload(alert)
    webhook_status, email_status, ok = alert.webhook_status, alert.email_status, True
    if policy.alert_webhook_url and not webhook_status.startswith("sent"):
        body = json.dumps(payload, separators=(",", ":")).encode()
        timestamp = str(int(timezone.now().timestamp()))
        try:
            response = httpx.post(
                policy.alert_webhook_url,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    SIGNATURE_HEADER: sign(body, timestamp),
                    "User-Agent": "costpass-alerts",
                },
                timeout=settings.ALERT_WEBHOOK_TIMEOUT_S,
            )
            response.raise_for_status()
            webhook_status = f"sent ({response.status_code})"
        except httpx.HTTPError as exc:
            webhook_status = f"failed: {exc}"[:300]
            ok = False
    addresses = [a.strip() for a in policy.alert_emails.split(",") if a.strip()]
    if addresses and not email_status.startswith("sent"):
        spent = Decimal(payload["spent_usd"]).normalize()
        subject = (
            f"[costpass] budget '{policy.name}' of team {policy.team.name}"
            f"{f' (end user {alert.end_user})' if alert.end_user else ''} reached "
            f"{alert.threshold}% (${spent:f} of ${policy.limit_usd.normalize():f})"
        )
        try:
            send_mail(
                subject,
                json.dumps(payload, indent=2),
                settings.DEFAULT_FROM_EMAIL,
                addresses,
            )
            email_status = f"sent to {len(addresses)}"
        except Exception as exc:  # any mail backend error: retried on the next run
            email_status = f"failed: {exc}"[:300]
            ok = False
    BudgetAlert.objects.filter(pk=alert.pk).update(
        webhook_status=webhook_status,
        email_status=email_status,
        delivered_at=timezone.now() if ok else None,
    )
    if not ok:
        log.warning(
            "budget alert %s not delivered: %s / %s", alert.pk, webhook_status, email_status
        )
    return ok
