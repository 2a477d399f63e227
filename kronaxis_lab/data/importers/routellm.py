"""RouteLLM's recorded evaluations (lm-sys/RouteLLM, routellm/evals): GPT-4-1106 vs Mixtral-8x7B.

- MMLU: 57 `mmlu_<subject>.csv` files (prompt, one True/False column per model). The gold letter is
  joined from the MMLU test file by question text.
- GSM8K: `gsm8k_responses.csv` (prompt, correctness and full response per model). Gold from GSM8K test.
- MT-Bench: `judgements.jsonl`, GPT-4 single-answer judgments 1–10 per (question, turn, model);
  score = rating / 10, correct = score ≥ `correct_threshold`. Turn 2 is its own query (the conversation).
`exclude_contaminated` drops prompts listed in `contaminated_prompts.jsonl` (overlap with RouteLLM's
own router training data) for comparisons with RouteLLM's published numbers.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pandas as pd

from kronaxis_lab.data.importers.base import Importer
from kronaxis_lab.data.store import DataStore
from kronaxis_lab.data.tables import TableError

ROOT = "routellm/routellm/evals"


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TableError(f"{path}: line {i} is not valid JSON: {e}") from e
    return rows


def _as_bool(col: pd.Series, path: Path, name: str) -> pd.Series:
    m = col.astype(str).str.strip().str.lower().map({"true": True, "false": False, "1": True, "0": False,
                                                      "1.0": True, "0.0": False})
    if m.isna().any():
        bad = col[m.isna()].head(3).tolist()
        raise TableError(f"{path}: column '{name}' must be True/False, found {bad} "
                         f"at rows {list(col[m.isna()].index[:3])}")
    return m.astype(bool)


class _RouteLLMBase(Importer):
    contaminated_file: str = ""

    def __init__(self, models: list[str], exclude_contaminated: bool = False, **kw):
        super().__init__(**kw)
        self.models = list(models)
        self.exclude_contaminated = exclude_contaminated

    def _contaminated(self, store: DataStore) -> set[str]:
        if not self.exclude_contaminated:
            return set()
        rows = _read_jsonl(store.path(f"{ROOT}/{self.contaminated_file}"))
        return {r["eval_prompt"].strip() for r in rows}

    def _long(self, wide: pd.DataFrame, path: Path, response_suffix: str | None = None) -> pd.DataFrame:
        parts = []
        for m in self.models:
            if m not in wide.columns:
                raise TableError(f"{path}: column for model '{m}' is missing; columns: {list(wide.columns)}")
            part = pd.DataFrame({"query_id": wide["query_id"], "model": m})
            part["correct"] = _as_bool(wide[m], path, m).to_numpy()
            part["score"] = part["correct"].astype(float)
            if response_suffix:
                part["response"] = wide[f"{m}{response_suffix}"].to_numpy()
            parts.append(part)
        return pd.concat(parts, ignore_index=True)


class RouteLLMMMLU(_RouteLLMBase):
    name = "routellm_mmlu"
    contaminated_file = "mmlu/contaminated_prompts.jsonl"

    def __init__(self, mmlu_file: str = "mmlu/mmlu_test.jsonl.gz", **kw):
        super().__init__(**kw)
        self.mmlu_file = mmlu_file

    @staticmethod
    def _prompt(r: dict) -> str:
        # RouteLLM's MMLU prompt layout: question, lettered choices, "Answer:"
        choices = "".join(f"\n{c}. {r[f'answer_{c.lower()}']}" for c in "ABCD")
        return f"{r['question']}{choices}\nAnswer:"

    def read(self, store: DataStore) -> tuple[pd.DataFrame, pd.DataFrame]:
        files = store.glob(f"{ROOT}/mmlu/responses/mmlu_*.csv")
        if not files:
            raise TableError(f"no {ROOT}/mmlu/responses/mmlu_*.csv under {store.data_dir} or the mirror")
        gold_rows = [r for r in _read_jsonl(store.path(self.mmlu_file)) if r.get("question") != "question"]
        by_prompt = {self._prompt(r).strip(): r["correct_answer"] for r in gold_rows}
        by_stem = {r["question"].strip(): r["correct_answer"] for r in gold_rows}
        contaminated = self._contaminated(store)
        qs, outs = [], []
        for path in files:
            subject = re.sub(r"^mmlu_", "", path.stem)
            wide = pd.read_csv(path, dtype=str, keep_default_na=False)
            if "prompt" not in wide.columns:
                raise TableError(f"{path}: column 'prompt' is missing")
            wide = wide[~wide["prompt"].str.strip().isin(contaminated)].reset_index(drop=True)
            wide["query_id"] = [f"routellm-mmlu-{subject}-{i}" for i in wide.index]
            stem = wide["prompt"].str.split(r"\nA\. ", n=1, regex=True).str[0].str.strip()
            gold = wide["prompt"].str.strip().map(by_prompt).fillna(stem.map(by_stem))
            qs.append(pd.DataFrame({"query_id": wide["query_id"], "text": wide["prompt"], "task": "mmlu",
                                    "category": f"mmlu/{subject}", "gold": gold, "source": "routellm/mmlu"}))
            outs.append(self._long(wide, path))
        queries = pd.concat(qs, ignore_index=True)
        self.n_gold_missing = int(queries["gold"].isna().sum())
        return queries, pd.concat(outs, ignore_index=True)


class RouteLLMGSM8K(_RouteLLMBase):
    name = "routellm_gsm8k"
    contaminated_file = "gsm8k/contaminated_prompts.jsonl"

    def __init__(self, gsm8k_file: str = "gsm8k/test.jsonl", **kw):
        super().__init__(**kw)
        self.gsm8k_file = gsm8k_file

    def read(self, store: DataStore) -> tuple[pd.DataFrame, pd.DataFrame]:
        path = store.path(f"{ROOT}/gsm8k/gsm8k_responses.csv")
        wide = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "prompt" not in wide.columns:
            raise TableError(f"{path}: column 'prompt' is missing")
        wide = wide[~wide["prompt"].str.strip().isin(self._contaminated(store))].reset_index(drop=True)
        wide["query_id"] = [f"routellm-gsm8k-{i}" for i in wide.index]
        gold = {r["question"].strip(): r["answer"] for r in _read_jsonl(store.path(self.gsm8k_file))}
        queries = pd.DataFrame({"query_id": wide["query_id"], "text": wide["prompt"], "task": "gsm8k",
                                "category": "gsm8k", "gold": wide["prompt"].str.strip().map(gold),
                                "source": "routellm/gsm8k"})
        return queries, self._long(wide, path, response_suffix="_response")


_SINGLE_ANSWER = re.compile(r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]", re.S)
_MULTI_TURN_A2 = re.compile(r"### Assistant A:\n(.*?)(?=\n\n### User:|\n\n<\|The End of Assistant A)", re.S)


class RouteLLMMTBench(_RouteLLMBase):
    name = "routellm_mtbench"
    contaminated_file = "mt_bench/contaminated_prompts.jsonl"

    def __init__(self, correct_threshold: float = 0.8, **kw):
        super().__init__(correct_threshold=correct_threshold, **kw)

    @staticmethod
    def _answer(user_prompt: str, turn: int) -> str | None:
        if turn == 1:
            m = _SINGLE_ANSWER.search(user_prompt)
            return m.group(1) if m else None
        answers = _MULTI_TURN_A2.findall(user_prompt)
        return answers[-1] if answers else None

    def read(self, store: DataStore) -> tuple[pd.DataFrame, pd.DataFrame]:
        qpath = store.path(f"{ROOT}/mt_bench/question.jsonl")
        questions = {str(q["question_id"]): q for q in _read_jsonl(qpath)}
        contaminated = self._contaminated(store)
        jpath = store.path(f"{ROOT}/mt_bench/judgements.jsonl")
        rows = []
        for j in _read_jsonl(jpath):
            qid, turn = str(j["question_id"]), int(j["turn"])
            if qid not in questions:
                raise TableError(f"{jpath}: question_id {qid} is not in {qpath}")
            rows.append({"query_id": f"mtbench-{qid}-t{turn}", "qid": qid, "turn": turn, "model": j["model"],
                         "score": float(j["score"]) / 10.0, "response": self._answer(j["user_prompt"], turn)})
        judged = pd.DataFrame(rows)
        bad = ~judged["score"].between(0.1, 1.0)
        if bad.any():
            raise TableError(f"{jpath}: ratings must be 1–10: rows {judged[bad].head(3).to_dict('records')}")
        qrows = []
        for qid, turn in judged[["qid", "turn"]].drop_duplicates().itertuples(index=False):
            q = questions[qid]
            turns = q["turns"][:turn]
            if turns[0].strip() in contaminated:
                continue
            msgs = [{"role": "user", "content": t} for t in turns]
            qrows.append({"query_id": f"mtbench-{qid}-t{turn}", "text": "\n\n".join(turns),
                          "messages": json.dumps(msgs), "split_key": turns[0], "task": "mt_bench",
                          "category": f"mt_bench/{q['category']}",
                          "gold": None, "source": "routellm/mt_bench"})
        queries = pd.DataFrame(qrows)
        out = judged[judged["query_id"].isin(queries["query_id"])][["query_id", "model", "score", "response"]]
        out = out.assign(correct=out["score"] >= self.correct_threshold)
        return queries, out.reset_index(drop=True)


class CombinedImporter(Importer):
    """Concatenates several importers that share one fleet (e.g. RouteLLM MMLU + GSM8K)."""

    def __init__(self, parts: list[Importer], name: str = "combined", **kw):
        super().__init__(name=name, **kw)
        self.parts = list(parts)

    def read(self, store: DataStore) -> tuple[pd.DataFrame, pd.DataFrame]:
        qs, outs = [], []
        for p in self.parts:
            q, o = p.read(store)
            qs.append(q)
            outs.append(o)
        queries = pd.concat(qs, ignore_index=True)
        dup = queries["query_id"].duplicated()
        if dup.any():
            raise TableError(f"{self.name}: parts share query_ids {queries.loc[dup, 'query_id'].head(3).tolist()}")
        return queries, pd.concat(outs, ignore_index=True)

    def load(self, store: DataStore | None = None):
        ds = super().load(store)
        ds.info["parts"] = [p.name for p in self.parts]
        return ds
