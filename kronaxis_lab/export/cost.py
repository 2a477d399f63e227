"""Expected cost per (query, model) at decision time, from the query text alone.

Policies weigh P̂ against the cost known *before* the call. Replay computes it from recorded tokens
(`kronaxis_lab.routing.routers.expected_costs`); a server only has the text, so the bundle stores the same
ingredients, estimated on the train split:

    cost_ij = n_i · s_j · p_in_j + ō_{task_i, j} · p_out_j

- n_i: tokens of query i counted with the bundle's tokenizer (no special tokens, no truncation);
- s_j = Σ recorded input tokens of model j / Σ n over the train queries: maps our count to model j's
  (prompt templates, other tokenizers);
- ō_{t, j}: mean recorded output tokens of model j on train queries of task t (overall mean for an
  unseen or missing task), as replay does;
- p_in / p_out: fleet prices in USD per token. A fleet without prices (e.g. RouterBench, where only $ was
  recorded) uses the train mean recorded $ per model for every query, again as replay does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np


class CostModelError(ValueError):
    """A cost model in router.json is malformed."""


@dataclass
class CostModel:
    """See the module docstring; every list is in fleet order (router.json `model_names`)."""

    price_in: list[float]  # USD per input token
    price_out: list[float]  # USD per output token
    input_token_scale: list[float]
    mean_output_tokens: list[float]
    output_tokens_by_task: dict[str, list[float]] = field(default_factory=dict)
    mean_input_tokens: float = 0.0  # our count, train mean: used when a caller gives neither text nor counts
    flat_cost: list[float] | None = None  # set when the fleet has no prices

    def __post_init__(self) -> None:
        m = len(self.price_in)
        lists = {"price_out": self.price_out, "input_token_scale": self.input_token_scale,
                 "mean_output_tokens": self.mean_output_tokens}
        if self.flat_cost is not None:
            lists["flat_cost"] = self.flat_cost
        lists.update({f"output_tokens_by_task.{t}": v for t, v in self.output_tokens_by_task.items()})
        for name, values in lists.items():
            if len(values) != m:
                raise CostModelError(f"cost_model.{name} has {len(values)} entries for {m} models")
        for name, values in {"price_in": self.price_in, **lists}.items():
            arr = np.asarray(values, dtype=float)
            if not np.all(np.isfinite(arr)) or np.any(arr < 0):
                raise CostModelError(f"cost_model.{name} must be finite and ≥ 0, got {list(values)}")

    @property
    def n_models(self) -> int:
        return len(self.price_in)

    @classmethod
    def fit(cls, train, fleet, token_counts: np.ndarray) -> "CostModel":
        """Estimate from the train `Matrices` (recorded tokens/costs) and our token counts of its queries."""
        p_in, p_out = fleet.prices()
        n = train.n
        counts = np.asarray(token_counts, dtype=float)
        if counts.shape != (n,):
            raise ValueError(f"token_counts has shape {counts.shape}, expected ({n},)")
        m = len(fleet.names)
        if n == 0:
            return cls(list(map(float, p_in)), list(map(float, p_out)), [1.0] * m, [0.0] * m)
        rec_in = train.input_tokens.sum(axis=0)
        total = counts.sum()
        scale = np.where((rec_in > 0) & (total > 0), rec_in / max(total, 1e-12), 1.0)
        mean_out = train.output_tokens.mean(axis=0)
        tasks = train.queries["task"].astype(str).to_numpy()
        by_task = {str(t): train.output_tokens[tasks == t].mean(axis=0).tolist() for t in np.unique(tasks)}
        flat = None
        if not np.any(p_in) and not np.any(p_out):
            flat = train.costs.mean(axis=0).tolist()
        return cls(price_in=[float(x) for x in p_in], price_out=[float(x) for x in p_out],
                   input_token_scale=[float(x) for x in scale], mean_output_tokens=[float(x) for x in mean_out],
                   output_tokens_by_task=by_task, mean_input_tokens=float(counts.mean()), flat_cost=flat)

    def expected(self, input_tokens: np.ndarray | Sequence[float] | None = None,
                 tasks: Sequence[str | None] | None = None, n: int | None = None) -> np.ndarray:
        """(n, m) expected USD. `input_tokens`: our token count per query (None → the train mean)."""
        if input_tokens is None:
            if n is None:
                n = 0 if tasks is None else len(tasks)
            tok = np.full(n, self.mean_input_tokens, dtype=float)
        else:
            tok = np.asarray(input_tokens, dtype=float).reshape(-1)
            n = len(tok)
        if self.flat_cost is not None:
            return np.broadcast_to(np.asarray(self.flat_cost, float), (n, self.n_models)).copy()
        out_tok = np.broadcast_to(np.asarray(self.mean_output_tokens, float), (n, self.n_models)).copy()
        if tasks is not None and self.output_tokens_by_task:
            if len(tasks) != n:
                raise ValueError(f"{len(tasks)} tasks for {n} queries")
            for i, t in enumerate(tasks):
                row = self.output_tokens_by_task.get(str(t)) if t is not None else None
                if row is not None:
                    out_tok[i] = row
        scaled_in = tok[:, None] * np.asarray(self.input_token_scale, float)[None, :]
        return scaled_in * np.asarray(self.price_in, float) + out_tok * np.asarray(self.price_out, float)

    def expected_output_tokens(self, model_names: Sequence[str]) -> dict[str, float]:
        """{model: mean output tokens} (what a server without per-task tables needs)."""
        return {str(name): float(v) for name, v in zip(model_names, self.mean_output_tokens)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "router.json: cost_model") -> "CostModel":
        if not isinstance(d, Mapping):
            raise CostModelError(f"{where} must be an object, got {type(d).__name__}")
        try:
            return cls(**dict(d))
        except TypeError as e:
            raise CostModelError(f"{where}: {e}") from e
        except CostModelError as e:
            raise CostModelError(f"{where}: {e}") from e
