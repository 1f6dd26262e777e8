"""The data model: teams and keys, priced model endpoints, strategies and the configurations the
router may choose, budgets, every query with its samples and cost ledger, router versions, audit.

Fields, constraints, indexes and trivial properties only; every write goes through services.
Money is stored as Decimal with 12 decimal places, which holds tokens x (USD per million tokens)
exactly for prices with up to 6 decimals.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q, Value


def usd_field(**options: Any) -> models.DecimalField:
    """An amount in USD: 12 decimal places hold tokens x (USD per million tokens) exactly."""
    return models.DecimalField(max_digits=24, decimal_places=12, **options)


def price_field(**options: Any) -> models.DecimalField:
    """A price in USD per million tokens (or per GPU-hour), to the micro-dollar."""
    return models.DecimalField(max_digits=18, decimal_places=6, **options)


ZERO = Decimal("0")


class Team(models.Model):
    name = models.CharField(max_length=100, unique=True)
    allowed_models = models.JSONField(
        default=list,
        blank=True,
        help_text=(
            "Model names, configuration ids or shell-style patterns (gpt-4o*) that the team's keys and members may call; "
            "empty = every enabled one"
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TeamMembership(models.Model):
    class Role(models.TextChoices):
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "user"], name="membership_unique_team_user")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"


class ApiKey(models.Model):
    """An API key. Only a SHA-256 of the secret is stored; the full key is shown once."""

    class Scope(models.TextChoices):
        QUERY = "query", "Create and read queries"
        FEEDBACK = "feedback", "Send feedback"
        USAGE = "usage", "Read usage"
        ADMIN = "admin", "Manage the team's keys and budgets"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, help_text="Visible part of the key")
    hashed_key = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.JSONField(default=list, blank=True, help_text="Empty means every scope")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    rate_limit_rpm = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests per minute; empty = no limit"
    )
    rate_limit_tpm = models.PositiveIntegerField(
        null=True, blank=True, help_text="Tokens per minute; empty = no limit"
    )
    allowed_models = models.JSONField(
        default=list,
        blank=True,
        help_text=(
            "Model names, configuration ids or shell-style patterns (gpt-4o*) that this key may call; "
            "empty = every one its team may call"
        ),
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["team", "created_at"], name="apikey_team_created")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class ModelEndpoint(models.Model):
    class Engine(models.TextChoices):
        LLAMA_CPP = "llama_cpp", "llama.cpp (in-process, CPU)"
        OPENAI_COMPAT = "openai_compat", "OpenAI-compatible server"
        VLLM = "vllm", "vLLM (in-process, GPU)"

    name = models.SlugField(max_length=100, unique=True, help_text="Model name used in the API")
    display_name = models.CharField(max_length=200, blank=True)
    engine = models.CharField(max_length=32, choices=Engine.choices)
    engine_params = models.JSONField(default=dict, blank=True)
    input_usd_per_mtok = price_field(default=ZERO)
    output_usd_per_mtok = price_field(default=ZERO)
    gpu_usd_per_hour = price_field(null=True, blank=True)
    cached_input_usd_per_mtok = price_field(
        null=True,
        blank=True,
        help_text="Prompt tokens read from the provider's cache; empty = input",
    )
    reasoning_usd_per_mtok = price_field(
        null=True, blank=True, help_text="Completion tokens reported as reasoning; empty = output"
    )
    context_window = models.PositiveIntegerField(
        null=True, blank=True, help_text="Most prompt tokens the model accepts (catalogue)"
    )
    max_output_tokens = models.PositiveIntegerField(
        null=True, blank=True, help_text="Most completion tokens per request (catalogue)"
    )
    price_key = models.CharField(
        max_length=200,
        blank=True,
        help_text="Name in an imported price catalogue; empty = engine_params.model, then name",
    )
    price_source = models.CharField(
        max_length=300, blank=True, help_text="Where the current prices come from"
    )
    queue = models.CharField(
        max_length=64, blank=True, help_text="Celery queue of the worker pool; empty = by engine"
    )
    descriptors = models.JSONField(
        default=dict,
        blank=True,
        help_text="Facts for the router: parameters, family, known accuracy",
    )
    # What the endpoint can honour of an OpenAI request: the router sends a request using one
    # of these only to endpoints that have it (services.request_fields), never drops it.
    supports_json_mode = models.BooleanField(
        default=False, help_text="Honours response_format json_object"
    )
    supports_json_schema = models.BooleanField(
        default=False, help_text="Honours response_format json_schema (structured output)"
    )
    supports_tools = models.BooleanField(default=False, help_text="Honours tools / tool_choice")
    supports_logprobs = models.BooleanField(
        default=True, help_text="Returns token log-probs (logprobs / top_logprobs)"
    )
    supports_images = models.BooleanField(default=False, help_text="Accepts image content parts")
    supports_audio = models.BooleanField(default=False, help_text="Accepts audio content parts")
    serves_embeddings = models.BooleanField(
        default=False, help_text="Answers POST /v1/embeddings (passed through, billed per token)"
    )
    balancing = models.CharField(
        max_length=16,
        choices=[("weighted", "Weighted random"), ("least_busy", "Least busy")],
        default="weighted",
        help_text="How requests are spread over the endpoint's deployments",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(input_usd_per_mtok__gte=0) & Q(output_usd_per_mtok__gte=0),
                name="endpoint_prices_non_negative",
            ),
            models.CheckConstraint(
                condition=Q(gpu_usd_per_hour__isnull=True) | Q(gpu_usd_per_hour__gte=0),
                name="endpoint_gpu_price_non_negative",
            ),
            models.CheckConstraint(
                condition=(
                    Q(cached_input_usd_per_mtok__isnull=True) | Q(cached_input_usd_per_mtok__gte=0)
                )
                & (Q(reasoning_usd_per_mtok__isnull=True) | Q(reasoning_usd_per_mtok__gte=0)),
                name="endpoint_token_kind_prices_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Deployment(models.Model):
    """One more server of an endpoint's model (a LiteLLM "deployment"): its engine params are
    the endpoint's, overridden by these (typically ``base_url`` and ``api_key_env``). An
    endpoint with enabled deployments is served by them, balanced by ``endpoint.balancing``;
    one without is served by its own engine params."""

    endpoint = models.ForeignKey(
        ModelEndpoint, on_delete=models.CASCADE, related_name="deployments"
    )
    name = models.SlugField(max_length=100)
    engine_params = models.JSONField(
        default=dict, blank=True, help_text="Overrides of the endpoint's engine params"
    )
    weight = models.PositiveIntegerField(default=1, help_text="Share of traffic (weighted)")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["endpoint", "name"]
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "name"], name="deployment_unique_name")
        ]

    def __str__(self) -> str:
        return f"{self.endpoint.name}/{self.name}"


class CircuitBreaker(models.Model):
    """The circuit breaker of one upstream target (an endpoint, or one of its deployments),
    when there is no Redis to hold it (the embedded default); see services.breakers."""

    target = models.CharField(max_length=64, unique=True)
    state = models.CharField(max_length=16, default="closed")
    failures = models.PositiveIntegerField(default=0, help_text="Consecutive failures")
    trips = models.PositiveIntegerField(default=0, help_text="Opens since the last close")
    open_until = models.FloatField(default=0.0, help_text="Unix time the cool-down ends")
    probe_until = models.FloatField(default=0.0, help_text="Unix time a probe's claim ends")
    last_error = models.CharField(max_length=300, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.target}: {self.state}"


class StrategyConfig(models.Model):
    """A strategy with validated parameters (e.g. majority_vote with k=5, temperature 0.7)."""

    name = models.SlugField(max_length=100, unique=True)
    strategy = models.CharField(max_length=64, help_text="Strategy slug from the registry")
    params = models.JSONField(default=dict, blank=True)
    description = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Configuration(models.Model):
    """An (endpoint, strategy) pair the router may choose."""

    slug = models.SlugField(max_length=200, unique=True, help_text="Id used in the API")
    endpoint = models.ForeignKey(
        ModelEndpoint, on_delete=models.PROTECT, related_name="configurations"
    )
    strategy = models.ForeignKey(
        StrategyConfig, on_delete=models.PROTECT, related_name="configurations"
    )
    max_prompt_tokens = models.PositiveIntegerField(
        default=2048, help_text="Prompts longer than this are refused (bounds the reservation)"
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "strategy"], name="configuration_unique_endpoint_strategy"
            )
        ]

    def __str__(self) -> str:
        return self.slug


class BudgetPolicy(models.Model):
    class Period(models.TextChoices):
        DAY = "day", "Per day"
        MONTH = "month", "Per month"

    class Mode(models.TextChoices):
        HARD_REJECT = "hard_reject", "Hard: reject (HTTP 402)"
        HARD_DOWNGRADE = "hard_downgrade", "Hard: downgrade to what is left"
        SOFT = "soft", "Soft: log and flag"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="budgets")
    api_key = models.ForeignKey(
        ApiKey,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="budgets",
        help_text="Empty: the policy covers the whole team",
    )
    end_user = models.CharField(
        max_length=256,
        blank=True,
        default="",
        help_text="Set: the policy covers only this end user's queries (OpenAI's `user` field)",
    )
    per_end_user = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Each end user (OpenAI's `user` field) of the team or key gets this limit on "
        "their own; requests that name no user share one window",
    )
    name = models.CharField(max_length=100)
    period = models.CharField(max_length=8, choices=Period.choices, default=Period.MONTH)
    limit_usd = usd_field()
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.HARD_REJECT)
    alert_thresholds = models.JSONField(
        default=list,
        blank=True,
        help_text="Percent of the limit spent that raise an alert, e.g. [50, 80, 100]; "
        "empty = COSTPASS_BUDGET_ALERT_THRESHOLDS",
    )
    alert_webhook_url = models.URLField(
        blank=True, help_text="Alerts are POSTed here as JSON, signed (x-costpass-signature)"
    )
    alert_emails = models.CharField(
        max_length=500, blank=True, help_text="Comma-separated addresses that get alerts"
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["team", "name"]
        verbose_name_plural = "budget policies"
        constraints = [
            models.CheckConstraint(condition=Q(limit_usd__gte=0), name="budget_limit_non_negative"),
            # "Each end user" and "this one end user" do not combine.
            models.CheckConstraint(
                condition=Q(per_end_user=False) | Q(end_user=""),
                name="budget_per_end_user_or_one_user",
                violation_error_message="A budget covers either each end user or one end user "
                "(end user set), not both.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_period_display()}, ${self.limit_usd})"

    @property
    def is_hard(self) -> bool:
        return self.mode != self.Mode.SOFT


class BudgetUsage(models.Model):
    """Running totals of one policy for one period window (of one end user, for a policy
    set per end user); the row a reservation locks."""

    policy = models.ForeignKey(BudgetPolicy, on_delete=models.CASCADE, related_name="usage")
    period_start = models.DateField()
    end_user = models.CharField(
        max_length=256,
        blank=True,
        default="",
        db_default="",
        help_text="Set for a per-end-user policy",
    )
    reserved_usd = usd_field(default=ZERO)
    spent_usd = usd_field(default=ZERO)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["policy", "period_start", "end_user"], name="budgetusage_unique_window"
            ),
            models.CheckConstraint(
                condition=Q(reserved_usd__gte=0) & Q(spent_usd__gte=0),
                name="budgetusage_non_negative",
            ),
        ]

    def __str__(self) -> str:
        who = f" for {self.end_user!r}" if self.end_user else ""
        return f"{self.policy} from {self.period_start}{who}"


class BudgetAlert(models.Model):
    """A budget crossed one of its alert thresholds in one period: raised once (the unique
    constraint), then delivered to the policy's webhook and email addresses."""

    policy = models.ForeignKey(BudgetPolicy, on_delete=models.CASCADE, related_name="alerts")
    period_start = models.DateField()
    end_user = models.CharField(
        max_length=256,
        blank=True,
        default="",
        db_default="",
        help_text="Set for a per-end-user policy",
    )
    threshold = models.PositiveSmallIntegerField(help_text="Percent of the limit")
    spent_usd = usd_field()
    limit_usd = usd_field()
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    webhook_status = models.CharField(max_length=300, blank=True)
    email_status = models.CharField(max_length=300, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["policy", "period_start", "end_user", "threshold"],
                name="budgetalert_once_per_period",
            )
        ]
        indexes = [models.Index(fields=["delivered_at"], name="budgetalert_pending")]

    def __str__(self) -> str:
        return f"{self.policy} at {self.threshold}% from {self.period_start}"


