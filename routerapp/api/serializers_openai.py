"""The documented request and response shapes of the OpenAI-compatible endpoints.

Requests are validated against the official `openai` types (api.openai_request); these
serializers document the main fields for the OpenAPI schema. Every OpenAI field is honoured,
routed to configurations that honour it, or refused with a 400 naming it: sampling fields
override a one-sample configuration's sampling and bound every sample (and the reservation) of
a multi-sample one; response_format, tools and logprobs go to endpoints flagged for them.
costpass's own fields (strategy, max_cost_usd, min_accuracy, max_latency_s, task,
allowed_models) narrow the router's choice.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from routerapp.api.serializers import (
    ConstraintFields,
    MessageInput,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
)


class StreamOptions(serializers.Serializer):
    include_usage = StrictBooleanField(required=False, default=False)


class _OpenAIRequest(ConstraintFields):
    model = StrictCharField(
        required=False,
        default="auto",
        allow_blank=True,
        max_length=200,
        help_text="'auto' (the router chooses), a configuration id or a model name",
    )
    stream = StrictBooleanField(required=False, default=False)
    stream_options = StreamOptions(required=False, allow_null=True)
    n = StrictIntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=16,
        help_text="Choices to return; only one-sample configurations can (others are routed "
        "around)",
    )
    max_tokens = StrictIntegerField(
        required=False, allow_null=True, min_value=1, help_text="Bounds every sample"
    )
    temperature = StrictFloatField(
        required=False,
        allow_null=True,
        min_value=0.0,
        max_value=2.0,
        help_text="Replaces a one-sample strategy's; bounds a multi-sample one's",
    )
    top_p = StrictFloatField(
        required=False,
        allow_null=True,
        min_value=0.0,
        max_value=1.0,
        help_text="Replaces a one-sample strategy's; bounds a multi-sample one's",
    )
    seed = StrictIntegerField(required=False, allow_null=True, help_text="Base seed of the samples")
    stop = serializers.JSONField(required=False, help_text="A string or up to 4 strings")
    logprobs = serializers.JSONField(
        required=False, help_text="Chat: true; completions: top alternatives per token (0-5)"
    )
    user = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=256,
        help_text="Your end user: stored on the query (usage group_by=user)",
    )


class ChatCompletionInput(_OpenAIRequest):
    messages = serializers.ListField(child=MessageInput(), allow_empty=False, max_length=10_000)
    max_completion_tokens = StrictIntegerField(
        required=False, allow_null=True, min_value=1, help_text="Bounds every sample"
    )
    top_logprobs = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=20)
    response_format = serializers.DictField(
        required=False, help_text="json_object / json_schema: endpoints flagged for them"
    )
    tools = serializers.ListField(
        child=serializers.DictField(),
        required=False,
        allow_null=True,
        help_text="Function tools: endpoints flagged for tools; votes compare tool calls",
    )
    tool_choice = serializers.JSONField(required=False)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "minLength": 1},
            {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "maxItems": 1,
            },
        ]
    }
)
class PromptField(serializers.Field):
    """A completion prompt: a string, or a list holding exactly one string."""

    default_error_messages = {
        "invalid": "prompt must be a non-empty string (or a list of one string)",
        "batch": "batched prompts are not supported: send one prompt per request",
    }

    def to_internal_value(self, data: Any) -> str:
        if isinstance(data, list):
            if len(data) != 1:
                self.fail("batch")
            data = data[0]
        if not isinstance(data, str) or not data.strip():
            self.fail("invalid")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class CompletionInput(_OpenAIRequest):
    prompt = PromptField()
    echo = StrictBooleanField(required=False, default=False)
    best_of = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=1)

    def validate_echo(self, value: bool) -> bool:
        if value:
            raise serializers.ValidationError("echo is not supported")
        return value


# --- responses (documentation) ------------------------------------------------------------------


class TokenUsageOut(serializers.Serializer):
    prompt_tokens = serializers.IntegerField(help_text="Every sample's prompt tokens")
    completion_tokens = serializers.IntegerField(help_text="Every sample's generated tokens")
    total_tokens = serializers.IntegerField()


class SampleExtOut(serializers.Serializer):
    index = serializers.IntegerField()
    text = serializers.CharField()
    extracted_answer = serializers.CharField(allow_null=True)
    score = serializers.FloatField(allow_null=True)
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    finish_reason = serializers.CharField()
    aborted = serializers.BooleanField()
    chosen = serializers.BooleanField()
    latency_ms = serializers.IntegerField(allow_null=True)
    engine_ms = serializers.IntegerField(
        help_text="Its share of the engine time (what a GPU-hour price bills)"
    )
    cost_usd = serializers.CharField(help_text="USD, exact decimal")


class CostpassExtOut(serializers.Serializer):
    query_id = serializers.UUIDField()
    status = serializers.CharField()
    configuration = serializers.CharField(allow_null=True)
    model = serializers.CharField(allow_null=True)
    strategy = serializers.CharField(allow_null=True)
    strategy_config = serializers.CharField(allow_null=True)
    router_version = serializers.IntegerField(allow_null=True)
    decision_reason = serializers.CharField(allow_blank=True)
    p_correct = serializers.FloatField(allow_null=True, help_text="Predicted p(correct)")
    predicted_cost_usd = serializers.CharField(allow_null=True)
    reserved_usd = serializers.CharField()
    cost_usd = serializers.CharField(help_text="Real cost: every sample's tokens x prices")
    latency_ms = serializers.IntegerField(allow_null=True)
    engine_requests = serializers.IntegerField()
    engine_seconds = serializers.FloatField(help_text="Engine time billed")
    scorer_calls = serializers.IntegerField()
    extracted_answer = serializers.CharField(allow_null=True)
    votes = serializers.DictField(child=serializers.FloatField(), allow_null=True)
    budget_flags = serializers.ListField(child=serializers.CharField())
    poll_url = serializers.CharField()
    samples_planned = serializers.IntegerField(required=False)
    samples = SampleExtOut(many=True, required=False)
    message = serializers.CharField(required=False)


class ChatMessageOut(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField(allow_null=True)
    refusal = serializers.CharField(allow_null=True)
    tool_calls = serializers.ListField(child=serializers.DictField(), required=False)


class ChatChoiceOut(serializers.Serializer):
    index = serializers.IntegerField()
    message = ChatMessageOut()
    logprobs = serializers.JSONField(allow_null=True)
    finish_reason = serializers.CharField()


class ChatCompletionOut(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    model = serializers.CharField()
    system_fingerprint = serializers.CharField(allow_null=True, required=False)
    choices = ChatChoiceOut(many=True)
    usage = TokenUsageOut(allow_null=True)
    costpass = CostpassExtOut()


class TextChoiceOut(serializers.Serializer):
    index = serializers.IntegerField()
    text = serializers.CharField(allow_blank=True)
    logprobs = serializers.JSONField(allow_null=True)
    finish_reason = serializers.CharField()


class TextCompletionOut(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    model = serializers.CharField()
    system_fingerprint = serializers.CharField(allow_null=True, required=False)
    choices = TextChoiceOut(many=True)
    usage = TokenUsageOut(allow_null=True)
    costpass = CostpassExtOut()


class ModelOut(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    owned_by = serializers.CharField()
    costpass = serializers.DictField()


class ModelListOut(serializers.Serializer):
    object = serializers.CharField()
    data = ModelOut(many=True)


class ErrorDetailOut(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True)


class ErrorOut(serializers.Serializer):
    error = ErrorDetailOut()
