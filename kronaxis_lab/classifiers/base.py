"""The classifier contract shared by every router predictor.

A classifier reads queries and predicts, for each model of the fleet, the probability that the model
answers well. Everything downstream (policies, replay, export, serving) only sees `predict_proba`.

    clf = SomeClassifier(**cfg).fit(queries, targets, model_names=fleet.names)
    P = clf.predict_proba(queries)            # (n_queries, n_models), each in [0, 1]
    clf.save_pretrained(out_dir); clf2 = load_classifier(out_dir)
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

import numpy as np

FORMAT_VERSION = 1
META_FILE = "classifier.json"


class ClassifierLoadError(ValueError):
    """A classifier directory is missing, incomplete or of an unknown format."""


class Classifier(ABC):
    """Base class: sklearn-shaped (`fit` returns self, learned attributes end in `_`)."""

    #: column order of predict_proba; set by fit / from_pretrained
    model_names_: list[str]

    @abstractmethod
    def fit(
        self,
        queries: Sequence[str],
        targets: np.ndarray,
        model_names: Sequence[str],
        val_queries: Sequence[str] | None = None,
        val_targets: np.ndarray | None = None,
    ) -> "Classifier":
        """Learn from `targets[i, j]` ∈ [0, 1] = success of model j on query i (soft labels allowed)."""

    @abstractmethod
    def predict_proba(self, queries: Sequence[str] | str) -> np.ndarray:
        """Return (n, n_models) success probabilities; a single string is treated as a batch of one."""

    # -- persistence -------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Constructor kwargs needed to rebuild the object (JSON-serialisable)."""
        return {}

    def _save_state(self, directory: Path) -> None:  # pragma: no cover - overridden
        """Write learned state (weights, index, ...) into `directory`."""

    def _load_state(self, directory: Path) -> None:  # pragma: no cover - overridden
        """Read learned state written by `_save_state`."""

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_state(directory)
        meta = {
            "format_version": FORMAT_VERSION,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "config": self.get_config(),
            "model_names": list(self.model_names_),
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "Classifier":
        return load_classifier(directory, expected_cls=cls)


def _as_list(queries: Sequence[str] | str) -> list[str]:
    return [queries] if isinstance(queries, str) else list(queries)


def load_classifier(directory: str | Path, expected_cls: type | None = None) -> Classifier:
    """Rebuild a classifier saved with `save_pretrained`, with clear errors for bad directories."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not directory.is_dir():
        raise ClassifierLoadError(f"classifier directory {directory} does not exist")
    if not meta_path.is_file():
        raise ClassifierLoadError(f"{meta_path} is missing: {directory} is not a saved classifier")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ClassifierLoadError(f"{meta_path} is not valid JSON: {e}") from e
    for key in ("format_version", "class", "model_names"):
        if key not in meta:
            raise ClassifierLoadError(f"{meta_path}: field '{key}' is missing")
    if meta["format_version"] != FORMAT_VERSION:
        raise ClassifierLoadError(
            f"{meta_path}: format_version {meta['format_version']} is not supported (expected {FORMAT_VERSION})"
        )
    module_name, _, cls_name = meta["class"].rpartition(".")
    try:
        klass = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise ClassifierLoadError(f"{meta_path}: class '{meta['class']}' cannot be imported: {e}") from e
    if expected_cls is not None and expected_cls is not Classifier and not issubclass(klass, expected_cls):
        raise ClassifierLoadError(f"{meta_path}: holds a {klass.__name__}, not a {expected_cls.__name__}")
    obj = klass(**meta.get("config", {}))
    obj.model_names_ = list(meta["model_names"])
    try:
        obj._load_state(directory)
    except FileNotFoundError as e:
        raise ClassifierLoadError(f"{directory}: a file of the saved {klass.__name__} is missing: {e}") from e
    return obj
