from dataclasses import dataclass, field
from typing import Any


@dataclass
class AsyncEngineArgs:
    model: str = "facebook/opt-125m"
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    enable_prefix_caching: bool | None = None
    seed: int | None = 0
    extra: dict[str, Any] = field(default_factory=dict)