class RouterVersion(models.Model):
    class Status(models.TextChoices):
        TRAINING = "training", "Training"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    name = models.CharField(max_length=100)
    learner = models.CharField(max_length=64, help_text="Learner slug from the router registry")
    team = models.ForeignKey(
        Team,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="router_versions",
        help_text="Empty: the installation's router; set: trained on and serving this team only",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.TRAINING)
    is_active = models.BooleanField(default=False)
    is_shadow = models.BooleanField(default=False)
    trained_on = models.JSONField(default=dict, blank=True, help_text="Sources and row counts")
    evaluation = models.JSONField(default=dict, blank=True)
    significance = models.JSONField(
        default=dict,
        blank=True,
        help_text="Paired comparison with the best single configuration (routing.significance): "
        "cost-of-pass difference with its confidence interval, verdict, whether it may serve",
    )
    artifact = models.BinaryField(null=True, blank=True, editable=False)
    progress = models.FloatField(default=0.0)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    trained_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One active version per scope: the installation's (team empty) and each team's.
            models.UniqueConstraint(
                fields=["team"],
                condition=Q(is_active=True),
                name="routerversion_one_active_per_scope",
                nulls_distinct=False,
            )
        ]

    def __str__(self) -> str:
        return self.name


class BenchmarkRun(models.Model):
    """A labelled set run against chosen configurations; its graded queries are outcome data."""

    class LabelledSet(models.TextChoices):
        GENERATED = "generated", "Built-in generated problems"
        UPLOAD = "upload", "Uploaded CSV / JSONL"
        SHARED = "shared", "Labelled set from the data folder"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="benchmark_runs")
    name = models.CharField(max_length=100)
    labelled_set = models.CharField(max_length=16, choices=LabelledSet.choices)
    items = models.JSONField(default=list, blank=True, help_text="[{prompt, gold, answer_kind}]")
    configurations: models.ManyToManyField = models.ManyToManyField(
        "Configuration", related_name="benchmark_runs"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    planned = models.PositiveIntegerField(default=0, help_text="items x configurations")
    done = models.PositiveIntegerField(default=0)
    results = models.JSONField(default=dict, blank=True, help_text="per configuration slug")
    error = models.TextField(blank=True)
    purpose = models.CharField(
        max_length=16, blank=True, help_text="'calibration' trains the first router version"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["team", "-created_at"], name="bench_team_created")]

    def __str__(self) -> str:
        return self.name

    @property
    def items_count(self) -> int:
        return len(self.items)

    @property
    def progress(self) -> float:
        return self.done / self.planned if self.planned else 0.0


