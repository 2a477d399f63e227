"""RouterBench wide format (withmartian/routerbench): one row per prompt, one column group per model.

Columns: `sample_id`, `prompt` (plain text or a Python-list string of turns), `eval_name`, `<model>`
(score 0..1), `<model>|model_response`, `<model>|total_cost` (USD for that call), and
`oracle_model_to_route_to`. Published as pandas pickles (`routerbench_0shot.pkl`, ...) and CSV slices
`<task>_train.csv` / `<task>_test.csv`.

`path` may be one file (.csv / .pkl / .pickle / .parquet) or a directory. In a directory, matching
`*_train.*` / `*_test.*` files give the split; other files get the seeded hash split. Models are the
columns that have a `|total_cost` companion. The $ of every call is recorded, so with no fleet config the
fleet is derived from the file: tiers rank the models by mean cost per call (0 = cheapest).
A (row, model) cell with an empty score is a missing outcome: `missing="drop_query"` (default) drops
that prompt so every router is compared on the same set; `missing="error_row"` keeps it as an error row.

What the published files need (all counted in `dataset.info`):
- Few-shot prompts: every prompt of an `eval_name` begins with the same demonstrations. With `final_question`
  (default) `text` is what follows the prefix most prompts of the eval_name share (`splits.final_questions`):
  the split key and the text routers train on. The demonstrations carry no routing signal, and a 128-token
  encoder would see nothing else. The whole prompt stays in `messages` and is what input tokens are counted on.
- Repeated `sample_id` values (different prompts under one id) get `#<n>` appended from the second occurrence
  on, with a warning giving the count.
- `<task>_train` / `<task>_test` files and no val file: val is carved from train (importers/base.py).
"""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.importers.base import Importer
from kronaxis_lab.data.splits import final_questions
from kronaxis_lab.data.store import DataStore
from kronaxis_lab.data.tables import TableError

log = logging.getLogger(__name__)

COST_SUFFIX = "|total_cost"
RESPONSE_SUFFIX = "|model_response"
_READERS = {".csv": pd.read_csv, ".pkl": pd.read_pickle, ".pickle": pd.read_pickle, ".parquet": pd.read_parquet}


def _prompt_turns(raw: Any) -> list[str]:
    """The turns of a plain prompt (one) or of a Python-list string of turns."""
    if isinstance(raw, (list, tuple)):
        return [str(t) for t in raw]
    s = "" if raw is None or (isinstance(raw, float) and np.isnan(raw)) else str(raw)
    if s.startswith("[") and s.endswith("]"):
        try:
            val = ast.literal_eval(s)
        except (ValueError, SyntaxError):
            return [s]
        if isinstance(val, (list, tuple)) and all(isinstance(t, str) for t in val):
            return list(val)
    return [s]


def _messages(turns: list[str]) -> str:
    return json.dumps([{"role": "user", "content": t} for t in turns])


def unique_ids(ids: pd.Series) -> tuple[pd.Series, int]:
    """(ids, n renamed): the second and later occurrences of an id get `#<n>` (n = 1, 2, ...) appended."""
    ids = ids.astype(str).reset_index(drop=True)
    nth = ids.groupby(ids).cumcount()
    out = ids.where(nth.eq(0), ids + "#" + nth.astype(str))
    if out.duplicated().any():  # an id that already ended in '#<n>'
        raise TableError(f"sample_id values stay duplicated after renaming: {out[out.duplicated()].head(3).tolist()}")
    return out, int(nth.gt(0).sum())


