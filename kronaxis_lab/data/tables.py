"""The outcome table (long, one row per query × model) and the queries table: the contract of every stage.

    outcomes: query_id, model, response, score ∈ [0,1], correct, input_tokens, output_tokens,
              cost_usd, latency_s, error
    queries:  query_id, text, messages (JSON list of {role, content} or null), task, category, gold,
              split, source

Both are stored as Parquet. `RoutingDataset` bundles them with the fleet and derives the wide
(query × model) matrices that training and replay use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from kronaxis_lab.data.fleet import Fleet

OUTCOME_COLUMNS: dict[str, str] = {
    "query_id": "string",
    "model": "string",
    "response": "string",
    "score": "float64",
    "correct": "bool",
    "input_tokens": "int64",
    "output_tokens": "int64",
    "cost_usd": "float64",
    "latency_s": "float64",
    "error": "string",
}
QUERY_COLUMNS: dict[str, str] = {
    "query_id": "string",
    "text": "string",
    "messages": "string",
    "task": "string",
    "category": "string",
    "gold": "string",
    "split": "string",
    "source": "string",
}
SPLITS = ("train", "val", "test")
_SHOW = 5  # offending rows quoted in an error message


class TableError(ValueError):
    """A table violates the contract; the message names the file and the first offending rows."""


def _rows(df: pd.DataFrame, mask: np.ndarray | pd.Series, cols: Sequence[str]) -> str:
    bad = df.loc[np.asarray(mask), [c for c in cols if c in df.columns]]
    shown = bad.head(_SHOW).to_dict("records")
    idx = list(bad.index[:_SHOW])
    more = f" (+{len(bad) - _SHOW} more)" if len(bad) > _SHOW else ""
    return f"{len(bad)} row(s), first at row index {idx}: {shown}{more}"


def _check_columns(df: pd.DataFrame, spec: dict[str, str], what: str, source: str, optional: Iterable[str]) -> None:
    missing = [c for c in spec if c not in df.columns and c not in optional]
    if missing:
        raise TableError(f"{source}: {what} table is missing column(s) {missing}; has {list(df.columns)}")


def _coerce(df: pd.DataFrame, spec: dict[str, str], source: str, what: str) -> pd.DataFrame:
    out = df.copy()
    for col, dtype in spec.items():
        if col not in out.columns:
            out[col] = pd.NA
        try:
            if dtype == "bool":
                if out[col].isna().any():
                    raise TableError(f"{source}: {what} column '{col}' has missing values: "
                                     + _rows(out, out[col].isna(), ["query_id", "model", col]))
                out[col] = out[col].astype(bool)
            elif dtype == "int64":
                num = pd.to_numeric(out[col], errors="coerce")
                bad = num.isna() & out[col].notna()
                if bad.any():
                    raise TableError(f"{source}: {what} column '{col}' is not an integer: "
                                     + _rows(out, bad, ["query_id", "model", col]))
                out[col] = num.fillna(0).round().astype("int64")
            elif dtype == "float64":
                num = pd.to_numeric(out[col], errors="coerce")
                bad = num.isna() & out[col].notna()
                if bad.any():
                    raise TableError(f"{source}: {what} column '{col}' is not numeric: "
                                     + _rows(out, bad, ["query_id", "model", col]))
                out[col] = num.astype("float64")
            else:
                out[col] = out[col].astype("string")
        except (TypeError, ValueError) as e:
            if isinstance(e, TableError):
                raise
            raise TableError(f"{source}: {what} column '{col}' cannot be read as {dtype}: {e}") from e
    return out[list(spec)]


def validate_outcomes(df: pd.DataFrame, source: str = "<outcomes>",
                      fleet_models: Sequence[str] | None = None) -> pd.DataFrame:
    """Check and normalise an outcome table; raise TableError naming `source` and the offending rows."""
    _check_columns(df, OUTCOME_COLUMNS, "outcome", source, optional=("response", "latency_s", "error"))
    out = _coerce(df, OUTCOME_COLUMNS, source, "outcome")
    ok = out["error"].isna()
    for col in ("query_id", "model"):
        if out[col].isna().any():
            raise TableError(f"{source}: column '{col}' has empty values: " + _rows(out, out[col].isna(), [col]))
    bad = ok & ~out["score"].between(0.0, 1.0)
    if bad.any():
        raise TableError(f"{source}: score outside [0, 1]: " + _rows(out, bad, ["query_id", "model", "score"]))
    for col in ("input_tokens", "output_tokens", "cost_usd"):
        bad = out[col] < 0
        if bad.any():
            raise TableError(f"{source}: negative {col}: " + _rows(out, bad, ["query_id", "model", col]))
    dup = out.duplicated(["query_id", "model"], keep=False)
    if dup.any():
        raise TableError(f"{source}: duplicate (query_id, model) pairs: " + _rows(out, dup, ["query_id", "model"]))
    if fleet_models is not None:
        unknown = ~out["model"].isin(list(fleet_models))
        if unknown.any():
            names = sorted(out.loc[unknown, "model"].unique())[:_SHOW]
            raise TableError(f"{source}: model(s) {names} are not in the fleet {list(fleet_models)}: "
                             + _rows(out, unknown, ["query_id", "model"]))
    return out.reset_index(drop=True)


def validate_queries(df: pd.DataFrame, source: str = "<queries>") -> pd.DataFrame:
    _check_columns(df, QUERY_COLUMNS, "queries", source, optional=("messages", "category", "gold", "source", "task"))
    out = _coerce(df, QUERY_COLUMNS, source, "queries")
    if out["query_id"].isna().any():
        raise TableError(f"{source}: empty query_id: " + _rows(out, out["query_id"].isna(), ["query_id", "text"]))
    dup = out["query_id"].duplicated(keep=False)
    if dup.any():
        raise TableError(f"{source}: duplicate query_id: " + _rows(out, dup, ["query_id", "text"]))
    bad = out["text"].isna()
    if bad.any():
        raise TableError(f"{source}: empty query text: " + _rows(out, bad, ["query_id"]))
    bad = out["split"].notna() & ~out["split"].isin(SPLITS)
    if bad.any():
        raise TableError(f"{source}: split must be one of {SPLITS}: " + _rows(out, bad, ["query_id", "split"]))
    out["category"] = out["category"].fillna(out["task"])
    return out.reset_index(drop=True)


@dataclass
class Matrices:
    """Wide views of one split, rows aligned with `queries`, columns with `model_names`."""

    queries: pd.DataFrame
    model_names: list[str]
    scores: np.ndarray  # (n, m) float
    correct: np.ndarray  # (n, m) bool
    costs: np.ndarray  # (n, m) float USD
    input_tokens: np.ndarray  # (n, m)
    output_tokens: np.ndarray  # (n, m)
    # (n, m) recorded response texts (object; None where a cell has none), or None when the outcome table
    # records no response at all: what a multi-call router (a cascade) reads after making the call
    responses: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.queries)


@dataclass
class RoutingDataset:
    queries: pd.DataFrame
    outcomes: pd.DataFrame
    fleet: Fleet
    name: str = "dataset"
    info: dict[str, Any] = field(default_factory=dict)  # importer notes: dropped rows, dedup counts, ...

    def __post_init__(self) -> None:
        self.queries = validate_queries(self.queries, f"{self.name}/queries")
        self.outcomes = validate_outcomes(self.outcomes, f"{self.name}/outcomes", self.fleet.names)
        orphan = ~self.outcomes["query_id"].isin(self.queries["query_id"])
        if orphan.any():
            raise TableError(f"{self.name}/outcomes: query_id not in the queries table: "
                             + _rows(self.outcomes, orphan, ["query_id", "model"]))

    # -- wide views ----------------------------------------------------------------------------------
    def wide(self, column: str, queries: pd.DataFrame | None = None) -> pd.DataFrame:
        """Pivot one outcome column to a (query × model) frame in fleet order; missing cells are NaN."""
        qids = (self.queries if queries is None else queries)["query_id"]
        w = self.outcomes.pivot(index="query_id", columns="model", values=column)
        return w.reindex(index=qids, columns=self.fleet.names)

    def matrices(self, split: str | Sequence[str] | None = None, complete: bool = True) -> Matrices:
        """Wide matrices for a split (or several, or all). With `complete`, queries lacking an outcome
        for some model (or with an errored row) are dropped, so every router sees the same queries."""
        q = self.queries
        if split is not None:
            splits = [split] if isinstance(split, str) else list(split)
            q = q[q["split"].isin(splits)]
        ok = self.outcomes[self.outcomes["error"].isna()]
        if complete:
            counts = ok.groupby("query_id")["model"].nunique()
            full = counts.index[counts == len(self.fleet.names)]
            q = q[q["query_id"].isin(full)]
        q = q.reset_index(drop=True)
        sub = RoutingDataset.__new__(RoutingDataset)
        sub.outcomes, sub.fleet, sub.queries = ok, self.fleet, q

        def arr(col: str, dtype: Any) -> np.ndarray:
            if not len(q):
                return np.zeros((0, len(self.fleet.names)), dtype)
            return sub.wide(col, q).to_numpy(dtype=float).astype(dtype)

        return Matrices(
            queries=q,
            model_names=list(self.fleet.names),
            scores=arr("score", float),
            correct=arr("correct", float).astype(bool),
            costs=arr("cost_usd", float),
            input_tokens=arr("input_tokens", float),
            output_tokens=arr("output_tokens", float),
            responses=self._responses(sub, q),
        )

    def _responses(self, sub: RoutingDataset, q: pd.DataFrame) -> np.ndarray | None:
        if "response" not in sub.outcomes.columns or not sub.outcomes["response"].notna().any():
            return None
        w = sub.wide("response", q).to_numpy(dtype=object)
        return np.where(pd.isna(w), None, w)

    def split(self, name: str) -> pd.DataFrame:
        return self.queries[self.queries["split"] == name]

    def summary(self) -> pd.DataFrame:
        """Per model: n, accuracy (mean score), total cost, per split."""
        df = self.outcomes.merge(self.queries[["query_id", "split"]], on="query_id")
        return (
            df.groupby(["split", "model"])
            .agg(n=("score", "size"), accuracy=("score", "mean"), cost_usd=("cost_usd", "sum"))
            .reset_index()
        )

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.queries.to_parquet(directory / "queries.parquet", index=False)
        self.outcomes.to_parquet(directory / "outcomes.parquet", index=False)
        (directory / "fleet.json").write_text(json.dumps(self.fleet.to_dict(), indent=2))
        meta = {"name": self.name, "info": self.info}
        (directory / "dataset.json").write_text(json.dumps(meta, indent=2, default=str))
        return directory

    @classmethod
    def load(cls, directory: str | Path, fleet: Fleet | None = None) -> "RoutingDataset":
        directory = Path(directory)
        for f in ("queries.parquet", "outcomes.parquet"):
            if not (directory / f).is_file():
                raise TableError(f"{directory / f} is missing: not a saved dataset directory")
        if fleet is None:
            fp = directory / "fleet.json"
            if not fp.is_file():
                raise TableError(f"{fp} is missing and no fleet was given")
            fleet = Fleet.from_config(json.loads(fp.read_text()), source=str(fp))
        meta = json.loads((directory / "dataset.json").read_text()) if (directory / "dataset.json").is_file() else {}
        return cls(
            queries=read_table(directory / "queries.parquet"),
            outcomes=read_table(directory / "outcomes.parquet"),
            fleet=fleet,
            name=meta.get("name", directory.name),
            info=meta.get("info", {}),
        )


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a Parquet/CSV/JSONL table with a clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: file not found")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".csv":
            return pd.read_csv(path)
        if path.suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=path.suffix == ".jsonl")
    except Exception as e:
        raise TableError(f"{path}: cannot be read as a table: {e}") from e
    raise TableError(f"{path}: unsupported table format '{path.suffix}' (use .parquet, .csv or .jsonl)")


def load_outcomes(path: str | Path, fleet_models: Sequence[str] | None = None) -> pd.DataFrame:
    return validate_outcomes(read_table(path), str(path), fleet_models)


def load_queries(path: str | Path) -> pd.DataFrame:
    return validate_queries(read_table(path), str(path))
