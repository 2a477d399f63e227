"""Question sets for live labelling: public benchmarks with gold answers → a queries table.

Each loader reads one file of the data directory (through `DataStore`, so a mirror works) and returns a
table with the `QUERY_COLUMNS` of `kronaxis_lab.data.tables`:

    query_id  stable across runs, `limit` and `sample` (derived from the file's own ids or line numbers)
    text      what a router reads (MMLU: stem + lettered choices, as RouteLLM's recorded prompts)
    messages  null for single-turn questions (the prompt template builds the model's input from `text`)
    task      selects the prompt template and the grader (gsm8k, mmlu, humaneval, mt_bench)
    gold      a string; JSON where structured (HumanEval: {"prompt", "test", "entry_point"})
    split     seeded hash of the normalised question (`kronaxis_lab.data.splits`), so the same question
              lands in the same split here and in the recorded-outcome importers
    source    e.g. "gsm8k/test"

Selection: `limit` keeps the first N rows (file order); `sample` then draws N rows uniformly with `seed`
(without replacement). Both are applied before splitting, and neither changes a row's id or split.

    qs = GSM8K(limit=20).load(DataStore())          # or hydra.utils.instantiate(cfg.dataset).load(store)
"""

from __future__ import annotations

import gzip
import json
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from kronaxis_lab.data.splits import DEFAULT_SPLIT, hash_splits, question_keys
from kronaxis_lab.data.store import DataStore
from kronaxis_lab.data.tables import TableError, validate_queries


