from dataclasses import dataclass


@dataclass
class Logprob:
    """vllm.logprobs.Logprob: the log-prob of a token, its rank and decoded text."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


PromptLogprobs = list[dict[int, Logprob] | None]
SampleLogprobs = list[dict[int, Logprob]]