class Query(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Source(models.TextChoices):
        API = "api", "Jobs API"
        CHAT = "chat", "OpenAI-compatible API"
        UI = "ui", "Playground"
        BENCHMARK = "benchmark", "Benchmark run"
        EMBEDDINGS = "embeddings", "Embeddings API"

    FINISHED = (Status.DONE, Status.FAILED, Status.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="queries")
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="queries"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.API)
    prompt = models.TextField(blank=True)
    messages = models.JSONField(null=True, blank=True, help_text="Chat messages, when given")
    task = models.CharField(max_length=64, blank=True, help_text="Caller's task tag")
    answer_kind = models.CharField(max_length=16, blank=True)
    gold = models.TextField(blank=True, help_text="Reference answer (benchmark runs)")
    tags = models.JSONField(
        default=list,
        db_default=Value([], output_field=models.JSONField()),
        blank=True,
        help_text="The caller's tags (x-costpass-tags header); also in QueryTag for grouping",
    )
    # Database defaults too, so bulk loaders that name their columns (COPY) need not know them.
    end_user = models.CharField(
        max_length=256,
        blank=True,
        default="",
        db_default="",
        help_text="The caller's end user (OpenAI's `user` field)",
    )
    request_options = models.JSONField(
        default=dict,
        db_default={},
        blank=True,
        help_text="OpenAI request fields the query honours (sampling, n, response_format, "
        "tools, logprobs)",
    )
    constraints = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    # The decision.
    configuration = models.ForeignKey(
        Configuration, null=True, blank=True, on_delete=models.PROTECT, related_name="queries"
    )
    router_version = models.ForeignKey(
        RouterVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="queries"
    )
    predicted_p_correct = models.FloatField(null=True, blank=True)
    predicted_cost_usd = usd_field(null=True, blank=True)
    decision = models.JSONField(default=dict, blank=True, help_text="Alternatives weighed")
    attempts = models.JSONField(
        default=list,
        # Rows written without the column (bulk COPY, code of an earlier release) get [] too.
        db_default=Value([], output_field=models.JSONField()),
        blank=True,
        help_text="Every configuration tried (fallbacks), its target, outcome, retries and cost",
    )
    # The result and its ledger.
    answer = models.TextField(blank=True)
    extracted_answer = models.CharField(max_length=500, blank=True)
    votes = models.JSONField(null=True, blank=True)
    samples_planned = models.PositiveIntegerField(default=0)
    samples_done = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cached_prompt_tokens = models.PositiveBigIntegerField(
        default=0, help_text="Part of prompt_tokens the provider served from its cache"
    )
    reasoning_tokens = models.PositiveBigIntegerField(
        default=0, help_text="Part of completion_tokens the provider reported as reasoning"
    )
    engine_requests = models.PositiveIntegerField(default=0)
    scorer_calls = models.PositiveIntegerField(default=0)
    # Database defaults too, so that bulk loads naming older columns only (COPY) still work.
    scorer_prompt_tokens = models.PositiveBigIntegerField(
        default=0, db_default=0, help_text="Part of prompt_tokens read by scorer / verifier calls"
    )
    scorer_completion_tokens = models.PositiveBigIntegerField(
        default=0,
        db_default=0,
        help_text="Part of completion_tokens written by scorer / verifier calls",
    )
    trace = models.JSONField(
        default=dict,
        db_default=Value({}, output_field=models.JSONField()),
        blank=True,
        help_text="What the strategy decided as it ran: stopping rule, search tree, cascade stages",
    )
    engine_ms = models.PositiveBigIntegerField(
        default=0, help_text="Engine time billed (what a per-GPU-hour price is charged on)"
    )
    cost_usd = usd_field(default=ZERO)
    billed_prices = models.JSONField(
        default=dict, blank=True, help_text="The endpoint's prices this query was billed at"
    )
    reserved_usd = usd_field(default=ZERO)
    budget_windows = models.JSONField(
        default=list, blank=True, help_text="BudgetUsage ids this query's reservation is held in"
    )
    # Timings.
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Created to finished")
    # Failure, cancellation, feedback and grade.
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    feedback_correct = models.BooleanField(null=True, blank=True)
    feedback_score = models.FloatField(null=True, blank=True)
    graded_correct = models.BooleanField(
        null=True, blank=True, help_text="Correctness from gold or feedback"
    )
    graded_at = models.DateTimeField(
        null=True, blank=True, help_text="When graded_correct was set (feeds online learning)"
    )
    budget_flags = models.JSONField(default=list, blank=True, help_text="Soft budgets exceeded")
    # Data retention (services.retention): when the texts are deleted, what the router reads of
    # the prompt is kept as a sketch (token bag + markers, routing.features.prompt_sketch) with
    # the prompt's id, so its training data and online learning do not change.
    text_deleted_at = models.DateTimeField(
        null=True, blank=True, help_text="When prompt, messages, answer and samples' texts went"
    )
    router_sketch = models.TextField(blank=True, default="", db_default="")
    prompt_uid = models.CharField(max_length=32, blank=True, default="", db_default="")
    # Crash recovery. A worker run claims the query by bumping ``runs`` and numbers its
    # samples from ``sample_offset``; while it runs it refreshes ``heartbeat_at``, so the
    # reaper can tell a dead run (stale heartbeat) from a long one. ``dispatched_at``: when
    # the query was last handed to the broker (a lost message is dispatched again).
    runs = models.PositiveSmallIntegerField(default=0, help_text="Worker runs started")
    sample_offset = models.PositiveIntegerField(default=0, help_text="First index of this run")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    benchmark_run = models.ForeignKey(
        BenchmarkRun, null=True, blank=True, on_delete=models.CASCADE, related_name="queries"
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "queries"
        indexes = [
            models.Index(fields=["team", "-created_at"], name="query_team_created"),
            models.Index(fields=["team", "configuration", "created_at"], name="query_team_config"),
            models.Index(fields=["team", "task", "created_at"], name="query_team_task"),
            models.Index(fields=["team", "api_key", "created_at"], name="query_team_key"),
            models.Index(fields=["team", "end_user", "created_at"], name="query_team_end_user"),
            models.Index(fields=["status", "created_at"], name="query_status_created"),
            models.Index(fields=["graded_at"], name="query_graded_at"),
            models.Index(
                fields=["status", "heartbeat_at"],
                name="query_unfinished",
                condition=Q(status__in=["queued", "running"]),
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(cost_usd__gte=0), name="query_cost_non_negative"),
            models.CheckConstraint(
                condition=Q(reserved_usd__gte=0), name="query_reserved_non_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


class Sample(models.Model):
    """One generation inside a query, aborted and discarded ones included."""

    query = models.ForeignKey(Query, on_delete=models.CASCADE, related_name="samples")
    index = models.PositiveIntegerField()
    text = models.TextField(blank=True)
    extracted_answer = models.CharField(max_length=500, blank=True)
    score = models.FloatField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_prompt_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    finish_reason = models.CharField(max_length=16, blank=True)
    aborted = models.BooleanField(default=False)
    chosen = models.BooleanField(default=False)
    seed = models.BigIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    engine_ms = models.PositiveIntegerField(
        default=0, help_text="Its share of the engine time (billed under a GPU-hour price)"
    )
    cost_usd = usd_field(default=ZERO)
    tool_calls = models.JSONField(null=True, blank=True, help_text="OpenAI tool calls, if any")
    logprobs = models.JSONField(
        null=True, blank=True, help_text="OpenAI logprobs content, kept when the request asked"
    )
    # How its tokens were counted: a workers.ledger method (exact, usage, chunks...), or, for
    # a sample whose process died while generating it, the upper bound it is billed at:
    # ``stream_bound`` (UTF-8 bytes of the text it had streamed, at most max_tokens) or
    # ``reservation_share`` (its share of the reservation: the prompt bound plus max_tokens).
    count_method = models.CharField(max_length=24, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["query", "index"]
        constraints = [
            models.UniqueConstraint(fields=["query", "index"], name="sample_unique_query_index")
        ]

    def __str__(self) -> str:
        return f"sample {self.index} of {self.query_id}"


class QueryTag(models.Model):
    """One tag of a query, a row per tag, so usage can be grouped and filtered by tag on any
    database (a query with two tags counts in both groups)."""

    query = models.ForeignKey(Query, on_delete=models.CASCADE, related_name="tag_rows")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    tag = models.CharField(max_length=64)
    created_at = models.DateTimeField(help_text="The query's creation time (for the index)")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["query", "tag"], name="querytag_unique_query_tag")
        ]
        indexes = [models.Index(fields=["team", "tag", "created_at"], name="querytag_team_tag")]

    def __str__(self) -> str:
        return f"{self.tag} on {self.query_id}"


class ScorerCall(models.Model):
    """One scorer / verifier call of a query (best-of-n's verifier): billed like a sample,
    written as soon as it ends, so a query that fails afterwards still bills it."""

    query = models.ForeignKey(Query, on_delete=models.CASCADE, related_name="scorer_rows")
    index = models.PositiveIntegerField()
    sample_index = models.PositiveIntegerField(
        null=True, blank=True, help_text="The sample it scored"
    )
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    engine_ms = models.PositiveIntegerField(default=0)
    cost_usd = usd_field(default=ZERO)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["query", "index"]
        constraints = [
            models.UniqueConstraint(fields=["query", "index"], name="scorer_unique_query_index")
        ]

    def __str__(self) -> str:
        return f"scorer call {self.index} of {self.query_id}"


class AuditLog(models.Model):
    """Who changed which price, budget, key or configuration, when, from what to what."""

    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    actor_api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL)
    action = models.CharField(max_length=32)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    changes = models.JSONField(default=dict, blank=True, help_text="field: [old, new]")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["object_type", "object_id"], name="audit_object"),
            models.Index(fields=["-created_at"], name="audit_created"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.object_type} {self.object_repr}"


