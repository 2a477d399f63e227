"""LLM-as-judge, MT-Bench single-answer grading: a judge model rates each answer 1–10.

score = rating / rating_max  (so MT-Bench's 1..10 becomes 0.1..1.0); NaN where the judge call failed or
its output holds no rating in range (counted in `last_stats_`, never raised).

Prompts are FastChat's MT-Bench judge templates, given in the config (configs/grader/llm_judge.yaml):
``single`` / ``single_ref`` (single-v1, single-math-v1) for a one-turn query, ``multi_turn`` /
``multi_turn_ref`` (the -multi-turn variants) when the query is a conversation. The ``_ref`` templates
are used when the row's gold holds a reference answer (MT-Bench gives them for math, reasoning, coding).

Per row:
- query: the question (str), or the conversation as a list of ``{"role", "content"}`` messages (or its
  JSON string) ending with the user turn the response answers. With two or more user turns the last two
  are judged with the multi-turn template (the earlier ones are not shown: the template has two turns).
- gold: None / "" (no reference), the reference answer for the judged turn (str), or the per-turn
  reference list (MT-Bench's ``reference``), or a dict with a ``reference`` key.
The judge is any `kronaxis_lab.backends.base.Backend`; requests go out in batches of `batch_size`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from kronaxis_lab.backends.base import GenRequest
from kronaxis_lab.grading._common import GradingInputError, as_text, check_lengths, decode_structured, is_missing
from kronaxis_lab.grading.base import Grader

PROMPT_KEYS = ("single", "single_ref", "multi_turn", "multi_turn_ref")
_FIELDS = ("question", "answer", "ref_answer_1", "ref_answer_2", "question_1", "answer_1", "question_2", "answer_2")


class LLMJudgeGrader(Grader):
    """Rates responses with a judge backend (see module docstring).

    After `grade`: `last_stats_` = {n, no_answer (NaN scores), unparsable, judge_errors, mean_rating};
    `last_judgements_` holds the judge's raw outputs and `last_ratings_` the parsed ratings.
    """

    def __init__(
        self,
        prompts: Mapping[str, Mapping[str, str]],
        backend: Any = None,
        rating_patterns: Sequence[str] = (r"\[\[(\d+\.?\d*)\]\]", r"\[(\d+\.?\d*)\]"),
        rating_min: float = 1.0,
        rating_max: float = 10.0,
        max_tokens: int = 2048,
        temperature: float = 0.0,
        batch_size: int = 64,
        show_progress: bool = True,
    ) -> None:
        missing = [k for k in PROMPT_KEYS if k not in prompts]
        if missing:
            raise ValueError(f"LLMJudgeGrader: prompts is missing {missing} (need {list(PROMPT_KEYS)})")
        self.prompts = {k: {"system_prompt": str(prompts[k]["system_prompt"]),
                            "prompt_template": str(prompts[k]["prompt_template"])} for k in PROMPT_KEYS}
        dummy = {f: "" for f in _FIELDS}
        for key, p in self.prompts.items():
            try:
                p["prompt_template"].format_map(dummy)
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"LLMJudgeGrader: prompt {key!r} template has an unknown field: {e}") from e
        if not rating_patterns:
            raise ValueError("rating_patterns must not be empty")
        self.rating_patterns = [re.compile(p) for p in rating_patterns]
        if not rating_max > rating_min >= 0:
            raise ValueError(f"need rating_max > rating_min >= 0, got {rating_min}, {rating_max}")
        self.rating_min, self.rating_max = float(rating_min), float(rating_max)
        self.backend = backend
        self.max_tokens, self.temperature = int(max_tokens), float(temperature)
        self.batch_size = max(1, int(batch_size))
        self.show_progress = show_progress
        self.last_stats_: dict[str, Any] = {}
        self.last_judgements_: list[str | None] = []
        self.last_ratings_: list[float] = []

    # ------------------------------------------------------------------ prompt building
    @staticmethod
    def _conversation(query: Any, row: int) -> list[dict[str, str]]:
        q = decode_structured(query)
        is_messages = isinstance(q, (list, tuple)) and q and all(isinstance(m, Mapping) and "role" in m for m in q)
        if isinstance(query, str) and not is_messages:  # a question that merely looks like JSON stays a question
            return [{"role": "user", "content": query}]
        if is_messages:
            msgs = [{"role": str(m["role"]), "content": as_text(m.get("content"))} for m in q if m["role"] != "system"]
            if msgs and msgs[-1]["role"] == "user":
                return msgs
            raise GradingInputError(f"row {row}: the conversation must end with the user turn being answered")
        raise GradingInputError(f"row {row}: query must be a question string or a list of role/content messages")

    @staticmethod
    def _references(gold: Any, n_turns: int, row: int) -> list[str] | None:
        g = decode_structured(gold)
        structured = isinstance(g, Mapping) or (isinstance(g, list) and all(isinstance(x, str) for x in g))
        if isinstance(gold, str) and not structured:
            g = gold  # a reference text that merely looks like JSON ("[1, 2]") stays text
        if isinstance(g, Mapping):
            g = g.get("reference")
        if is_missing(g) or (isinstance(g, str) and not g.strip()) or (isinstance(g, (list, tuple)) and not g):
            return None
        if isinstance(g, str):
            if n_turns > 1:
                raise GradingInputError(f"row {row}: a multi-turn reference needs one reference per turn (a list)")
            return [g]
        if isinstance(g, (list, tuple)):
            if len(g) < n_turns:
                raise GradingInputError(f"row {row}: {len(g)} references for a conversation of {n_turns} user turns")
            return [as_text(x) for x in g[:n_turns]]
        raise GradingInputError(f"row {row}: gold reference must be a string or a list of strings, "
                                f"got {type(g).__name__}")

    def build_messages(self, response: str, query: Any, gold: Any = None, row: int = 0) -> list[dict[str, str]]:
        """The judge's chat messages for one row (system + user), from the configured templates."""
        msgs = self._conversation(query, row)
        users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
        refs = self._references(gold, len(users), row)
        if len(users) == 1:
            key = "single_ref" if refs else "single"
            fields = {"question": msgs[users[0]]["content"], "answer": response}
        else:
            q1, q2 = users[-2], users[-1]
            answers = [m["content"] for m in msgs[q1 + 1: q2] if m["role"] == "assistant"]
            if not answers:
                raise GradingInputError(f"row {row}: no assistant answer between the last two user turns")
            key = "multi_turn_ref" if refs else "multi_turn"
            fields = {"question_1": msgs[q1]["content"], "answer_1": answers[-1],
                      "question_2": msgs[q2]["content"], "answer_2": response}
        if refs:
            fields.update({"ref_answer_1": refs[-2] if len(users) > 1 else refs[-1], "ref_answer_2": refs[-1]})
        fields = {f: fields.get(f, "") for f in _FIELDS}
        p = self.prompts[key]
        return [{"role": "system", "content": p["system_prompt"]},
                {"role": "user", "content": p["prompt_template"].format_map(fields)}]

    def parse_rating(self, judgement: str) -> float:
        """First rating matched by the patterns, in order (FastChat: "[[x]]", then "[x]"); NaN if none."""
        for pat in self.rating_patterns:
            m = pat.search(judgement)
            if m:
                try:
                    return float(m.group(1))
                except ValueError:
                    return math.nan
        return math.nan

    # ------------------------------------------------------------------ grading
    def grade(self, responses: Sequence[Any], golds: Sequence[Any] | None,
              queries: Sequence[Any] | None = None) -> np.ndarray:
        if golds is None:
            golds = [None] * len(responses)
        n = check_lengths(responses, golds, queries)
        if queries is None:
            raise GradingInputError("LLMJudgeGrader needs the queries (the questions the responses answer)")
        if self.backend is None:
            raise ValueError("LLMJudgeGrader has no backend: pass the judge Backend (backend=...) when instantiating")
        requests = [
            GenRequest(messages=self.build_messages(as_text(responses[i]), queries[i], golds[i], i),
                       max_tokens=self.max_tokens, temperature=self.temperature, request_id=f"judge-{i}")
            for i in range(n)
        ]
        judgements: list[str | None] = []
        errors = 0
        for start in tqdm(range(0, n, self.batch_size), desc="judging", unit="batch",
                          disable=not self.show_progress or n <= self.batch_size, leave=False):
            batch = requests[start: start + self.batch_size]
            results = self.backend.generate(batch)
            if len(results) != len(batch):
                raise RuntimeError(f"judge backend returned {len(results)} results for {len(batch)} requests")
            for r in results:
                if r.error:
                    errors += 1
                    judgements.append(None)
                else:
                    judgements.append(r.text or "")
        ratings = [self.parse_rating(j) if j is not None else math.nan for j in judgements]
        unparsable = sum(1 for j, r in zip(judgements, ratings) if j is not None and math.isnan(r))
        out_of_range = sum(1 for r in ratings if not math.isnan(r) and not self.rating_min <= r <= self.rating_max)
        ratings = [r if not math.isnan(r) and self.rating_min <= r <= self.rating_max else math.nan for r in ratings]
        scores = np.array(ratings, dtype=float) / self.rating_max
        valid = scores[~np.isnan(scores)]
        self.last_judgements_ = judgements
        self.last_ratings_ = ratings
        self.last_stats_ = {
            "n": n,
            "no_answer": int(np.isnan(scores).sum()),
            "unparsable": unparsable + out_of_range,
            "judge_errors": errors,
            "mean_rating": float(valid.mean() * self.rating_max) if valid.size else math.nan,
        }
        return scores
