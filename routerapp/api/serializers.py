"""Input validation and output shapes of the jobs API."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from routerapp.models import ApiKey, BudgetPolicy, Query, Sample


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers, booleans and objects instead of coercing them."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        # The length limit holds for the string sent, before surrounding blanks are trimmed.
        if self.max_length is not None and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A JSON boolean only (not 0, 1, "true" or "yes")."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class StrictFloatField(serializers.FloatField):
    """A JSON number only (not a boolean or a numeric string)."""

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer only (not a boolean, a float or a numeric string)."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"type": {"type": "string"}, "text": {"type": "string"}},
                    "required": ["type"],
                },
            },
        ]
    }
)
class MessageContentField(serializers.Field):
    """A message's content: a string, or OpenAI's list of content parts (text parts kept)."""

    default_error_messages = {"invalid": "content must be a string or a list of content parts"}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str):
            return data
        if isinstance(data, list) and all(isinstance(p, dict) for p in data):
            return data
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


class MessageInput(serializers.Serializer):
    """One chat message (OpenAI's shape; other fields are ignored)."""

    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant", "tool"])
    content = MessageContentField()


class ConstraintFields(serializers.Serializer):
    """Request fields that narrow or bound the router's choice (shared by every endpoint)."""

    model = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=200,
        help_text="'auto', a configuration id or a model name",
    )
    strategy = StrictCharField(required=False, allow_blank=True, max_length=100)
    max_cost_usd = serializers.DecimalField(
        required=False, max_digits=24, decimal_places=12, min_value=Decimal(0)
    )
    min_accuracy = StrictFloatField(required=False, min_value=0.0, max_value=1.0)
    max_latency_s = StrictFloatField(required=False, min_value=0.0)
    allowed_models = serializers.ListField(
        child=StrictCharField(max_length=200), required=False, max_length=100
    )
    task = StrictCharField(required=False, allow_blank=True, max_length=64)


