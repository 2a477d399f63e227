"""The classifier contract shared by every router predictor.

A classifier reads queries and predicts, for each model of the fleet, the probability that the model
answers well. Everything downstream (policies, replay, export, serving) only sees `predict_proba`.

    clf = SomeClassifier(**cfg).fit(queries, targets, model_names=fleet.names, model_costs=costs)
    P = clf.predict_proba(queries)            # (n_queries, n_models), each in [0, 1]
    clf.save_pretrained(out_dir); clf2 = load_classifier(out_dir)

A new classifier is one `Classifier` subclass plus one YAML in configs/classifier/ (tests/
test_classifier_contract.py picks the YAML up by itself). The subclass implements four methods:

- `fit(queries, targets, model_names, val_queries=None, val_targets=None, *, model_costs=None)`: validate
  with `check_fit_inputs` (one rule for NaN: an unobserved outcome, masked), learn, set `model_names_`,
  return self. Every classifier accepts every argument: callers pass what they have, explicitly.
- `predict_proba(queries)`: (n, n_models) in [0, 1]; one string is a batch of one (`as_queries`).
- `save_state(directory)` / `load_state(directory)`: write / read the learned state (weights, index, ...).
  Abstract, so a class that forgets them cannot be instantiated.

and an `__init__` that stores each argument unchanged under its own name (sklearn's convention): `get_config`
reads them back from the signature, so classifier.json never needs a hand-kept list of arguments.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, ClassVar, NamedTuple

import numpy as np

FORMAT_VERSION = 1
META_FILE = "classifier.json"


class ClassifierLoadError(ValueError):
    """A classifier directory is missing, incomplete or of an unknown format."""


class ClassifierInputError(ValueError):
    """fit/predict inputs have the wrong shape, range or type."""


# -- plain config values ---------------------------------------------------------------------------
def to_plain(obj: Any) -> Any:
    """Config values → JSON types: mappings (OmegaConf `DictConfig` included, interpolations resolved) →
    dict with str keys, lists/tuples (`ListConfig` included) → list, numpy scalars/arrays → Python numbers /
    lists, paths → str; anything else is returned as is."""
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (str, bytes)):
        return obj
    if isinstance(obj, Sequence):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


def init_params(cls: type) -> list[str]:
    """Names of `cls.__init__`'s arguments; a `**kwargs` constructor adds its parent class's arguments."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if klass is object:
            break
        if init is None:
            continue
        forwards = False
        for p in list(inspect.signature(init).parameters.values())[1:]:
            if p.kind is p.VAR_KEYWORD:
                forwards = True
            elif p.kind is p.VAR_POSITIONAL:
                raise TypeError(f"{klass.__name__}.__init__ takes *{p.name}: a config needs named arguments")
            elif p.name not in names:
                names.append(p.name)
        if not forwards:
            break
    return names


