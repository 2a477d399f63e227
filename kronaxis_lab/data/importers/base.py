"""Shared machinery of the recorded-outcome importers.

An importer reads public recorded data from the data directory and returns a `RoutingDataset`.
It only has to produce the raw queries and outcomes; `Importer.build` does the rest the same way
for every source: splits (leak-free, by normalised question key), token counts where missing (real
tokenizer), cost where missing (tokens × fleet prices), and validation.

Splits: a query the source gives no split gets the seeded hash split of its key. When the source gives
splits but no val (RouterBench's `<task>_train` / `<task>_test` files), val is carved from the given train:
a train query whose key hashes to val moves there (about the configured val share of train, the same
questions as the hash split would pick, never a key on both sides). Then every non-test query whose key
also occurs in test is dropped. `dataset.info` counts what each rule did (`dropped_*`, `val_carved_from_train`,
plus what `read` reports in `read_info`).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, Mapping

import numpy as np
import pandas as pd

from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.splits import DEFAULT_SPLIT, drop_test_overlap, hash_splits, question_keys
from kronaxis_lab.data.store import DataStore
from kronaxis_lab.data.tables import RoutingDataset, TableError
from kronaxis_lab.data.tokens import TokenCounter

log = logging.getLogger(__name__)

#: above this share of train/val queries dropped as overlapping test, the split keys probably do not identify
#: questions (e.g. few-shot prompts keyed on their first demonstration): warn instead of training on the rest
LEAK_WARN_SHARE = 0.2


class Importer(ABC):
    """Base class. Subclasses implement `read(store) -> (queries, outcomes)`."""

    name: str = "dataset"

    def __init__(
        self,
        fleet: Mapping[str, Any] | Fleet | None = None,
        split: Mapping[str, Any] | None = None,
        token_counter: TokenCounter | None = None,
        default_output_tokens: int = 256,
        output_tokens_by_task: Mapping[str, int] | None = None,
        correct_threshold: float = 0.5,
        limit: int | None = None,
        name: str | None = None,
    ):
        self.fleet_cfg = fleet
        self.split_cfg = {**DEFAULT_SPLIT, **dict(split or {})}
        self.token_counter = token_counter
        self.default_output_tokens = int(default_output_tokens)
        self.output_tokens_by_task = dict(output_tokens_by_task or {})
        self.correct_threshold = float(correct_threshold)
        self.limit = limit
        if name:
            self.name = name
        self.read_info: dict[str, Any] = {}  # counts `read` reports (rows dropped, ids renamed): copied into info

    # -- to implement --------------------------------------------------------------------------------
    @abstractmethod
    def read(self, store: DataStore) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Return raw (queries, outcomes). Outcomes need query_id, model, score; the rest is optional."""

    def derive_fleet(self, outcomes: pd.DataFrame) -> Fleet:
        raise TableError(f"{self.name}: no fleet configured and this source cannot derive one")

    # -- shared pipeline -----------------------------------------------------------------------------
    def fleet(self, outcomes: pd.DataFrame) -> Fleet:
        if isinstance(self.fleet_cfg, Fleet):
            return self.fleet_cfg
        if self.fleet_cfg:
            return Fleet.from_config(self.fleet_cfg, source=f"{self.name} fleet")
        return self.derive_fleet(outcomes)

    def load(self, store: DataStore | None = None) -> RoutingDataset:
        store = store or DataStore()
        queries, outcomes = self.read(store)
        return self.build(queries, outcomes)

    def build(self, queries: pd.DataFrame, outcomes: pd.DataFrame) -> RoutingDataset:
        info: dict[str, Any] = {"source_rows": int(len(queries))}
        queries = queries.copy()
        if self.limit:
            queries = queries.head(int(self.limit))
            outcomes = outcomes[outcomes["query_id"].isin(queries["query_id"])]
        for col in ("task", "category", "gold", "messages", "source"):
            if col not in queries.columns:
                queries[col] = None
        queries["source"] = queries["source"].fillna(self.name)
        queries["category"] = queries["category"].fillna(queries["task"])
        # an importer may give its own split key (e.g. MT-Bench turn 2 must follow its turn 1)
        keys = question_keys(queries["split_key"] if "split_key" in queries.columns else queries["text"])
        queries["split"], info["val_carved_from_train"] = self.assign_splits(queries.get("split"), keys)
        queries, n_leak = drop_test_overlap(queries, keys)
        info["dropped_train_overlapping_test"] = n_leak
        n_rest = int((queries["split"] != "test").sum()) + n_leak
        if n_leak > LEAK_WARN_SHARE * max(n_rest, 1):
            log.warning("%s: %d of %d train/val queries dropped because their question key also occurs in test: "
                        "do the split keys identify questions?", self.name, n_leak, n_rest)
        outcomes = outcomes[outcomes["query_id"].isin(queries["query_id"])].copy()
        fleet = self.fleet(outcomes)
        outcomes = self._fill_usage(queries, outcomes, fleet)
        info.update(self.read_info)
        info["n_queries"] = int(len(queries))
        info["splits"] = {k: int(v) for k, v in queries["split"].value_counts().items()}
        return RoutingDataset(queries=queries, outcomes=outcomes, fleet=fleet, name=self.name, info=info)

    def assign_splits(self, given: pd.Series | None, keys: pd.Series) -> tuple[pd.Series, int]:
        """(split per query, n carved into val): given splits kept, the rest hashed, val carved from a given
        train that comes without val (module docstring)."""
        fractions, seed = dict(self.split_cfg["fractions"]), int(self.split_cfg["seed"])
        hashed = hash_splits(keys, fractions, seed)
        if given is None:
            return hashed, 0
        given = given.astype("string")
        split = given.fillna(hashed)
        n_carved = 0
        if given.notna().any() and not given.eq("val").any() and fractions.get("val", 0) > 0:
            carve = given.eq("train").fillna(False) & hashed.eq("val")
            split[carve] = "val"
            n_carved = int(carve.sum())
        return split, n_carved

    def _counter(self) -> TokenCounter:
        if self.token_counter is None:
            raise TableError(f"{self.name}: token counts are not recorded and no token_counter is configured")
        return self.token_counter

    def _fill_usage(self, queries: pd.DataFrame, out: pd.DataFrame, fleet: Fleet) -> pd.DataFrame:
        """Fill correct/tokens/cost where the source did not record them."""
        if "correct" not in out.columns:
            out["correct"] = out["score"] >= self.correct_threshold
        for col in ("response", "error", "latency_s", "input_tokens", "output_tokens", "cost_usd"):
            if col not in out.columns:
                out[col] = np.nan if col in ("latency_s", "input_tokens", "output_tokens", "cost_usd") else None
        need_in = out["input_tokens"].isna()
        if need_in.any():
            # the prompt is the same for every model: count each query once, on the whole prompt the models read
            # (`prompt`, when an importer keys and routes on part of it, e.g. a few-shot prompt's final question)
            prompt = queries["prompt"].fillna(queries["text"]) if "prompt" in queries.columns else queries["text"]
            counts = pd.Series(self._counter().count(prompt.tolist()), index=queries["query_id"].to_numpy())
            out.loc[need_in, "input_tokens"] = out.loc[need_in, "query_id"].map(counts).to_numpy()
        need_out = out["output_tokens"].isna()
        has_resp = need_out & out["response"].notna()
        if has_resp.any():
            out.loc[has_resp, "output_tokens"] = self._counter().count(out.loc[has_resp, "response"].tolist())
        rest = out["output_tokens"].isna()
        if rest.any():
            task = out.loc[rest, "query_id"].map(queries.set_index("query_id")["task"])
            assumed = task.map(self.output_tokens_by_task).fillna(self.default_output_tokens)
            out.loc[rest, "output_tokens"] = assumed.to_numpy()
        need_cost = out["cost_usd"].isna()
        if need_cost.any():
            unknown = sorted(set(out.loc[need_cost, "model"]) - set(fleet.names))
            if unknown:
                raise TableError(f"{self.name}: model(s) {unknown} have no price in the fleet {fleet.names}")
            sub = out[need_cost]
            out.loc[need_cost, "cost_usd"] = fleet.cost(
                sub["model"].tolist(), sub["input_tokens"].to_numpy(float), sub["output_tokens"].to_numpy(float)
            )
        return out