class RejectUnknownFields(serializers.Serializer):
    """A body key this serializer does not know is a 400 naming it, never silently dropped."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {
                        unknown[0]: [
                            f"unknown field '{unknown[0]}': this endpoint does not accept it"
                        ]
                    }
                )
        return super().to_internal_value(data)


class QueryCreateInput(RejectUnknownFields, ConstraintFields):
    prompt = StrictCharField(required=False, allow_blank=False, trim_whitespace=False)
    user = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=256,
        help_text="Your end user (as OpenAI's `user`): usage and budgets per end user",
    )
    messages = serializers.ListField(
        child=MessageInput(), required=False, allow_empty=False, max_length=10_000
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("prompt") and not attrs.get("messages"):
            raise serializers.ValidationError({"prompt": ["give a non-empty prompt or messages"]})
        if attrs.get("prompt") is not None and not attrs["prompt"].strip():
            raise serializers.ValidationError({"prompt": ["prompt must not be blank"]})
        return attrs


class FeedbackInput(RejectUnknownFields):
    correct = StrictBooleanField(required=False, allow_null=True, default=None)
    score = StrictFloatField(
        required=False, allow_null=True, default=None, min_value=0.0, max_value=1.0
    )


def priced_by(billed_prices: dict[str, Any] | None) -> str | None:
    """How a query was billed: ``tokens``, or ``gpu_hour`` (engine time at a GPU-hour price,
    for an endpoint without token prices); None before it was billed."""
    if not billed_prices:
        return None
    token_priced = any(
        Decimal(str(billed_prices.get(k) or 0)) != 0
        for k in ("input_usd_per_mtok", "output_usd_per_mtok")
    )
    if not token_priced and billed_prices.get("gpu_usd_per_hour") is not None:
        return "gpu_hour"
    return "tokens"


class SampleOut(serializers.ModelSerializer):
    class Meta:
        model = Sample
        fields = [
            "index",
            "text",
            "extracted_answer",
            "score",
            "prompt_tokens",
            "completion_tokens",
            "cached_prompt_tokens",
            "reasoning_tokens",
            "finish_reason",
            "aborted",
            "chosen",
            "latency_ms",
            "engine_ms",
            "cost_usd",
        ]


class QueryOut(serializers.ModelSerializer):
    configuration = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    model = serializers.CharField(
        source="configuration.endpoint.name", read_only=True, default=None
    )
    strategy = serializers.CharField(
        source="configuration.strategy.strategy", read_only=True, default=None
    )
    progress = serializers.SerializerMethodField()
    ledger = serializers.SerializerMethodField()
    samples = serializers.SerializerMethodField()

    class Meta:
        model = Query
        fields = [
            "id",
            "status",
            "task",
            "end_user",
            "tags",
            "prompt",
            "messages",
            "configuration",
            "model",
            "strategy",
            "router_version",
            "predicted_p_correct",
            "predicted_cost_usd",
            "decision",
            "answer",
            "extracted_answer",
            "votes",
            "trace",
            "progress",
            "ledger",
            "cost_usd",
            "reserved_usd",
            "created_at",
            "started_at",
            "finished_at",
            "latency_ms",
            "error",
            "feedback_correct",
            "feedback_score",
            "graded_correct",
            "budget_flags",
            "samples",
        ]

    def get_progress(self, obj: Query) -> dict[str, int]:
        return {"samples_done": obj.samples_done, "samples_planned": obj.samples_planned}

    def get_ledger(self, obj: Query) -> dict[str, Any]:
        return {
            "prompt_tokens": obj.prompt_tokens,
            "completion_tokens": obj.completion_tokens,
            "total_tokens": obj.prompt_tokens + obj.completion_tokens,
            "cached_prompt_tokens": obj.cached_prompt_tokens,
            "reasoning_tokens": obj.reasoning_tokens,
            "engine_requests": obj.engine_requests,
            "scorer_calls": obj.scorer_calls,
            "scorer_prompt_tokens": obj.scorer_prompt_tokens,
            "scorer_completion_tokens": obj.scorer_completion_tokens,
            "engine_seconds": obj.engine_ms / 1000,
            "priced_by": priced_by(obj.billed_prices),
            "cost_usd": str(obj.cost_usd),
            "billed_prices": obj.billed_prices or None,
        }

    def get_samples(self, obj: Query) -> list[dict[str, Any]]:
        return SampleOut(obj.samples.order_by("index"), many=True).data


# --- keys, budgets, usage ----------------------------------------------------------------------


class ApiKeyOut(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="Visible start of the key")
    scopes = serializers.ListField(child=serializers.CharField(), help_text="Empty: every scope")
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    rate_limit_rpm = serializers.IntegerField(allow_null=True)
    rate_limit_tpm = serializers.IntegerField(allow_null=True)
    allowed_models = serializers.ListField(
        child=serializers.CharField(),
        help_text="Models / configuration ids / patterns it may call; empty: what its team may",
    )


class ApiKeyCreatedOut(ApiKeyOut):
    key = serializers.CharField(help_text="The full key: shown this once, never again")


class ApiKeyCreateInput(serializers.Serializer):
    name = StrictCharField(max_length=100)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=ApiKey.Scope.choices),
        required=False,
        default=list,
        max_length=len(ApiKey.Scope.choices),
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    rate_limit_rpm = StrictIntegerField(
        required=False, allow_null=True, default=None, min_value=1, max_value=10_000_000
    )
    rate_limit_tpm = StrictIntegerField(
        required=False, allow_null=True, default=None, min_value=1, max_value=2_000_000_000
    )
    allowed_models = serializers.ListField(
        child=StrictCharField(max_length=200),
        required=False,
        default=list,
        max_length=200,
        help_text="Model names, configuration ids or patterns (gpt-4o*); empty: no limit",
    )


class ApiKeyUpdateInput(serializers.Serializer):
    allowed_models = serializers.ListField(
        child=StrictCharField(max_length=200),
        max_length=200,
        help_text="Replaces the key's allowlist; empty: every model its team may call",
    )


class BudgetOut(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    alert_thresholds = serializers.ListField(child=serializers.IntegerField(), required=False)
    alert_webhook_url = serializers.CharField(allow_blank=True, required=False)
    alert_emails = serializers.CharField(allow_blank=True, required=False)
    alerts = serializers.ListField(
        child=serializers.DictField(), required=False, help_text="Raised this period"
    )
    end_user = serializers.CharField(allow_blank=True, required=False)
    per_end_user = serializers.BooleanField(
        required=False, help_text="Each end user of the team or key has this limit on their own"
    )
    end_users = serializers.ListField(
        child=serializers.DictField(),
        required=False,
        help_text="Per-end-user budget: each end user's window this period (end_user, spent_usd, "
        "reserved_usd, left_usd), closest to the limit first; spent/reserved/left above are "
        "the first's",
    )
    api_key = serializers.CharField(allow_null=True, help_text="Prefix of the key it covers")
    period = serializers.ChoiceField(choices=BudgetPolicy.Period.choices)
    mode = serializers.ChoiceField(choices=BudgetPolicy.Mode.choices)
    enabled = serializers.BooleanField()
    limit_usd = serializers.CharField()
    window_start = serializers.DateField()
    spent_usd = serializers.CharField()
    reserved_usd = serializers.CharField()
    left_usd = serializers.CharField()


_MONEY = {"max_digits": 24, "decimal_places": 12, "min_value": Decimal(0)}


class BudgetCreateInput(serializers.Serializer):
    name = StrictCharField(max_length=100)
    limit_usd = serializers.DecimalField(**_MONEY, max_value=Decimal("1e11"))
    period = serializers.ChoiceField(
        choices=BudgetPolicy.Period.choices, default=BudgetPolicy.Period.MONTH
    )
    mode = serializers.ChoiceField(
        choices=BudgetPolicy.Mode.choices, default=BudgetPolicy.Mode.HARD_REJECT
    )
    api_key = StrictCharField(
        required=False,
        allow_null=True,
        default=None,
        max_length=32,
        help_text="Id or prefix of one of the team's keys; empty: the whole team",
    )
    end_user = StrictCharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=256,
        help_text="Only this end user's queries (the OpenAI `user` they name); empty: all",
    )
    per_end_user = StrictBooleanField(
        required=False,
        default=False,
        help_text="Each end user (the OpenAI `user` a request names) of the team or key gets "
        "limit_usd per period on their own; not with end_user",
    )
    enabled = StrictBooleanField(required=False, default=True)
    alert_thresholds = serializers.ListField(
        child=StrictIntegerField(min_value=1, max_value=1000),
        required=False,
        max_length=20,
        help_text="Percents of the limit that raise an alert (default [50, 80, 100])",
    )
    alert_webhook_url = serializers.URLField(required=False, allow_blank=True, max_length=200)
    alert_emails = serializers.CharField(
        required=False, allow_blank=True, max_length=500, help_text="Comma-separated"
    )


class BudgetUpdateInput(serializers.Serializer):
    name = StrictCharField(max_length=100, required=False)
    alert_thresholds = serializers.ListField(
        child=StrictIntegerField(min_value=1, max_value=1000),
        required=False,
        max_length=20,
        help_text="Percents of the limit that raise an alert (default [50, 80, 100])",
    )
    alert_webhook_url = serializers.URLField(required=False, allow_blank=True, max_length=200)
    alert_emails = serializers.CharField(
        required=False, allow_blank=True, max_length=500, help_text="Comma-separated"
    )
    limit_usd = serializers.DecimalField(**_MONEY, max_value=Decimal("1e11"), required=False)
    period = serializers.ChoiceField(choices=BudgetPolicy.Period.choices, required=False)
    mode = serializers.ChoiceField(choices=BudgetPolicy.Mode.choices, required=False)
    enabled = StrictBooleanField(required=False)


class UsageQueryInput(serializers.Serializer):
    period = serializers.ChoiceField(
        choices=["day", "week", "month", "all"], default="month", help_text="UTC calendar window"
    )
    group_by = serializers.ChoiceField(
        choices=["model", "strategy", "configuration", "key", "task", "user", "tag"],
        required=False,
    )
    user = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=256,
        help_text="Only this end user's queries (empty: those that named none)",
    )
    tag = StrictCharField(required=False, max_length=64, help_text="Only queries with this tag")
    start = serializers.DateTimeField(required=False, help_text="Overrides the period's start")
    end = serializers.DateTimeField(required=False, help_text="Overrides the period's end")


class UsageFiguresOut(serializers.Serializer):
    queries = serializers.IntegerField()
    done = serializers.IntegerField()
    failed = serializers.IntegerField()
    cancelled = serializers.IntegerField()
    running = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost_usd = serializers.CharField()
    reserved_usd = serializers.CharField()
    graded = serializers.IntegerField()
    correct = serializers.IntegerField()
    accuracy = serializers.FloatField(allow_null=True)
    cost_of_pass_usd = serializers.CharField(allow_null=True)


class UsageGroupOut(UsageFiguresOut):
    key = serializers.CharField(allow_null=True, allow_blank=True)
    name = serializers.CharField(required=False)


class UsageOut(serializers.Serializer):
    object = serializers.CharField()
    team = serializers.CharField()
    period = serializers.CharField()
    start = serializers.DateTimeField(allow_null=True)
    end = serializers.DateTimeField()
    group_by = serializers.CharField(allow_null=True)
    filters = serializers.DictField(child=serializers.CharField(allow_null=True))
    totals = UsageFiguresOut()
    groups = UsageGroupOut(many=True)
