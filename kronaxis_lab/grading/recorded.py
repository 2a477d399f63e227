"""Recorded scores: pass through a score that was measured elsewhere (RouterBench, RouteLLM, LLMRouter).

The "gold" of each row is the recorded score: a number, a bool (True/False correctness columns), or its
string ("0.5", "True"). score = value / scale (scale 10 turns MT-Bench's 1..10 into 0.1..1). Missing cells
become NaN (counted as `no_answer`) or, with ``allow_missing: false``, an error. A score outside [0, 1]
after scaling is an error naming the row.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from kronaxis_lab.grading._common import GradingInputError, check_lengths, is_missing
from kronaxis_lab.grading.base import Grader

_BOOLS = {"true": 1.0, "false": 0.0}


def _value(x: Any, row: int) -> float:
    if isinstance(x, (bool, np.bool_)):
        return float(x)
    if isinstance(x, str):
        s = x.strip()
        if s.lower() in _BOOLS:
            return _BOOLS[s.lower()]
        if not s or s.lower() in ("nan", "none", "null"):
            return math.nan
        try:
            return float(s)
        except ValueError:
            raise GradingInputError(f"row {row}: recorded score {x!r} is not a number") from None
    try:
        return float(x)
    except (TypeError, ValueError):
        raise GradingInputError(f"row {row}: recorded score {x!r} is not a number") from None


class RecordedScoreGrader(Grader):
    """Returns the recorded scores (the `golds` column) validated into [0, 1]; responses are ignored.

    After `grade`, `last_stats_` = {n, no_answer (missing recorded score), mean}.
    """

    def __init__(self, scale: float = 1.0, allow_missing: bool = True) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.scale = float(scale)
        self.allow_missing = allow_missing
        self.last_stats_: dict[str, Any] = {}

    def grade(self, responses: Sequence[Any], golds: Sequence[Any], queries: Sequence[Any] | None = None) -> np.ndarray:
        n = check_lengths(responses, golds, queries)
        scores = np.array([math.nan if is_missing(g) else _value(g, i) for i, g in enumerate(golds)], dtype=float)
        scores = scores / self.scale
        missing = np.isnan(scores)
        if missing.any() and not self.allow_missing:
            raise GradingInputError(f"recorded score missing in {int(missing.sum())} row(s), "
                                    f"e.g. row {int(np.argmax(missing))}")
        bad = np.flatnonzero(~missing & ((scores < 0) | (scores > 1)))
        if bad.size:
            i = int(bad[0])
            raise GradingInputError(f"row {i}: recorded score {golds[i]!r} / scale {self.scale:g} = {scores[i]:g} "
                                    "is outside [0, 1]"
                                    f" ({bad.size} such row(s))")
        self.last_stats_ = {"n": n, "no_answer": int(missing.sum()),
                            "mean": float(np.nanmean(scores)) if (~missing).any() else math.nan}
        return scores
