"""Input validation and output shapes of the jobs API."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rest_framework import serializers

from routerapp.models import Query, Sample


class ConstraintFields(serializers.Serializer):
    """Request fields that narrow or bound the router's choice (shared by every endpoint)."""

    model = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=200,
        help_text="'auto', a configuration id or a model name",
    )
    strategy = serializers.CharField(required=False, allow_blank=True, max_length=100)
    max_cost_usd = serializers.DecimalField(
        required=False, max_digits=24, decimal_places=12, min_value=Decimal(0)
    )
    min_accuracy = serializers.FloatField(required=False, min_value=0.0, max_value=1.0)
    max_latency_s = serializers.FloatField(required=False, min_value=0.0)
    allowed_models = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, max_length=100
    )
    task = serializers.CharField(required=False, allow_blank=True, max_length=64)


class QueryCreateInput(ConstraintFields):
    prompt = serializers.CharField(required=False, allow_blank=False, trim_whitespace=False)
    messages = serializers.ListField(
        child=serializers.DictField(), required=False, allow_empty=False
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.get("prompt") and not attrs.get("messages"):
            raise serializers.ValidationError({"prompt": ["give a non-empty prompt or messages"]})
        if attrs.get("prompt") is not None and not attrs["prompt"].strip():
            raise serializers.ValidationError({"prompt": ["prompt must not be blank"]})
        return attrs


class FeedbackInput(serializers.Serializer):
    correct = serializers.BooleanField(required=False, allow_null=True, default=None)
    score = serializers.FloatField(
        required=False, allow_null=True, default=None, min_value=0.0, max_value=1.0
    )


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
            "finish_reason",
            "aborted",
            "chosen",
            "latency_ms",
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
            "engine_requests": obj.engine_requests,
            "scorer_calls": obj.scorer_calls,
            "cost_usd": str(obj.cost_usd),
        }

    def get_samples(self, obj: Query) -> list[dict[str, Any]]:
        return SampleOut(obj.samples.order_by("index"), many=True).data
