"""Baseline classifiers (kNN, rules, TF-IDF, MLP, MF, fallback) on a tiny learnable fixture.

The label is learnable by construction: maths/code queries fail on the cheap model, chit-chat succeeds;
the premium model succeeds on everything. Embedding-based tests use the real MiniLM-L6 from the PyPI
package (offline) and encode only a few dozen sentences, through one shared on-disk cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from kronaxis_lab.classifiers._common import model_tiers, tier_of_models
from kronaxis_lab.classifiers.base import ClassifierInputError, load_classifier
from kronaxis_lab.classifiers.embedding import Embedder
from kronaxis_lab.classifiers.fallback import FallbackClassifier
from kronaxis_lab.classifiers.knn_intent import (
    ExactIndex,
    IntentFileError,
    KNNRouter,
    SklearnIndex,
    intent_targets,
    load_intents,
)
from kronaxis_lab.classifiers.rules import RuleRouter, RulesConfigError, load_rules, text_features
from kronaxis_lab.classifiers.tfidf import TfidfLogRegRouter

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
MODELS = ["cheap", "premium"]

CHAT_TRAIN = [
    "hi there, how are you?",
    "good morning! hope you slept well",
    "thanks so much, that was helpful",
    "what's your favourite colour?",
    "tell me a fun fact about cats",
    "do you like listening to music?",
    "recommend a nice movie for tonight",
    "hello friend, nice to meet you",
    "what a lovely sunny day it is",
    "can you say something cheerful?",
    "how was your weekend?",
    "bye, talk to you later!",
]
HARD_TRAIN = [
    "solve for x: 3x^2 - 5x + 2 = 0, show your work step by step",
    "compute the integral of x * e^x from 0 to 1",
    "prove that the square root of 2 is irrational",
    "what is the derivative of sin(x) * ln(x)?",
    "```python\ndef merge(a, b):\n    return sorted(a + b)\n```\nmake this run in linear time",
    "write a python function that parses a CSV file and returns the column averages",
    "implement a thread-safe LRU cache in Java with generics",
    "why does this javascript code throw TypeError: undefined is not a function?",
    "write a SQL query that returns the top 5 customers by revenue per region",
    "find all integer solutions of x^2 + y^2 = 25",
    "first sort the array, then binary search for the target; implement it in C++",
    "the probability of two dice summing to 7 is what fraction? derive it",
]
CHAT_TEST = [
    "hey, how is it going?",
    "thank you, have a great evening",
    "tell me something funny about dogs",
    "what is your favourite food?",
]
HARD_TEST = [
    "solve the equation 2x + 7 = 19 and explain each step",
    "write a rust function that reverses a linked list",
    "evaluate the limit of (1 + 1/n)^n as n goes to infinity",
    "fix this bug:\n```js\nconst x = arr.map(a => a.id\n```",
]
TRAIN_Q = CHAT_TRAIN + HARD_TRAIN
# cheap: 1 on chit-chat, 0 on maths/code (one soft label each side); premium succeeds (mostly) everywhere
TRAIN_Y = np.array([[1.0, 1.0]] * 11 + [[0.9, 1.0]] + [[0.0, 1.0]] * 11 + [[0.1, 0.8]])
TEST_Q = CHAT_TEST + HARD_TEST


@pytest.fixture(scope="module")
def emb_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("emb_cache"))


def _load_cfg(name: str, emb_cache: str):
    """Compose the real classifier YAML, then shrink it for the fixture (tiny data, no progress bars)."""
    cfg = OmegaConf.load(CONFIGS / "classifier" / f"{name}.yaml")
    for node in (cfg, cfg.get("primary")):
        if node is not None and "embedding" in node:
            node.embedding.cache_dir = emb_cache
            node.embedding.show_progress = False
        if node is not None and "show_progress" in node:
            node.show_progress = False
    if name == "tfidf_logreg":
        cfg.tfidf.min_df, cfg.C = 1, 20.0  # 24 training queries: little vocabulary overlap, weaker L2
    if name == "mf":
        cfg.epochs, cfg.lr = 150, 1e-2  # 24 queries = one batch per epoch: more, larger steps
    if name == "knn_intents":
        cfg.intents = None  # the data alone here; intents have their own tests
    for node in (cfg, cfg.get("primary")):
        if node is not None and "k" in node:
            node.k = 5  # 12 queries per group: k must stay well below that
    return cfg


ALL_CONFIGS = ["knn", "knn_routerbench", "knn_intents", "mlp", "mf", "tfidf_logreg", "rules", "knn_fallback_rules"]


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_fit_predict_separates_and_round_trips(name, emb_cache, tmp_path):
    clf = instantiate(_load_cfg(name, emb_cache)).fit(TRAIN_Q, TRAIN_Y, MODELS)
    P = clf.predict_proba(TEST_Q)
    assert P.shape == (len(TEST_Q), len(MODELS))
    assert np.isfinite(P).all() and (P >= 0).all() and (P <= 1).all()
    cheap_chat, cheap_hard = P[: len(CHAT_TEST), 0], P[len(CHAT_TEST) :, 0]
    # every chit-chat query ranks above every maths/code query on the cheap model (AUC = 1) with a margin
    assert cheap_chat.min() > cheap_hard.max(), (name, P.round(3))
    assert cheap_chat.mean() - cheap_hard.mean() > 0.25, (name, P.round(3))
    # the premium model is predicted to succeed more often than the cheap one on the hard queries
    assert P[len(CHAT_TEST) :, 1].mean() > cheap_hard.mean()
    # a single string is a batch of one
    np.testing.assert_allclose(clf.predict_proba(TEST_Q[0]), P[:1], rtol=1e-5, atol=1e-6)

    out = clf.save_pretrained(tmp_path / name)
    again = load_classifier(out)
    assert type(again) is type(clf) and again.model_names_ == MODELS
    np.testing.assert_array_equal(again.predict_proba(TEST_Q), P)


def test_rule_router_predicts_without_training_data():
    r = RuleRouter(rules=CONFIGS / "rules" / "default.yaml", model_names=["s", "m", "l"])
    P = r.predict_proba(["hello!", "prove that $\\sqrt{2}$ is irrational, step by step"])
    assert P.shape == (2, 3)
    assert P[0, 0] > 0.8 and P[1, 0] < 0.2  # small model: chat yes, proof no
    assert P[1, 2] > P[1, 1] > P[1, 0]  # the harder the query, the more tier matters
    assert set(r.explain("prove that $\\sqrt{2}$ is irrational, step by step")) >= {"latex", "step_by_step"}
    with pytest.raises(ValueError, match="model_names"):
        RuleRouter(rules=CONFIGS / "rules" / "default.yaml").predict_proba(["hi"])


def test_rule_features_detect_structure():
    f = text_features([
        "Here:\n```py\nx = 1\n```",
        "see\n\n    a = 1\n    b = 2\n",
        "1. boil water\n2. add pasta\n3. drain",
        "What is $\\frac{1}{2}$ + 3 = ?",
        "One. Two! Three? Four",
    ])
    assert f["code_blocks"].tolist()[:3] == [1, 1, 0]
    assert f["numbered_items"][2] == 3
    assert f["latex"][3] >= 2 and f["arithmetic"][3] == 0  # \frac, $…$; "} + 3" is not digit-op-digit
    assert f["sentences"][4] == 4 and f["words"][4] == 4
    assert f["tokens"][4] == 7  # 4 words + 3 punctuation marks


def test_rule_router_fit_prior_matches_success_rates():
    y = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [1, 0, 1], [0, 1, 1]], dtype=float)
    q = ["hi", "prove the theorem step by step", "```\ncode\n```", "thanks!", "what is 2 + 2 = ?"]
    r = RuleRouter(rules=CONFIGS / "rules" / "default.yaml").fit(q, y, ["s", "m", "l"])
    np.testing.assert_allclose(r.predict_proba(q).mean(0), y.mean(0), atol=1e-6)
    # the rules still order the queries: the chat query stays above the proof for the small model
    P = r.predict_proba(q)
    assert P[0, 0] > P[1, 0]


@pytest.mark.parametrize(
    "rules, match",
    [
        ({"tiers": ["s"], "rules": [{"name": "ok", "when": {"feature": "words", "lt": 3}, "adjust": 1},
                                    {"name": "typo", "when": {"feature": "wrods", "lt": 3}, "adjust": 1}]},
         r"rules\[1\] \('typo'\): field 'when.feature': unknown feature 'wrods'"),
        ({"tiers": ["s"], "rules": [{"name": "rx", "when": {"any": [{"regex": "ok"}, {"regex": "(unclosed"}]},
                                     "adjust": {"s": 1}}]},
         r"rules\[0\] \('rx'\): field 'when.any\[1\].regex': invalid regular expression"),
        ({"tiers": ["s"], "rules": [{"name": "noadj", "when": {"feature": "words", "gt": 1}}]},
         r"rules\[0\] \('noadj'\): field 'adjust': is missing"),
        ({"tiers": ["s"], "rules": [{"name": "cmp", "when": {"feature": "words", "gt": "ten"}, "adjust": 1}]},
         r"rules\[0\] \('cmp'\): field 'when.gt': must be a number"),
        ({"tiers": ["s"], "rules": [{"name": "kw", "when": {"keywords": []}, "adjust": 1}]},
         r"rules\[0\] \('kw'\): field 'when.keywords'"),
        ({"tiers": "small", "rules": []}, r"field 'tiers'"),
    ],
)
def test_rules_errors_name_rule_and_field(rules, match):
    with pytest.raises(RulesConfigError, match=match):
        load_rules(rules)


def test_rules_adjust_key_must_be_tier_or_model(tmp_path):
    spec = {"tiers": ["s", "l"], "rules": [{"name": "a", "when": {"feature": "words", "gt": 0}, "adjust": {"xl": 1}}]}
    with pytest.raises(RulesConfigError, match=r"rules\[0\] \('a'\): field 'adjust': key 'xl'"):
        RuleRouter(rules=spec, model_names=["m1", "m2"])
    # a model name is a valid key, and wins over its tier's value (3 models on 2 tiers: s, s, l)
    spec["rules"][0]["adjust"] = {"s": -1.0, "m1": 2.0}
    P = RuleRouter(rules=spec, model_names=["m1", "m2", "m3"]).predict_proba(["one two"])
    np.testing.assert_allclose(P, 1 / (1 + np.exp(-np.array([[2.0, -1.0, 0.0]]))))
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: [s]\nrules:\n  - name: x\n    when: {feature: words, lt: 2\n")
    with pytest.raises(RulesConfigError, match="not valid YAML"):
        load_rules(bad)


def test_tier_mapping():
    assert model_tiers(9, 3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert model_tiers(2, 3).tolist() == [0, 2]  # cheapest → lowest tier, dearest → highest
    assert model_tiers(1, 3).tolist() == [2]
    assert tier_of_models(["a", "b", "c"], ["s", "m", "l"], {"a": 1, "c": "m"}).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="tier 'xl' of model 'a'"):
        tier_of_models(["a"], ["s"], {"a": "xl"})


def test_intent_targets_and_file_errors(tmp_path):
    tiers, intents = load_intents(CONFIGS / "intents" / "example.yaml")
    t = intent_targets(intents, tiers, ["m0", "m1", "m2", "m3", "m4", "m5"])
    by_name = {it["name"]: row for it, row in zip(intents, t)}
    assert by_name["greeting"].tolist() == [1] * 6
    assert by_name["summarise"].tolist() == [0, 0, 1, 1, 1, 1]
    assert by_name["debugging"].tolist() == [0, 0, 0, 0, 1, 1]
    # a fleet smaller than the tier list still gives every intent a model that succeeds
    assert intent_targets(intents, tiers, ["a", "b"]).max(1).min() == 1
    one = [{"name": "x", "examples": ["e"], "tier": None, "model": "b"}]
    assert intent_targets(one, tiers, ["a", "b", "c"]).tolist() == [[0, 1, 1]]

    bad = tmp_path / "intents.yaml"
    bad.write_text(
        "tiers: [small, large]\nintents:\n  chat: {tier: small, examples: [hi]}\n  code: {tier: huge, examples: [x]}\n"
    )
    with pytest.raises(IntentFileError, match="intent 'code': field 'tier'"):
        load_intents(bad)
    bad.write_text("tiers: [small]\nintents:\n  chat: {tier: small, examples: []}\n")
    with pytest.raises(IntentFileError, match="intent 'chat': field 'examples'"):
        load_intents(bad)


def test_knn_from_intents_needs_no_fit(emb_cache, tmp_path):
    emb = {"cache_dir": emb_cache, "show_progress": False}
    fleet = ["small_m", "medium_m", "large_m"]
    knn = KNNRouter.from_intents(CONFIGS / "intents" / "example.yaml", fleet, k=3, weighting="softmax", embedding=emb)
    qs = ["hello, good morning to you!", "write a python function that merges two sorted lists in O(n)"]
    P = knn.predict_proba(qs)
    assert P.shape == (2, 3)
    assert P[0].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    assert P[1, 0] < 0.2 and P[1, 2] > 0.8
    names, sims = knn.predict_intent(qs)
    assert names == ["greeting", "code_generation"] and (sims > 0.5).all()
    # the shipped config (relative intents path) gives the same router from a fit with no labelled data
    cfg = OmegaConf.load(CONFIGS / "classifier" / "knn_intents.yaml")
    cfg.embedding.cache_dir, cfg.embedding.show_progress = emb_cache, False
    np.testing.assert_allclose(instantiate(cfg).fit([], np.zeros((0, 3)), fleet).predict_proba(qs), P)
    again = load_classifier(knn.save_pretrained(tmp_path / "intents"))
    np.testing.assert_array_equal(again.predict_proba(qs), P)
    assert again.predict_intent(qs)[0] == names


class _TableEmbedder(Embedder):
    """Fixed vectors per text: tests the kNN arithmetic without a model."""

    def __init__(self, table):
        super().__init__(show_progress=False)
        self.table = table

    def encode(self, texts):
        return np.array([self.table[t] for t in ([texts] if isinstance(texts, str) else texts)], np.float32)


def test_knn_weighting_formulas_and_nan_masking():
    a = np.array([1.0, 0.0])
    b = np.array([np.cos(0.5), np.sin(0.5)])  # cos sim 0.8776 with the query
    c = np.array([0.0, 1.0])
    table = {"a": a, "b": b, "c": c, "q": np.array([1.0, 0.0])}
    y = np.array([[1.0, np.nan], [0.0, 1.0], [0.5, 0.0]])
    sims = np.array([1.0, np.cos(0.5), 0.0])

    def fit(**kw):
        return KNNRouter(k=3, embedding=_TableEmbedder(table), **kw).fit(["a", "b", "c"], y, ["m0", "m1"])

    P = fit(weighting="uniform").predict_proba(["q"])[0]
    assert P == pytest.approx([0.5, 0.5])  # m1: mean of the two observed neighbours only
    # the index is pluggable by dotted class path; an unknown alias is a clear error
    P2 = fit(weighting="uniform", index="kronaxis_lab.classifiers.knn_intent.SklearnIndex").predict_proba("q")[0]
    assert P2 == pytest.approx(P)
    with pytest.raises(ValueError, match="index 'annoy' is unknown"):
        fit(index="annoy")
    w = 1 / (1 - sims + 1e-6)
    P = fit(weighting="distance").predict_proba(["q"])[0]
    assert P == pytest.approx([(w @ np.nan_to_num(y[:, 0])) / w.sum(), (w[1:] @ y[1:, 1]) / w[1:].sum()])
    w = np.exp(sims / 0.1)
    P = fit(weighting="softmax", temperature=0.1).predict_proba(["q"])[0]
    assert P == pytest.approx([(w @ y[:, 0]) / w.sum(), (w[1:] @ y[1:, 1]) / w[1:].sum()])
    # k=1: the nearest neighbour has no outcome for m1 → m1 falls back to its training mean
    P = KNNRouter(k=1, embedding=_TableEmbedder(table)).fit(["a", "b", "c"], y, ["m0", "m1"]).predict_proba("q")[0]
    assert P == pytest.approx([1.0, 0.5])
    with pytest.raises(ValueError, match="weighting 'cosine'"):
        fit(weighting="cosine")


def test_exact_and_sklearn_indexes_agree():
    rng = np.random.default_rng(0)
    base, qs = rng.normal(size=(300, 16)), rng.normal(size=(25, 16))
    s1, i1 = ExactIndex(batch_size=7).fit(base).search(qs, 5)
    s2, i2 = SklearnIndex().fit(base).search(qs, 5)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    assert (np.diff(s1, axis=1) <= 1e-7).all()  # most similar first
    s3, i3 = ExactIndex().fit(base[:3]).search(qs, 5)  # k larger than the index: all rows, sorted
    assert i3.shape == (25, 3) and (np.sort(i3, 1) == [0, 1, 2]).all()


def test_tfidf_soft_labels_are_used_exactly():
    q = [f"query number {i} about topic {i % 3}" for i in range(30)]
    y = np.full((30, 1), 0.7)  # every row: 70 % success → the fit must predict ≈ 0.7, not 0 or 1
    P = TfidfLogRegRouter(tfidf={"min_df": 1}, show_progress=False).fit(q, y, ["m"]).predict_proba(q)
    assert P == pytest.approx(np.full((30, 1), 0.7), abs=0.02)
    P = TfidfLogRegRouter(tfidf={"min_df": 1}, soft_labels="threshold", show_progress=False).fit(q, y, ["m"])
    assert P.predict_proba(q) == pytest.approx(np.ones((30, 1)))  # one class after thresholding → constant


def test_fit_input_errors():
    clf = TfidfLogRegRouter(show_progress=False)
    with pytest.raises(ClassifierInputError, match=r"targets\[1, 0\] = 1.5 \(model 'a'\) is outside \[0, 1\]"):
        clf.fit(["x", "y"], [[0.0, 1.0], [1.5, 0.0]], ["a", "b"])
    with pytest.raises(ClassifierInputError, match=r"shape \(2, 3\), expected .* \(2, 2\)"):
        clf.fit(["x", "y"], np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(ClassifierInputError, match="duplicates"):
        clf.fit(["x"], np.zeros((1, 2)), ["a", "a"])


class _Broken(RuleRouter):
    def predict_proba(self, queries):
        raise RuntimeError("encoder down")


class _NaNRows(RuleRouter):
    def predict_proba(self, queries):
        p = super().predict_proba(queries)
        p[1] = np.nan
        return p


def test_fallback_wrapper(tmp_path, caplog):
    rules = CONFIGS / "rules" / "default.yaml"
    fb = RuleRouter(rules=rules, model_names=["cheap", "premium"])
    q = ["hi!", "prove the theorem step by step"]
    expected = fb.predict_proba(q)

    wrapped = FallbackClassifier(primary=_Broken(rules=rules, model_names=MODELS), fallback=fb)
    np.testing.assert_array_equal(wrapped.predict_proba(q), expected)
    assert wrapped.n_fallback_rows_ == 2 and "encoder down" in caplog.text

    # an unfitted primary (no index) is "unavailable": the fallback answers
    unfitted = FallbackClassifier(primary=KNNRouter(), fallback=RuleRouter(rules=rules, model_names=MODELS))
    np.testing.assert_array_equal(unfitted.predict_proba(q), expected)

    # only the rows the primary could not score come from the fallback; columns follow the primary's order
    primary = RuleRouter(rules={"tiers": ["t"], "prior": 3.0, "rules": []}, model_names=MODELS)
    nan_rows = _NaNRows(rules={"tiers": ["t"], "prior": 3.0, "rules": []}, model_names=MODELS)
    swapped = RuleRouter(rules=rules, model_names=["premium", "cheap"])
    P = FallbackClassifier(primary=nan_rows, fallback=swapped).predict_proba(q)
    np.testing.assert_array_equal(P[0], primary.predict_proba(q)[0])
    np.testing.assert_array_equal(P[1], swapped.predict_proba(q)[1, ::-1])

    # fit fits both parts; save/load round-trips; a primary that cannot be loaded leaves the fallback
    clf = FallbackClassifier(primary=TfidfLogRegRouter(tfidf={"min_df": 1}, show_progress=False),
                             fallback=RuleRouter(rules=rules)).fit(TRAIN_Q, TRAIN_Y, MODELS)
    P = clf.predict_proba(TEST_Q)
    out = clf.save_pretrained(tmp_path / "fb")
    np.testing.assert_array_equal(load_classifier(out).predict_proba(TEST_Q), P)
    (out / "primary" / "tfidf_logreg.joblib").unlink()
    degraded = load_classifier(out)
    assert degraded.primary is None
    np.testing.assert_array_equal(degraded.predict_proba(TEST_Q), clf.fallback.predict_proba(TEST_Q))


def test_embedder_cache_hits_and_keys(emb_cache, monkeypatch):
    texts = ["a cached sentence", "another one", "a cached sentence"]
    first = Embedder(cache_dir=emb_cache, show_progress=False).encode(texts)
    assert first.shape == (3, 384) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert (Path(emb_cache) / "embeddings.sqlite").is_file()

    def boom(self, texts):
        raise AssertionError(f"cache miss for {texts}")

    monkeypatch.setattr(Embedder, "_encode_uncached", boom)
    np.testing.assert_array_equal(Embedder(cache_dir=emb_cache, show_progress=False).encode(texts), first)
    # another encode option is another cache key: it must not read the normalised vectors
    with pytest.raises(AssertionError, match="cache miss"):
        Embedder(cache_dir=emb_cache, normalize=False, show_progress=False).encode(texts)
