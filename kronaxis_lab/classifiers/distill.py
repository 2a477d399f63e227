"""Distil a trained TierPredictor into a smaller, faster student (DistilBERT-style layer dropping).

Student initialisation: a copy of the teacher's network (embeddings, head and tokenizer included) keeping
`n_layers` of its L encoder layers, evenly spaced and ending with the last one — every other layer when
n_layers = L/2, as DistilBERT did (`select_layers`: 6 → 3 keeps layers [1, 3, 5]).

Student training: the HF Trainer on the teacher's soft predictions p^T = teacher.predict_proba(queries), so
unlabelled queries suffice (the train queries, or any traffic sample):

    loss = BCE(σ(z^S), y)   (or MSE(σ(z^S), y) with loss="mse"),   y = (1 - α) p^T + α y_true

with α = `hard_label_weight` (0 = pure distillation; y_true only needed when α > 0; where y_true is NaN —
not observed — the target is p^T alone). For the ordinal head,
p^T is already the monotone cumulative P(t ≤ k), so the ordinal targets are p^T itself. The student is a
`TierPredictor` (same head, tier order and model columns as the teacher), saved/loaded/exported the same way.

    student = distill(teacher, train_queries, n_layers=3, val_queries=val_queries)
    student.save_pretrained("runs/x/student")
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kronaxis_lab.classifiers.base import FitInputs, as_queries, check_targets, load_classifier
from kronaxis_lab.classifiers.tier_predictor import TierPredictor, keep_layers, n_encoder_layers, select_layers


class StudentTierPredictor(TierPredictor):
    """A TierPredictor initialised from, and trained to imitate, a teacher TierPredictor.

    Args:
        teacher: a fitted TierPredictor or the directory it was saved to (may also be given to `fit`).
        n_layers: encoder layers the student keeps (ignored when `layers` is given).
        layers: explicit teacher layer indices to keep, e.g. [0, 2, 4].
        hard_label_weight: α, the weight of the true labels in the targets (needs `targets` in `fit`).
        **kwargs: TierPredictor arguments (training_args, max_length, loss, ...). `head` and the
            model costs are always the teacher's.
    """

    not_in_config = ("teacher",)  # a saved student is a complete TierPredictor: no teacher needed to reload

    def __init__(
        self,
        teacher: TierPredictor | str | Path | None = None,
        n_layers: int = 3,
        layers: Sequence[int] | None = None,
        hard_label_weight: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.teacher = teacher
        self.n_layers = n_layers
        self.layers = layers
        self.hard_label_weight = hard_label_weight

    def task_labels_column(self) -> str | None:
        return None  # a student imitates its teacher's P̂: no auxiliary task head

    def fit(
        self,
        queries: Sequence[str],
        targets: np.ndarray | None = None,
        model_names: Sequence[str] | None = None,
        val_queries: Sequence[str] | None = None,
        val_targets: np.ndarray | None = None,
        *,
        teacher: TierPredictor | str | Path | None = None,
        model_costs: Any = None,
    ) -> "StudentTierPredictor":
        """Distil on `queries`; labels (`targets`) are only used when hard_label_weight > 0.

        `model_names` must match the teacher's columns if given; `model_costs` is accepted for pipeline
        compatibility and ignored: a student always keeps its teacher's head and tier order.
        """
        teacher = _as_teacher(teacher if teacher is not None else self.teacher)
        names = list(teacher.model_names_)
        if model_names is not None and list(model_names) != names:
            raise ValueError(f"model_names {list(model_names)} differ from the teacher's columns {names}")
        alpha = float(self.hard_label_weight)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"hard_label_weight must be in [0, 1], got {alpha}")
        queries = as_queries(queries, "queries")
        if not queries:
            raise ValueError("fit needs at least one query")
        soft = self._targets(teacher, queries, targets, names, alpha, "targets")
        val_soft = None
        if val_queries is not None:
            val_queries = as_queries(val_queries, "val_queries")
            val_soft = self._targets(teacher, val_queries, val_targets, names, alpha, "val_targets")
        self._init_from = teacher
        # the student is the teacher's network, cut: its pooling; no auxiliary task (it imitates P̂ alone)
        self.pooling, self.aux_task_weight = teacher.pooling, 0.0
        try:
            data = FitInputs(queries, soft, names, val_queries, val_soft)
            return self._fit(data, head=teacher.head_, model_costs=teacher.model_costs_)
        finally:
            del self._init_from

    @staticmethod
    def _targets(teacher, queries, targets, names, alpha, name) -> np.ndarray:
        soft = teacher.predict_proba(queries).astype(np.float64)
        if alpha > 0:
            if targets is None:
                raise ValueError(f"hard_label_weight={alpha} needs {name} (the true labels)")
            y = check_targets(targets, len(queries), names, name)
            soft = np.where(np.isnan(y), soft, (1 - alpha) * soft + alpha * y)  # unobserved: the teacher alone
        return np.clip(soft, 0.0, 1.0)

    def _build_model(self, model_names: list[str]):
        teacher = self._init_from
        model = copy.deepcopy(teacher.model_).to("cpu").requires_grad_(True).train()
        n_total = n_encoder_layers(model)
        layers = list(self.layers) if self.layers is not None else select_layers(n_total, self.n_layers)
        keep_layers(model, layers)
        self.layers_ = layers  # teacher layer indices the student started from
        return model, copy.deepcopy(teacher.tokenizer_)


def _as_teacher(teacher) -> TierPredictor:
    if teacher is None:
        raise ValueError("a StudentTierPredictor needs a teacher (a fitted TierPredictor or its saved directory)")
    if isinstance(teacher, (str, Path)):
        teacher = load_classifier(teacher, expected_cls=TierPredictor)
    if not isinstance(teacher, TierPredictor) or not hasattr(teacher, "model_"):
        raise ValueError(f"the teacher must be a fitted TierPredictor, got {type(teacher).__name__}")
    return teacher


def distill(
    teacher: TierPredictor | str | Path,
    queries: Sequence[str],
    *,
    n_layers: int = 3,
    val_queries: Sequence[str] | None = None,
    targets: np.ndarray | None = None,
    val_targets: np.ndarray | None = None,
    **student_kwargs: Any,
) -> StudentTierPredictor:
    """Build and train a `StudentTierPredictor` with `n_layers` layers from `teacher` on `queries`."""
    student = StudentTierPredictor(teacher=None, n_layers=n_layers, **student_kwargs)
    return student.fit(queries, targets, val_queries=val_queries, val_targets=val_targets, teacher=teacher)


__all__ = ["StudentTierPredictor", "distill"]
