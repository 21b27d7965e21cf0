"""What every sampler backend shares: a truncation setting, per-request settings, a completion, the `Sampler`
protocol, and `collect`.

The JAX sampler and the vLLM backend both implement `Sampler`; the sample stage and the evaluation only use this
module's names, so neither backend imports the other."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol


GREEDY_EPS = 1e-5  # vLLM: a temperature below this is greedy


@dataclass(frozen=True)
class Truncation:
    """One decoding setting, as the paper's tables write it (top_k 0 = none, top_p 1.0 = none). Here, not in
    truncation.py, so configs and presets resolve it without importing JAX."""

    temperature: float
    top_k: int = 0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_EPS


@dataclass(frozen=True)
class SamplingParams:
    """Decode settings for one request (vLLM's names and meanings)."""

    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    max_tokens: int = 256
    seed: int = 0
    stop: tuple[str, ...] = ()
    logprobs: bool = False  # return the sampled tokens' log-probs under the truncated distribution


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    finish_reason: str  # stop (EOS or stop string) | length | prompt_too_long
    logprobs: list[float] | None = None
    prompt_tokens: int = 0


class Sampler(Protocol):
    """A backend: completions for token-id (or, with a tokenizer, string) prompts, one per prompt."""

    def stream(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams] | SamplingParams,
               request_ids: Sequence[int] | None = None) -> Iterator[list[tuple[int, Completion]]]:
        """(prompt index, completion) pairs in groups, as they finish; `request_ids` seed each request's stream."""
        ...

    def generate(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams] | SamplingParams,
                 request_ids: Sequence[int] | None = None, progress=None) -> list[Completion]:
        """All completions in prompt order (`collect` of `stream`)."""
        ...


def collect(stream: Iterator[list[tuple[int, Completion]]], n: int, progress=None) -> list[Completion]:
    """The completions of a sampler's stream() in prompt order (`progress(k)` after each k that finish)."""
    results: list[Completion | None] = [None] * n
    for finished in stream:
        for i, c in finished:
            results[i] = c
        if progress is not None:
            progress(len(finished))
    return results  # type: ignore[return-value]
