"""A classifier trained earlier, as an ensemble member: `fit` loads it instead of training it again.

    members:
      tier: {_target_: kronaxis_lab.classifiers.pretrained.PretrainedClassifier, path: <kronaxis-train dir>/classifier}

Blending members that a comparison has already trained costs no second fine-tune (kronaxis-compare's `blend_of`
rows use it). `fit` returns the *loaded* classifier (so the ensemble saves and exports the real member), after
checking that it was fitted on exactly the queries, targets and models it is handed now: train_info.json's
`train_fingerprint` (kronaxis-train writes it). A member trained on other data — a different split, a test leak,
another target kind — is refused by name, and so is one without a fingerprint. Only a combiner that fits its
members once on all of train can take one (`combiner: blend` or `mean`); cross-fitting refits on folds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .base import Classifier, ClassifierLoadError, check_fit_inputs, load_classifier, train_fingerprint

INFO_FILE = "train_info.json"
TARGET = f"{__name__}.PretrainedClassifier"  # the `_target_` of a pretrained member node


class PretrainedClassifier(Classifier):
    def __init__(self, path: str) -> None:
        self.path = path

    def fit(
        self,
        queries: Sequence[str],
        targets: np.ndarray,
        model_names: Sequence[str],
        val_queries: Sequence[str] | None = None,
        val_targets: np.ndarray | None = None,
        *,
        model_costs: Mapping[str, float] | Sequence[float] | None = None,
        tasks: Sequence[Any] | None = None,
    ) -> Classifier:
        q, y, names, _, _ = check_fit_inputs(queries, targets, model_names, val_queries, val_targets)
        directory = Path(str(self.path)).expanduser()
        info_file = directory / INFO_FILE
        if not info_file.is_file():
            raise ClassifierLoadError(f"pretrained member {directory}: no {INFO_FILE} (train it with kronaxis-train)")
        info = json.loads(info_file.read_text())
        stored = info.get("train_fingerprint")
        if stored is None:
            raise ClassifierLoadError(f"pretrained member {directory}: {INFO_FILE} has no train_fingerprint (trained "
                                      "by an older kronaxis-train): retrain it")
        if stored != train_fingerprint(q, y, names):
            raise ClassifierLoadError(
                f"pretrained member {directory} was fitted on other data ({info.get('n_train')} train queries of "
                f"'{info.get('dataset')}' there, {len(q)} here, or other targets / models): a member must be fitted "
                "on the ensemble's own train split")
        clf = load_classifier(directory)
        if list(clf.model_names_) != names:
            raise ClassifierLoadError(f"pretrained member {directory} predicts {clf.model_names_}, not {names}")
        return clf

    def predict_proba(self, queries):
        raise RuntimeError("PretrainedClassifier.fit returns the loaded classifier: predict with that")

    def save_state(self, directory: Path) -> None:
        raise RuntimeError("PretrainedClassifier.fit returns the loaded classifier: save that")

    def load_state(self, directory: Path) -> None:
        raise RuntimeError("PretrainedClassifier is not saved: its loaded classifier is")
