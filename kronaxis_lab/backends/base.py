"""The backend contract: batched async generation returning text, token usage and latency.

Every way of running a model (in-process transformers, vLLM engine, OpenAI-compatible HTTP, recorded
replay) implements `agenerate(requests) -> results`, one result per request, in order. A failed call
is a result with `error` set, never an exception that loses the rest of the batch.
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

CHARS_PER_TOKEN = 4  # rough mean for English text with BPE tokenizers, when no tokenizer or usage is at hand


def estimate_tokens(n_chars: int) -> int:
    """⌈n_chars / 4⌉: the token count assumed for text of `n_chars` characters when nothing better is known."""
    return math.ceil(n_chars / CHARS_PER_TOKEN)


@dataclass
class GenRequest:
    """One generation. Give `messages` (chat) or `prompt` (completion, e.g. base models)."""

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    stop: list[str] | None = None
    request_id: str | None = None  # opaque id carried through (e.g. query_id)
    extra: dict[str, Any] | None = None  # further OpenAI-style params (top_p, seed, ...) for backends that take them

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("GenRequest needs exactly one of `messages` or `prompt`")


@dataclass
class GenResult:
    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. endpoint used, retries, fallbacks


class Backend(ABC):
    """A model endpoint. `model` is the fleet name the results are recorded under."""

    model: str

    @abstractmethod
    async def agenerate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Generate for a batch; returns one result per request, same order."""

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """Synchronous convenience wrapper around `agenerate`."""
        return asyncio.run(self.agenerate(requests))

    def close(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing to release
        """Release resources (HTTP clients, engines)."""
