"""Fallback wrapper: use the primary classifier, and a dependable one (usually `RuleRouter`) when it fails.

    clf = FallbackClassifier(primary=KNNRouter(...), fallback=RuleRouter(model_names=fleet))

`predict_proba` calls the primary; if it is missing, not fitted, raises, or returns the wrong shape, the
whole batch comes from the fallback; rows the primary returns with non-finite values are filled from the
fallback row by row. Each use is logged and counted in `n_fallback_rows_` (per process, not saved).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .base import Classifier, as_queries, check_fit_inputs, load_classifier

log = logging.getLogger(__name__)


class FallbackClassifier(Classifier):
    not_in_config = ("primary", "fallback")  # both parts are saved as sub-directories by save_state

    def __init__(self, primary: Classifier | None = None, fallback: Classifier | None = None) -> None:
        self.primary = primary
        self.fallback = fallback
        self.n_fallback_rows_ = 0

    @property
    def model_names_(self) -> list[str]:  # type: ignore[override]
        for part in (self.primary, self.fallback):
            names = getattr(part, "model_names_", None)
            if names:
                return list(names)
        if getattr(self, "_names", None):
            return list(self._names)
        raise AttributeError("FallbackClassifier: neither part knows its model_names_ yet")

    @model_names_.setter
    def model_names_(self, names: list[str]) -> None:
        # load_classifier sets this before load_state; the parts carry their own names
        self._names = list(names)

    def fit(
        self,
        queries: Sequence[str],
        targets: np.ndarray,
        model_names: Sequence[str],
        val_queries: Sequence[str] | None = None,
        val_targets: np.ndarray | None = None,
        *,
        model_costs: Mapping[str, float] | Sequence[float] | None = None,
    ) -> "FallbackClassifier":
        """Fit both parts on the same data (a failing primary fit propagates: training should be loud)."""
        if self.fallback is None:
            raise ValueError("FallbackClassifier needs a fallback classifier")
        check_fit_inputs(queries, targets, model_names, val_queries, val_targets)
        for part in (self.primary, self.fallback):
            if part is not None:
                part.fit(queries, targets, model_names, val_queries, val_targets, model_costs=model_costs)
        return self

    def _from_fallback(self, queries: list[str], names: list[str]) -> np.ndarray:
        if self.fallback is None:
            raise ValueError("FallbackClassifier: the primary failed and there is no fallback")
        p = np.asarray(self.fallback.predict_proba(queries), dtype=np.float64)
        fb_names = list(self.fallback.model_names_)
        if fb_names != names:  # same fleet in another column order
            missing = set(names) - set(fb_names)
            if missing:
                raise ValueError(f"FallbackClassifier: fallback lacks models {sorted(missing)}")
            p = p[:, [fb_names.index(n) for n in names]]
        return p

    def predict_proba(self, queries: Sequence[str] | str) -> np.ndarray:
        queries = as_queries(queries)
        names = self.model_names_
        try:
            if self.primary is None:
                raise RuntimeError("no primary classifier")
            p = np.asarray(self.primary.predict_proba(queries), dtype=np.float64)
            if p.shape != (len(queries), len(names)):
                raise ValueError(f"primary returned shape {p.shape}, expected {(len(queries), len(names))}")
        except Exception as e:  # noqa: BLE001 - any primary failure is what a fallback is for
            log.warning("primary classifier unavailable (%s: %s); using the fallback for %d queries",
                        type(e).__name__, e, len(queries))
            self.n_fallback_rows_ += len(queries)
            return self._from_fallback(queries, names)
        bad = ~np.isfinite(p).all(axis=1)
        if bad.any():
            log.warning("primary classifier gave non-finite scores for %d queries; using the fallback", bad.sum())
            self.n_fallback_rows_ += int(bad.sum())
            p[bad] = self._from_fallback([q for q, b in zip(queries, bad) if b], names)
        return p

    def export_runtime(self, directory: Path, **graph_options: Any) -> dict[str, Any]:
        """Bundle node (`kronaxis_lab.export.runtimes.FallbackRuntime`): both parts' nodes in primary/ and
        fallback/ (only the fallback when the primary is missing)."""
        if self.fallback is None:
            raise ValueError("FallbackClassifier: no fallback to export")
        directory = Path(directory)
        parts = {"primary": self.primary, "fallback": self.fallback}
        nodes = {k: p.export_runtime(directory / k, **graph_options) for k, p in parts.items() if p is not None}
        return {"kind": "kronaxis_lab.export.runtimes.FallbackRuntime", "label_order": list(self.model_names_),
                "files": {}, "nodes": nodes}

    def save_state(self, directory: Path) -> None:
        if self.primary is not None:
            self.primary.save_pretrained(directory / "primary")
        if self.fallback is not None:
            self.fallback.save_pretrained(directory / "fallback")

    def load_state(self, directory: Path) -> None:
        # a primary that cannot be loaded (missing files, optional dependency absent) leaves the fallback
        self.fallback = load_classifier(directory / "fallback")
        try:
            self.primary = load_classifier(directory / "primary")
        except Exception as e:  # noqa: BLE001
            log.warning("could not load the primary classifier from %s (%s); serving from the fallback",
                        directory / "primary", e)
            self.primary = None
