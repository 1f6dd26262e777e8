"""Value types and errors shared by the routing package.

Everything here is plain Python (dataclasses, pydantic) so the Django side, the CLI and notebooks can
build and read them without importing the learners.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, field_validator


class RouterError(Exception):
    """Base class of every error the routing package raises on purpose."""


class TableError(RouterError):
    """An input table is missing, unreadable or lacks required columns / has bad values."""


class UnknownConfigError(RouterError):
    """A configuration id is not among the router's candidates."""


class NoAllowedCandidateError(RouterError):
    """No candidate satisfies the request's constraints."""


class UnknownLearnerError(RouterError, KeyError):
    """A learner slug is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


_SAMPLES_PATTERNS = (
    re.compile(r"@(\d+)"),  # maj@5, short_1@4, best_of@8
    re.compile(r"\b(?:best_of|bon|bo|n|k|samples?)[_=-]?(\d+)\b", re.IGNORECASE),
)


def family_of(tag: str) -> str:
    """Return the task family of a task tag: the part before ``/``, else the tag's stem.

    ``arc_challenge`` and ``arc-easy`` -> ``arc``; ``musr_team_allocation`` -> ``musr``;
    ``law/mmlu_pro`` -> ``law``. Tags of one family are near-duplicates for transfer: new traffic
    brings a whole family at once.
    """
    if "/" in tag:
        return tag.split("/", 1)[0]
    return tag.split("_")[0].split("-")[0]


def parse_samples(strategy: str) -> int:
    """Return the number of samples a strategy string implies (``maj@5:cot`` -> 5; default 1)."""
    for pat in _SAMPLES_PATTERNS:
        m = pat.search(strategy)
        if m:
            return max(1, int(m.group(1)))
    return 1


def strategy_family(strategy: str) -> str:
    """Return the strategy with its sample count removed (``maj@5:cot_sample`` -> ``maj@:cot_sample``).

    Configurations of one family share statistical strength (a maj@9 is a maj@5 with more samples).
    """
    return re.sub(r"\d+", "", strategy).strip() or "single"


@dataclass(frozen=True)
class Candidate:
    """One configuration the router may choose: a (model, strategy, params) triple.

    Prices are USD per million tokens when known; ``samples`` defaults to the count parsed from the
    strategy string. A candidate without any outcome rows still gets estimates from these fields.
    """

    config_id: str
    model: str
    strategy: str = "single"
    samples: int | None = None
    input_usd_per_mtok: float | None = None
    output_usd_per_mtok: float | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if not self.config_id or not isinstance(self.config_id, str):
            raise TableError("candidate config_id must be a non-empty string")
        if not self.model:
            raise TableError(f"candidate {self.config_id!r} has no model")
        for name in ("input_usd_per_mtok", "output_usd_per_mtok"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise TableError(f"candidate {self.config_id!r}: {name} must be >= 0, got {v}")
        if self.samples is not None and self.samples < 1:
            raise TableError(f"candidate {self.config_id!r}: samples must be >= 1")

    @property
    def n_samples(self) -> int:
        """Return the sample count (explicit, else parsed from the strategy string)."""
        return self.samples if self.samples is not None else parse_samples(self.strategy)

    @property
    def family(self) -> str:
        """Return the strategy family (strategy without its numbers)."""
        return strategy_family(self.strategy)

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict (inverse of ``Candidate(**d)``)."""
        return {
            "config_id": self.config_id,
            "model": self.model,
            "strategy": self.strategy,
            "samples": self.samples,
            "input_usd_per_mtok": self.input_usd_per_mtok,
            "output_usd_per_mtok": self.output_usd_per_mtok,
            "max_tokens": self.max_tokens,
        }


class Constraints(BaseModel):
    """Per-request limits; a candidate must satisfy all of them to be chosen.

    ``max_latency_s`` only excludes candidates whose latency is known (no source records latency,
    so an unknown latency is not held against a candidate).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_config_ids: frozenset[str] | None = None
    allowed_models: frozenset[str] | None = None
    max_cost_usd: float | None = None
    max_latency_s: float | None = None
    min_accuracy: float | None = None

    @field_validator("max_cost_usd", "max_latency_s")
    @classmethod
    def _non_negative(cls, v: float | None) -> float | None:
        if v is not None and (not math.isfinite(v) or v < 0):
            raise ValueError("must be a finite number >= 0")
        return v

    @field_validator("min_accuracy")
    @classmethod
    def _unit(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError("must be in [0, 1]")
        return v


@dataclass(frozen=True)
class Alternative:
    """One scored candidate of a decision (sorted best first in ``Decision.alternatives``)."""

    config_id: str
    p_correct: float
    cost_usd: float
    cop: float

    def __iter__(self):  # so callers can unpack (config_id, p, cost, cop)
        return iter((self.config_id, self.p_correct, self.cost_usd, self.cop))


@dataclass(frozen=True)
class Decision:
    """The router's answer for one prompt.

    ``p_correct`` and ``cost_usd`` are the chosen configuration's predictions; ``explored`` is True
    when online exploration picked something other than the greedy choice.
    """

    config_id: str
    p_correct: float
    cost_usd: float
    latency_s: float | None = None
    alternatives: list[Alternative] = field(default_factory=list)
    explored: bool = False
    lam: float | None = None

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict."""
        return {
            "config_id": self.config_id,
            "p_correct": self.p_correct,
            "cost_usd": self.cost_usd,
            "latency_s": self.latency_s,
            "explored": self.explored,
            "lambda": self.lam,
            "alternatives": [
                {
                    "config_id": a.config_id,
                    "p_correct": a.p_correct,
                    "cost_usd": a.cost_usd,
                    "cop": a.cop,
                }
                for a in self.alternatives
            ],
        }