def constructor_config(obj: Any, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """{argument: to_plain(obj.<argument>)} for every `__init__` argument of `obj` not in `exclude`."""
    out = {}
    for name in init_params(type(obj)):
        if name in exclude:
            continue
        if not hasattr(obj, name):
            raise TypeError(
                f"{type(obj).__name__}.__init__ argument '{name}' is not stored as self.{name}: "
                "get_config cannot rebuild the object (store every argument unchanged, or list it in not_in_config)"
            )
        out[name] = to_plain(getattr(obj, name))
    return out


# -- inputs ----------------------------------------------------------------------------------------
def as_queries(queries: Sequence[str] | str, name: str = "queries") -> list[str]:
    """A batch of query strings as a list; one string is a batch of one. Non-strings are an error."""
    queries = [queries] if isinstance(queries, str) else list(queries)
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise ClassifierInputError(f"{name}[{i}] is a {type(q).__name__}, not a str")
    return queries


def check_targets(targets: Any, n_queries: int, model_names: Sequence[str], name: str = "targets") -> np.ndarray:
    """(n_queries, n_models) float64 targets in [0, 1], NaN allowed (see `check_fit_inputs`)."""
    try:
        y = np.asarray(targets, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ClassifierInputError(f"{name} must be a numeric (n_queries, n_models) array: {e}") from e
    if y.ndim == 1 and len(model_names) == 1:
        y = y[:, None]
    if y.shape != (n_queries, len(model_names)):
        raise ClassifierInputError(
            f"{name} has shape {y.shape}, expected (n_queries, n_models) = ({n_queries}, {len(model_names)})"
        )
    bad = np.isinf(y) | (y < 0) | (y > 1)  # NaN compares False: allowed
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ClassifierInputError(
            f"{name}[{i}, {j}] = {y[i, j]} (model '{model_names[j]}') is outside [0, 1] ({int(bad.sum())} bad entries)"
        )
    return y


class FitInputs(NamedTuple):
    queries: list[str]
    targets: np.ndarray
    model_names: list[str]
    val_queries: list[str] | None
    val_targets: np.ndarray | None


def check_fit_inputs(
    queries: Sequence[str] | str,
    targets: Any,
    model_names: Sequence[str],
    val_queries: Sequence[str] | None = None,
    val_targets: Any = None,
) -> FitInputs:
    """Validate `fit`'s inputs once, the same way for every classifier; return them as lists / float arrays.

    - `model_names`: non-empty and unique (they name the columns of every target and prediction).
    - `queries` (and `val_queries`): strings; one string is a batch of one. An empty batch is valid here
      (the kNN intent index and the rule router need no labelled data); a classifier that must have data
      says so itself.
    - `targets[i, j]` (and `val_targets`): the outcome of model j on query i, a float in [0, 1] (soft labels
      kept), shape (n_queries, n_models); a 1-D array is accepted for a single model.
    - **NaN means "outcome not observed"** (the model was not run on that query, or grading failed): the
      entry is masked, i.e. it adds nothing to that model's loss, neighbour average or success rate, and it
      is never read as a failure. ±inf and values outside [0, 1] are errors.
    - `val_queries` and `val_targets` come together or not at all.

    Raises `ClassifierInputError` (a ValueError) naming the first bad entry.
    """
    names = [str(m) for m in model_names]
    if not names:
        raise ClassifierInputError("model_names is empty")
    if len(set(names)) != len(names):
        raise ClassifierInputError(f"model_names has duplicates: {names}")
    q = as_queries(queries, "queries")
    y = check_targets(targets, len(q), names, "targets")
    if val_queries is not None and val_targets is None:
        raise ClassifierInputError("val_queries given without val_targets")
    if val_targets is not None and val_queries is None:
        raise ClassifierInputError("val_targets given without val_queries")
    vq = vy = None
    if val_queries is not None:
        vq = as_queries(val_queries, "val_queries")
        vy = check_targets(val_targets, len(vq), names, "val_targets")
    return FitInputs(q, y, names, vq, vy)


def train_fingerprint(queries: Sequence[str], targets: np.ndarray, model_names: Sequence[str]) -> str:
    """sha256 of what a classifier was fitted on: the query texts, the targets (NaN kept as NaN) and the model
    names, in order. kronaxis-train stores it in train_info.json; a pretrained member checks it (no leak)."""
    h = hashlib.sha256()
    for part in (json.dumps([str(m) for m in model_names]), *queries):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    h.update(np.ascontiguousarray(np.asarray(targets, np.float64)).tobytes())
    return h.hexdigest()


# -- the contract ----------------------------------------------------------------------------------
class Classifier(ABC):
    """Base class: sklearn-shaped (`fit` returns self, learned attributes end in `_`); see the module docstring."""

    #: column order of predict_proba; set by fit / load_classifier
    model_names_: list[str]

    #: constructor arguments left out of `get_config` (saved by `save_state`, or not needed to reload)
    not_in_config: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def fit(
        self,
        queries: Sequence[str],
        targets: np.ndarray,
        model_names: Sequence[str],
        val_queries: Sequence[str] | None = None,
        val_targets: np.ndarray | None = None,
        *,
        model_costs: Mapping[str, float] | Sequence[float] | None = None,
    ) -> "Classifier":
        """Learn from `targets[i, j]` ∈ [0, 1] = success of model j on query i (soft labels, NaN = unobserved).

        `val_*`: held-out data for early stopping / model selection (ignored by classifiers without either).
        `model_costs`: relative cost per model ({name: cost} or a list in `model_names` order; the train
        pipeline passes the mean $ per query on the train split); used by classifiers that order models by
        cost (the ordinal tier predictor), ignored by the others.
        """

    def task_labels_column(self) -> str | None:
        """The queries-table column whose TRAIN labels `fit` takes as `tasks=` (one per train query), or None:
        this classifier takes none (the default). Training-time data only: prediction still reads text alone.
        The train pipeline passes them when the dataset has the column (else `tasks=None`)."""
        return None

    def wants_val_costs(self) -> bool:
        """True: `fit` also takes `val_costs=(expected, recorded)`, each (n_val, m): the decision-time expected $ of
        every val query under the one cost model (kronaxis_lab.routing.costs, fitted on train, as replay fits it)
        and its recorded $, so that a choice made on val is scored the way replay scores it. False (the default):
        the train pipeline does not build them."""
        return False

    @abstractmethod
    def predict_proba(self, queries: Sequence[str] | str) -> np.ndarray:
        """Return (n, n_models) success probabilities; a single string is treated as a batch of one."""

    @abstractmethod
    def save_state(self, directory: Path) -> None:
        """Write the learned state (weights, index, ...) into `directory` (created by `save_pretrained`)."""

    @abstractmethod
    def load_state(self, directory: Path) -> None:
        """Read the state written by `save_state`; `model_names_` is already set. A missing file may raise
        FileNotFoundError (reported as a ClassifierLoadError)."""

    # -- persistence -------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Constructor kwargs that rebuild the object (JSON-serialisable), read from the attributes named
        like `__init__`'s arguments; override only to write a fitted value in an argument's place."""
        return constructor_config(self, exclude=self.not_in_config)

    def save_pretrained(self, directory: str | Path) -> Path:
        if not getattr(self, "model_names_", None):
            raise ValueError(f"cannot save an unfitted {type(self).__name__} (no model_names_ yet: call fit)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_state(directory)
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
        obj.load_state(directory)
    except FileNotFoundError as e:
        raise ClassifierLoadError(f"{directory}: a file of the saved {klass.__name__} is missing: {e}") from e
    return obj
