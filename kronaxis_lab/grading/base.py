"""The grader contract: score responses against gold answers, batch-first, scores in [0, 1]."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np


class Grader(ABC):
    @abstractmethod
    def grade(self, responses: Sequence[str], golds: Sequence[Any], queries: Sequence[str] | None = None) -> np.ndarray:
        """Return float scores in [0, 1], one per response (NaN only where grading itself failed)."""