class RollupFigures(models.Model):
    """The summed figures of a group of finished queries (abstract: the rollups below)."""

    class Kind(models.TextChoices):
        ROUTED = "routed", "Decided by a router version"
        DIRECT = "direct", "Explicit choice or no router version"
        BENCHMARK = "benchmark", "Benchmark run"

    day = models.DateField()
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    configuration = models.ForeignKey(
        Configuration, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    queries = models.PositiveIntegerField(default=0, help_text="Finished queries")
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    cost_usd = usd_field(default=ZERO)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    samples = models.PositiveBigIntegerField(default=0)
    # Graded queries (gold or feedback): the inputs of accuracy and cost-of-pass. The second
    # moments give the confidence interval of cost-of-pass (a ratio estimator) without the log.
    graded = models.PositiveIntegerField(default=0)
    correct = models.PositiveIntegerField(default=0)
    graded_cost_usd = usd_field(default=ZERO)
    correct_cost_usd = usd_field(default=ZERO, help_text="Cost of correct ones")
    graded_cost_sq = models.FloatField(default=0.0, help_text="Sum of squared USD, graded")
    latency_n = models.PositiveIntegerField(default=0)
    latency_sum_ms = models.PositiveBigIntegerField(default=0)
    latency_hist = models.JSONField(default=dict, blank=True, help_text="bucket index: count")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class QueryDailyRollup(RollupFigures):
    """Finished queries summed per UTC day of creation and per dashboard dimension.

    The dashboards read this table (or the coarser QueryDailyConfigRollup) instead of scanning
    the log. Each row is recomputed from the log for its whole group when one of its queries
    finishes or is graded (services.rollups), so a row always equals the aggregate of the log it
    stands for: exact sums, counts and a latency histogram (log-spaced buckets, see
    services.rollups.latency_bucket).
    """

    task = models.CharField(max_length=64, blank=True)
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "team", "configuration", "task", "api_key", "kind"],
                name="rollup_unique_group",
                nulls_distinct=False,
            )
        ]
        indexes = [
            models.Index(fields=["team", "day"], name="rollup_team_day"),
            # The task filter's menu: a skip scan over this lists a team's tags in a few reads.
            models.Index(fields=["team", "task"], name="rollup_team_task"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.team_id} {self.configuration_id} {self.task!r} {self.kind}"


class QueryDailyConfigRollup(RollupFigures):
    """QueryDailyRollup summed over task tags and API keys: (day, team, configuration, kind).

    Dashboards without a task or key filter read these ~10x fewer rows. Each row is the exact
    sum of its QueryDailyRollup rows (sums and histograms add up), refreshed with them.
    """

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "team", "configuration", "kind"],
                name="configrollup_unique_group",
                nulls_distinct=False,
            )
        ]
        indexes = [models.Index(fields=["team", "day"], name="configrollup_team_day")]

    def __str__(self) -> str:
        return f"{self.day} {self.team_id} {self.configuration_id} {self.kind}"
