"""Replay backend: serves recorded outcomes through the live interface, so replay runs the same code path.

A request's `request_id` is the `query_id` of the outcome table; the answer is the recorded row of
(query_id, model). `latency_s` is the recorded latency (no sleeping unless `sleep_scale > 0`: a batch then
sleeps `sleep_scale · max(latency_s)` of its requests, as concurrent calls would; e.g. to demo a server
under realistic timing).
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any, Sequence

from kronaxis_lab.backends.base import Backend, GenRequest, GenResult

REQUIRED = ("query_id", "model", "response")
OPTIONAL = {"input_tokens": 0, "output_tokens": 0, "latency_s": 0.0, "error": None}


class ReplayError(ValueError):
    pass


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


class ReplayBackend(Backend):
    """Recorded responses of one model.

    Args:
        model: fleet name results are recorded under.
        outcomes: the outcome table (DataFrame) or a path to it (.parquet / .csv / .jsonl).
        recorded_model: the `model` value to read from the table (default: `model`).
        sleep_scale: sleep `sleep_scale × the batch's longest recorded latency` (0 = answer at once).
    """

    def __init__(self, model: str, outcomes: Any, recorded_model: str | None = None, sleep_scale: float = 0.0):
        import pandas as pd

        self.model = model
        self.recorded_model = recorded_model or model
        self.sleep_scale = float(sleep_scale)
        source = "outcomes"
        if isinstance(outcomes, (str, Path)):
            source = str(outcomes)
            outcomes = self._read(Path(outcomes))
        if not isinstance(outcomes, pd.DataFrame):
            raise ReplayError(f"{source}: expected a pandas DataFrame or a table path, got {type(outcomes).__name__}")
        missing = [c for c in REQUIRED if c not in outcomes.columns]
        if missing:
            raise ReplayError(f"{source}: outcome table lacks column(s) {missing}")
        rows = outcomes[outcomes["model"] == self.recorded_model]
        if rows.empty:
            have = sorted(map(str, outcomes["model"].unique()))[:20]
            raise ReplayError(f"{source}: no rows for model '{self.recorded_model}' (models: {have})")
        keys = rows["query_id"].astype(str)
        dup = keys[keys.duplicated()].unique()
        if len(dup):
            raise ReplayError(f"{source}: duplicate (query_id, model) rows for model '{self.recorded_model}': "
                              f"{list(dup[:5])}")
        cols = [c for c in (*REQUIRED, *OPTIONAL) if c in rows.columns]
        self._rows = {k: rec for k, rec in zip(keys, rows[cols].to_dict("records"))}

    @staticmethod
    def _read(path: Path) -> Any:
        import pandas as pd

        if not path.exists():
            raise ReplayError(f"{path}: outcome table not found")
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".csv":
            return pd.read_csv(path)
        if path.suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=path.suffix == ".jsonl")
        raise ReplayError(f"{path}: unsupported table format (use .parquet, .csv or .jsonl)")

    def __len__(self) -> int:
        return len(self._rows)

    def _lookup(self, req: GenRequest) -> GenResult:
        if req.request_id is None:
            return GenResult(error="replay needs request_id (= query_id) on every request")
        rec = self._rows.get(str(req.request_id))
        if rec is None:
            return GenResult(error=f"no recorded outcome for query_id={req.request_id!r} model={self.recorded_model!r}")
        vals = {k: (d if _is_missing(rec.get(k, d)) else rec.get(k, d)) for k, d in OPTIONAL.items()}
        response = rec["response"]
        return GenResult(
            text="" if _is_missing(response) else str(response),
            input_tokens=int(vals["input_tokens"]),
            output_tokens=int(vals["output_tokens"]),
            latency_s=float(vals["latency_s"]),
            error=None if vals["error"] in (None, "") else str(vals["error"]),
            meta={"replayed": True, "recorded_model": self.recorded_model},
        )

    async def agenerate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        results = [self._lookup(r) for r in requests]
        if self.sleep_scale > 0 and results:
            await asyncio.sleep(self.sleep_scale * max(r.latency_s for r in results))
        return results
