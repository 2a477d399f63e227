"""LLMRouter's recorded scores (ulab-uiuc/LLMRouter, dcrouter data): 9 open models × 5,608 queries.

`scores_train.json`: list of {"question", "scores": {model: 0..1}}; `queries_train.jsonl` gives task,
gold and metric per question (joined on exact text). No responses, tokens or $ are recorded: input tokens
are counted from the query, output tokens come from config, cost = tokens × the fleet prices (the fleet
config copies `llm_candidates.json`).
"""

from __future__ import annotations

import json

import pandas as pd

from kronaxis_lab.data.importers.base import Importer
from kronaxis_lab.data.store import DataStore
from kronaxis_lab.data.tables import TableError


class LLMRouterImporter(Importer):
    name = "llmrouter"

    def __init__(
        self,
        scores_file: str = "llmrouter/scores_train.json",
        queries_file: str = "llmrouter/queries_train.jsonl",
        **kw,
    ):
        super().__init__(**kw)
        self.scores_file, self.queries_file = scores_file, queries_file

    def read(self, store: DataStore) -> tuple[pd.DataFrame, pd.DataFrame]:
        spath = store.path(self.scores_file)
        try:
            scores = json.loads(spath.read_text())
        except json.JSONDecodeError as e:
            raise TableError(f"{spath}: not valid JSON: {e}") from e
        if not isinstance(scores, list):
            raise TableError(f"{spath}: expected a list of {{question, scores}} objects")
        qpath = store.path(self.queries_file)
        meta = pd.read_json(qpath, lines=True, dtype=False)
        for col in ("query", "task_name", "ground_truth"):
            if col not in meta.columns:
                raise TableError(f"{qpath}: column '{col}' is missing")
        meta = meta.drop_duplicates("query").set_index("query")
        rows, outs = [], []
        for i, rec in enumerate(scores):
            if not isinstance(rec, dict) or "question" not in rec or not isinstance(rec.get("scores"), dict):
                raise TableError(f"{spath}: item {i} needs 'question' and a 'scores' object, got {str(rec)[:120]}")
            qid = f"llmrouter-{i}"
            q = rec["question"]
            m = meta.loc[q] if q in meta.index else None
            rows.append({"query_id": qid, "text": q,
                         "task": m["task_name"] if m is not None else "unknown",
                         "gold": None if m is None else str(m["ground_truth"]),
                         "source": "llmrouter"})
            for model, s in rec["scores"].items():
                outs.append((qid, model, s))
        queries = pd.DataFrame(rows)
        outcomes = pd.DataFrame(outs, columns=["query_id", "model", "score"])
        bad = pd.to_numeric(outcomes["score"], errors="coerce").isna()
        if bad.any():
            raise TableError(f"{spath}: non-numeric scores at {outcomes[bad].head(3).to_dict('records')}")
        outcomes["score"] = outcomes["score"].astype(float)
        return queries, outcomes
