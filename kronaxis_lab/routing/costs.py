"""The one decision-time cost model: expected USD per (query, model) from what a router knows before the call.

Replay, calibration, export and serving all price a choice with `CostModel.expected`, so the operating point
chosen in the lab is applied under the same numbers in production:

    cost_ij = n_i · s_j · p_in_j + ō_j · p_out_j

- n_i: prompt tokens of query i, counted by a real tokenizer (`TokenCounter`; the bundle ships the same
  tokenizer). Without a counter (synthetic matrices, unit tests) n_i is the query's mean recorded input
  tokens over the models: the prompt's length, known before the call;
- s_j = Σ recorded input tokens of model j / Σ n over the train queries: maps our count to model j's
  (prompt templates, other tokenizers);
- ō_j: mean recorded output tokens of model j on train. Per-task tables are not used: production traffic
  carries no task label (a router that reads one is a reference, not a deployable router);
- p_in / p_out: fleet prices in USD per token. A fleet without prices (e.g. RouterBench, where only $ was
  recorded) uses the train mean recorded $ per model for every query (`flat_cost`).

Everything is estimated on the train split only: a dataset without one has no honest expected cost, and
asking for it is an error rather than a silent fall-back to the replayed split's outcomes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.tables import Matrices


class CostModelError(ValueError):
    """A cost model is malformed, or cannot be estimated from the data given."""


class TokenCounter(Protocol):
    """Anything that counts prompt tokens per text (no special tokens, no truncation)."""

    def count(self, texts: Sequence[str]) -> np.ndarray: ...


def prompt_tokens(mats: Matrices, counter: TokenCounter | None = None) -> np.ndarray:
    """n_i for every query of `mats`: the counter's count of its text, else its mean recorded input tokens."""
    if counter is not None:
        return np.asarray(counter.count(mats.queries["text"].astype(str).tolist()), dtype=float)
    if mats.n == 0:
        return np.zeros(0)
    return np.asarray(mats.input_tokens, dtype=float).mean(axis=1)


@dataclass
class CostModel:
    """See the module docstring; every list is in fleet order."""

    price_in: list[float]  # USD per input token
    price_out: list[float]  # USD per output token
    input_token_scale: list[float]
    mean_output_tokens: list[float]
    mean_input_tokens: float = 0.0  # our count, train mean: used when a caller gives neither text nor counts
    flat_cost: list[float] | None = None  # set when the fleet has no prices
    tokenizer: str | None = None  # what counted n_i (None: recorded input tokens)

    def __post_init__(self) -> None:
        m = len(self.price_in)
        lists = {"price_out": self.price_out, "input_token_scale": self.input_token_scale,
                 "mean_output_tokens": self.mean_output_tokens}
        if self.flat_cost is not None:
            lists["flat_cost"] = self.flat_cost
        for name, values in lists.items():
            if len(values) != m:
                raise CostModelError(f"cost_model.{name} has {len(values)} entries for {m} models")
        for name, values in {"price_in": self.price_in, **lists, "mean_input_tokens": [self.mean_input_tokens]}.items():
            arr = np.asarray(values, dtype=float)
            if not np.all(np.isfinite(arr)) or np.any(arr < 0):
                raise CostModelError(f"cost_model.{name} must be finite and ≥ 0, got {list(values)}")

    @property
    def n_models(self) -> int:
        return len(self.price_in)

    @classmethod
    def fit(cls, train: Matrices | None, fleet: Fleet, token_counts: np.ndarray | None = None,
            tokenizer: str | None = None) -> "CostModel":
        """Estimate from the train split's recorded tokens/costs and n_i of its queries (`token_counts`;
        None = their mean recorded input tokens)."""
        if train is None or train.n == 0:
            raise CostModelError("the expected cost is estimated on the train split, and it is empty: give the "
                                 "dataset a train split (a router cannot be priced from the replayed split's outcomes)")
        p_in, p_out = fleet.prices()
        counts = prompt_tokens(train) if token_counts is None else np.asarray(token_counts, dtype=float)
        if counts.shape != (train.n,):
            raise ValueError(f"token_counts has shape {counts.shape}, expected ({train.n},)")
        rec_in = train.input_tokens.sum(axis=0)
        total = counts.sum()
        scale = np.where((rec_in > 0) & (total > 0), rec_in / max(total, 1e-12), 1.0)
        flat = train.costs.mean(axis=0).tolist() if not np.any(p_in) and not np.any(p_out) else None
        return cls(price_in=[float(x) for x in p_in], price_out=[float(x) for x in p_out],
                   input_token_scale=[float(x) for x in scale],
                   mean_output_tokens=[float(x) for x in train.output_tokens.mean(axis=0)],
                   mean_input_tokens=float(counts.mean()), flat_cost=flat, tokenizer=tokenizer)

    def expected(self, input_tokens: np.ndarray | Sequence[float] | None = None, n: int | None = None) -> np.ndarray:
        """(n, m) expected USD. `input_tokens`: n_i per query (None → `n` queries of the train mean length)."""
        if input_tokens is None:
            tok = np.full(int(n or 0), self.mean_input_tokens, dtype=float)
        else:
            tok = np.asarray(input_tokens, dtype=float).reshape(-1)
        if self.flat_cost is not None:
            return np.broadcast_to(np.asarray(self.flat_cost, float), (len(tok), self.n_models)).copy()
        scaled_in = tok[:, None] * np.asarray(self.input_token_scale, float)[None, :]
        out = np.asarray(self.mean_output_tokens, float)[None, :]
        return scaled_in * np.asarray(self.price_in, float) + out * np.asarray(self.price_out, float)

    def usage_cost(self, j: int, input_tokens: float, output_tokens: float) -> float:
        """Realised USD of a call to model j from the tokens an upstream reported (no scaling: its own count)."""
        return float(input_tokens) * self.price_in[j] + float(output_tokens) * self.price_out[j]

    def expected_output_tokens(self, model_names: Sequence[str]) -> dict[str, float]:
        """{model: mean output tokens}."""
        return {str(name): float(v) for name, v in zip(model_names, self.mean_output_tokens)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "cost_model") -> "CostModel":
        if not isinstance(d, Mapping):
            raise CostModelError(f"{where} must be an object, got {type(d).__name__}")
        try:
            return cls(**dict(d))
        except TypeError as e:
            raise CostModelError(f"{where}: {e}") from e
        except CostModelError as e:
            raise CostModelError(f"{where}: {e}") from e