class QuestionSetError(TableError):
    """A question file (or a question-set config) is unusable; the message names the file, line and field."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl / .jsonl.gz file; a bad line raises naming the file and line number."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows: list[dict[str, Any]] = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise QuestionSetError(f"{path}: line {i} is not valid JSON: {e}") from e
                if not isinstance(row, dict):
                    raise QuestionSetError(f"{path}: line {i} is a JSON {type(row).__name__}, expected an object")
                row["_line"] = i
                rows.append(row)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise QuestionSetError(f"{path}: cannot be read: {e}") from e
    return rows


def require(rows: Sequence[Mapping[str, Any]], fields: Sequence[str], path: Path) -> None:
    for r in rows:
        missing = [f for f in fields if r.get(f) in (None, "")]
        if missing:
            has = sorted(k for k in r if k != "_line")
            raise QuestionSetError(f"{path}: line {r.get('_line', '?')} lacks field(s) {missing}; has {has}")


class QuestionSet(ABC):
    """Base class: subclasses implement `read(store) -> DataFrame` with query_id, text, task, gold, ...

    Args:
        path: file inside the data directory (or mirror).
        limit: keep the first N questions (file order); null = all.
        sample: then draw N questions at random (seeded); null = no sampling.
        seed: seed of `sample`.
        split: `{fractions: {train, val, test}, seed}` of the hash split.
        name: dataset name recorded in the run dir.
    """

    name: str = "questions"
    default_path: str = ""

    def __init__(self, path: str | None = None, limit: int | None = None, sample: int | None = None, seed: int = 0,
                 split: Mapping[str, Any] | None = None, name: str | None = None):
        for what, v in (("limit", limit), ("sample", sample)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise QuestionSetError(f"{name or self.name}: {what} must be a positive integer or null, got {v!r}")
        self.path = path or self.default_path
        self.limit, self.sample, self.seed = limit, sample, int(seed)
        self.split_cfg = {**DEFAULT_SPLIT, **dict(split or {})}
        if name:
            self.name = name

    @abstractmethod
    def read(self, store: DataStore) -> pd.DataFrame:
        """All questions of the file, in file order, as a (not yet split) queries frame."""

    def select(self, df: pd.DataFrame) -> pd.DataFrame:
        if self.limit:
            df = df.head(int(self.limit))
        if self.sample and self.sample < len(df):
            df = df.sample(n=int(self.sample), random_state=self.seed).sort_index()
        return df.reset_index(drop=True)

    def load(self, store: DataStore | None = None) -> pd.DataFrame:
        """The validated queries table (limit/sample applied, split assigned)."""
        store = store or DataStore()
        df = self.select(self.read(store))
        if df.empty:
            raise QuestionSetError(f"{self.name}: no questions selected from {self.path}")
        keys = question_keys(df["split_key"] if "split_key" in df.columns else df["text"])
        df["split"] = hash_splits(keys, dict(self.split_cfg["fractions"]), int(self.split_cfg["seed"]))
        return validate_queries(df.drop(columns=["split_key"], errors="ignore"), f"{self.name} ({self.path})")

    def _file(self, store: DataStore) -> Path:
        try:
            return store.path(self.path)
        except FileNotFoundError as e:
            raise QuestionSetError(f"{self.name}: question file '{self.path}' not found: {e}") from e


class GSM8K(QuestionSet):
    """GSM8K (`question`, `answer` ending in "#### N"). Gold = the full solution text (graders read "#### N")."""

    name = "gsm8k"
    default_path = "gsm8k/test.jsonl"

    def read(self, store: DataStore) -> pd.DataFrame:
        path = self._file(store)
        rows = read_jsonl(path)
        require(rows, ["question", "answer"], path)
        bad = [r["_line"] for r in rows if "####" not in str(r["answer"])]
        if bad:
            raise QuestionSetError(f"{path}: answer lacks the '#### N' final answer at line(s) {bad[:5]}")
        split_name = Path(self.path).name.split(".")[0]  # test / train
        return pd.DataFrame({
            "query_id": [f"gsm8k-{split_name}-{r['_line'] - 1}" for r in rows],
            "text": [r["question"] for r in rows],
            "messages": None,
            "task": "gsm8k",
            "category": "gsm8k",
            "gold": [r["answer"] for r in rows],
            "source": f"gsm8k/{split_name}",
        })


class MMLU(QuestionSet):
    """MMLU test (`question`, `answer_a..d`, `correct_answer` letter, `topic`).

    The file carries two stray header rows (`question == "question"`); they are dropped. `text` is the stem
    followed by "A. ..", "B. .." lines (RouteLLM's layout without the trailing "Answer:", which is the
    prompt template's business); gold = the letter.
    """

    name = "mmlu"
    default_path = "mmlu/mmlu_test.jsonl.gz"
    letters = ("A", "B", "C", "D")

    def read(self, store: DataStore) -> pd.DataFrame:
        path = self._file(store)
        rows = [r for r in read_jsonl(path) if r.get("question") != "question"]
        fields = ["question", *(f"answer_{c.lower()}" for c in self.letters), "correct_answer"]
        for r in rows:  # choices may legitimately be "0" or "None" as text; only absence is an error
            missing = [f for f in fields if f not in r or r[f] is None]
            if missing:
                raise QuestionSetError(f"{path}: line {r['_line']} lacks field(s) {missing}")
        bad = [r["_line"] for r in rows if str(r["correct_answer"]).strip().upper() not in self.letters]
        if bad:
            raise QuestionSetError(f"{path}: correct_answer is not one of {list(self.letters)} at line(s) {bad[:5]}")
        text = [r["question"].rstrip() + "".join(f"\n{c}. {r[f'answer_{c.lower()}']}" for c in self.letters)
                for r in rows]
        topic = [re.sub(r"\s+", "_", str(r.get("topic") or "unknown").strip().lower()) for r in rows]
        return pd.DataFrame({
            "query_id": [f"mmlu-test-{r['_line'] - 1}" for r in rows],
            "text": text,
            "messages": None,
            "task": "mmlu",
            "category": [f"mmlu/{t}" for t in topic],
            "gold": [str(r["correct_answer"]).strip().upper() for r in rows],
            "source": "mmlu/test",
        })


class HumanEval(QuestionSet):
    """HumanEval (`task_id`, `prompt`, `entry_point`, `test`). Gold = JSON {prompt, test, entry_point}."""

    name = "humaneval"
    default_path = "humaneval/HumanEval.jsonl.gz"

    def read(self, store: DataStore) -> pd.DataFrame:
        path = self._file(store)
        rows = read_jsonl(path)
        require(rows, ["task_id", "prompt", "entry_point", "test"], path)
        return pd.DataFrame({
            "query_id": ["humaneval-" + str(r["task_id"]).split("/")[-1] for r in rows],
            "text": [r["prompt"] for r in rows],
            "messages": None,
            "task": "humaneval",
            "category": "humaneval",
            "gold": [json.dumps({"prompt": r["prompt"], "test": r["test"], "entry_point": r["entry_point"]})
                     for r in rows],
            "source": "humaneval/test",
        })


class MTBenchQuestions(QuestionSet):
    """MT-Bench questions (`question_id`, `category`, `turns`): the first turn of each, as a single question.

    Only turn 1 is offered: a faithful turn 2 needs the labelled model's own turn-1 answer in the
    conversation, which the one-call-per-(query, model) outcome table cannot express. Gold = the GPT-4
    reference answer for turn 1 where `reference_file` has one (math, reasoning, coding), else null —
    grade with an LLM judge. Ids match the RouteLLM importer (`mtbench-<id>-t1`), so live labels line up
    with the recorded GPT-4 / Mixtral judgments.
    """

    name = "mtbench_questions"
    default_path = "mtbench/mt_bench_question.jsonl"

    def __init__(self, reference_file: str | None = "mtbench/reference_answer_gpt-4.jsonl", **kw: Any):
        super().__init__(**kw)
        self.reference_file = reference_file

    def read(self, store: DataStore) -> pd.DataFrame:
        path = self._file(store)
        rows = read_jsonl(path)
        require(rows, ["question_id", "category", "turns"], path)
        refs: dict[str, str] = {}
        if self.reference_file:
            ref_path = store.path(self.reference_file)
            for r in read_jsonl(ref_path):
                try:
                    refs[str(r["question_id"])] = r["choices"][0]["turns"][0]
                except (KeyError, IndexError, TypeError) as e:
                    raise QuestionSetError(f"{ref_path}: line {r['_line']}: no choices[0].turns[0] ({e})") from e
        bad = [r["_line"] for r in rows if not isinstance(r["turns"], list) or not r["turns"]]
        if bad:
            raise QuestionSetError(f"{path}: 'turns' must be a non-empty list at line(s) {bad[:5]}")
        return pd.DataFrame({
            "query_id": [f"mtbench-{r['question_id']}-t1" for r in rows],
            "text": [r["turns"][0] for r in rows],
            "messages": None,
            "task": "mt_bench",
            "category": [f"mt_bench/{r['category']}" for r in rows],
            "gold": [refs.get(str(r["question_id"])) for r in rows],
            "source": "mtbench/questions",
        })


class QuestionMix(QuestionSet):
    """Several question sets in one table. Each part keeps its own limit/sample; the mix's `limit`/`sample`
    apply to the concatenation, and the mix's `split` rule assigns every row's split (the parts' are unused)."""

    name = "mix"

    def __init__(self, parts: Sequence[QuestionSet], **kw: Any):
        super().__init__(**kw)
        if not parts:
            raise QuestionSetError(f"{self.name}: 'parts' is empty")
        bad = [type(p).__name__ for p in parts if not isinstance(p, QuestionSet)]
        if bad:
            raise QuestionSetError(f"{self.name}: parts must be question sets, got {bad}")
        self.parts = list(parts)
        self.path = "+".join(p.path for p in self.parts)

    def read(self, store: DataStore) -> pd.DataFrame:
        frames = [p.select(p.read(store)) for p in self.parts]
        df = pd.concat(frames, ignore_index=True)
        dup = df["query_id"][df["query_id"].duplicated()].unique()
        if len(dup):
            raise QuestionSetError(f"{self.name}: parts share query ids {list(dup[:5])}")
        return df