class RouterBenchImporter(Importer):
    name = "routerbench"

    def __init__(self, path: str | None = None, missing: str = "drop_query", count_tokens: bool = True,
                 final_question: bool = True, shared_prefix_min_share: float = 0.5, **kw):
        super().__init__(**kw)
        if missing not in ("drop_query", "error_row"):
            raise ValueError(f"routerbench: missing must be 'drop_query' or 'error_row', got '{missing}'")
        self.path, self.missing, self.count_tokens = path, missing, count_tokens
        self.final_question, self.shared_prefix_min_share = bool(final_question), float(shared_prefix_min_share)

    def _files(self) -> list[tuple[Path, str | None]]:
        if not self.path:
            raise TableError("routerbench: set dataset.path to a RouterBench file or directory")
        p = Path(self.path).expanduser()
        if p.is_file():
            return [(p, None)]
        if not p.is_dir():
            raise TableError(f"routerbench: {p} does not exist")
        files = sorted(f for f in p.iterdir() if f.suffix in _READERS)
        if not files:
            raise TableError(f"routerbench: no .csv/.pkl/.parquet files in {p}")
        out = []
        for f in files:
            stem = f.stem
            split = "train" if stem.endswith("_train") else "test" if stem.endswith("_test") else None
            out.append((f, split))
        return out

    @staticmethod
    def _read(path: Path) -> pd.DataFrame:
        try:
            df = _READERS[path.suffix](path)
        except Exception as e:  # any reader error, re-raised with the file name
            raise TableError(f"{path}: cannot be read as a RouterBench table: {e}") from e
        if not isinstance(df, pd.DataFrame):
            raise TableError(f"{path}: expected a pandas DataFrame, got {type(df).__name__}")
        for col in ("prompt",):
            if col not in df.columns:
                raise TableError(f"{path}: column '{col}' is missing; columns: {list(df.columns)[:12]}")
        return df

    def read(self, store: DataStore) -> tuple[pd.DataFrame, pd.DataFrame]:
        qs, outs = [], []
        models: list[str] | None = None
        renamed = 0
        for path, split in self._files():
            df = self._read(path)
            file_models = [c[: -len(COST_SUFFIX)] for c in df.columns if c.endswith(COST_SUFFIX)]
            file_models = [m for m in file_models if m in df.columns]
            if not file_models:
                raise TableError(f"{path}: no model columns (expected '<model>' and '<model>{COST_SUFFIX}')")
            if models is not None and set(file_models) != set(models):
                raise TableError(f"{path}: models {sorted(file_models)} differ from the other files' {sorted(models)}")
            models = file_models
            sid = df["sample_id"] if "sample_id" in df.columns else pd.Series(df.index)
            sid, n_renamed = unique_ids(sid)
            if n_renamed:
                log.warning("%s: %d rows repeat a sample_id of an earlier row; renamed '<sample_id>#<n>'",
                            path, n_renamed)
            renamed += n_renamed
            qid = (f"rb-{path.stem}-" + sid).to_numpy()
            turns = [_prompt_turns(p) for p in df["prompt"].tolist()]
            task = df["eval_name"].astype(str).to_numpy() if "eval_name" in df.columns else np.full(len(df), path.stem)
            qs.append(pd.DataFrame({"query_id": qid, "prompt": ["\n\n".join(t) for t in turns],
                                    "messages": [_messages(t) if len(t) > 1 else None for t in turns],
                                    "task": task, "split": split, "source": f"routerbench/{path.name}"}))
            for m in models:
                score = pd.to_numeric(df[m], errors="coerce").to_numpy()
                cost = pd.to_numeric(df[m + COST_SUFFIX], errors="coerce").to_numpy()
                has_resp = m + RESPONSE_SUFFIX in df.columns
                resp = df[m + RESPONSE_SUFFIX].astype("string").to_numpy() if has_resp else None
                bad = ~np.isnan(score) & ((score < 0) | (score > 1))
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise TableError(f"{path}: row {i}, column '{m}': score {score[i]} outside [0, 1]")
                outs.append(pd.DataFrame({"query_id": qid, "model": m, "score": score, "cost_usd": cost,
                                          "response": resp}))
        queries = pd.concat(qs, ignore_index=True)
        out = pd.concat(outs, ignore_index=True)
        missing = out["score"].isna() | out["cost_usd"].isna()
        bad_q = set(out.loc[missing, "query_id"])
        if self.missing == "drop_query":
            queries = queries[~queries["query_id"].isin(bad_q)]
            out = out[~out["query_id"].isin(bad_q)]
        else:
            out.loc[missing, "error"] = "missing outcome in source file"
            out.loc[missing, ["score", "cost_usd"]] = [0.0, 0.0]
        if not self.count_tokens:
            out["input_tokens"], out["output_tokens"] = 0, 0
        queries = queries.reset_index(drop=True)
        if self.final_question:  # after dropping: the shared prefix is that of the prompts kept
            queries["text"], stripped = final_questions(queries["prompt"], queries["task"],
                                                        self.shared_prefix_min_share)
        else:
            queries["text"], stripped = queries["prompt"], pd.Series(False, index=queries.index)
        # the whole prompt stays in messages whenever text is only its final question
        full = stripped & queries["messages"].isna()
        queries.loc[full, "messages"] = queries.loc[full, "prompt"].map(lambda p: _messages([p]))
        self.read_info = {"missing_cells": int(missing.sum()),
                          "dropped_missing_outcome": len(bad_q) if self.missing == "drop_query" else 0,
                          "renamed_duplicate_sample_ids": renamed, "final_question_texts": int(stripped.sum())}
        return queries, out.reset_index(drop=True)

    def derive_fleet(self, outcomes: pd.DataFrame) -> Fleet:
        ok = outcomes[outcomes.get("error", pd.Series(index=outcomes.index, dtype=object)).isna()]
        mean_cost = ok.groupby("model")["cost_usd"].mean().sort_values()
        levels = sorted(mean_cost.unique())
        models = {m: {"tier": levels.index(c), "description": f"derived: mean ${c:.6g} per call"}
                  for m, c in mean_cost.items()}
        return Fleet.from_config({"models": models, "source": f"derived from {self.path}"})
