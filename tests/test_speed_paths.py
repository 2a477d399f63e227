"""The serving fast paths give the same numbers as the slow ones: length-sorted, bounded-padding ONNX runs
(`OnnxGraph.plan_runs` / `run`) equal each text run alone; the cached `OutputTokenModel.predict` equals the
hstacked-features formula; `TfidfFeatures` and `OutputTokenModel.hashed` equal sklearn's `transform` bit for
bit; `TfidfLinearRuntime`'s one sparse product equals one mat-vec per model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit
from sklearn.feature_extraction.text import TfidfVectorizer

from kronaxis_lab.classifiers.tfidf import TfidfLogRegRouter
from kronaxis_lab.export.runtimes import OnnxGraph, RuntimeOptions, SentenceEncoder, TfidfFeatures, load_runtime
from kronaxis_lab.routing import ngrams
from kronaxis_lab.routing.costs import CostModel, OutputTokenModel
from tests.conftest import MINILM

WORDS = "the a model route query cost token price what is how many apples train bundle cheap premium".split()


def random_texts(n: int, seed: int = 0, longest: int = 120) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 2, 3, 5, 8, 20, 40, longest])))
            for _ in range(n)]


# -- run planning --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_plan_runs_covers_every_text_once_with_bounded_padding(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.choice([3, 5, 9, 17, 30, 64, 128], size=int(rng.integers(1, 80)))
    runs = OnnxGraph.plan_runs(lengths, batch_size=16)
    flat = np.concatenate(runs)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for idx in runs:
        assert 1 <= len(idx) <= 16
        if len(idx) > 1:
            assert len(idx) * lengths[idx].max() <= OnnxGraph.PAD_SLACK * lengths[idx].sum()
    assert np.all(np.diff(lengths[flat]) >= 0)  # runs in length order


def test_plan_runs_fills_batches_of_equal_lengths():
    runs = OnnxGraph.plan_runs([7] * 40, batch_size=16)
    assert [len(r) for r in runs] == [16, 16, 8]
    assert OnnxGraph.plan_runs([], batch_size=16) == []


# -- a tiny random-init BERT sentence encoder as a bundle node -----------------------------------------------
@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> tuple[Path, dict]:
    pytest.importorskip("onnxruntime")
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from kronaxis_lab.export.formats import export_sentence_encoder
    from kronaxis_lab.local_models import resolve_model

    work = tmp_path_factory.mktemp("speed")
    tok = AutoTokenizer.from_pretrained(resolve_model(MINILM))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(work / "bert")
    tok.save_pretrained(work / "bert")
    st = SentenceTransformer(modules=[models.Transformer(str(work / "bert"), max_seq_length=48),
                                      models.Pooling(32, "mean")], device="cpu")
    node = export_sentence_encoder(st, work / "encoder", normalize=True)
    return work / "encoder", node


def test_batched_runs_equal_each_text_alone(encoder_dir):
    directory, node = encoder_dir
    texts = random_texts(37, seed=1) + [""]  # some longer than max_length (truncated), one empty
    enc = SentenceEncoder(directory, node, RuntimeOptions(batch_size=8), "encoder")
    X, counts = enc.encode(texts, "fp32")
    alone = [enc.encode([t], "fp32") for t in texts]
    np.testing.assert_allclose(X, np.concatenate([a[0] for a in alone]), rtol=0, atol=2e-5)
    np.testing.assert_array_equal(counts, [int(a[1][0]) for a in alone])
    np.testing.assert_array_equal(counts, enc.tokenizer.count(texts))  # the cost model's count
    assert counts.max() > 48  # the truncated texts still count every token

    graph, shapes = enc.graph, []

    def cls_rows(out, feed):  # the first token's hidden state, and the padded shape of each run
        m = feed["attention_mask"]
        shapes.append((m.shape, int(m.sum())))
        return out[:, 0]

    H, _ = graph.run(texts, "fp32", cls_rows, 32)
    H1 = np.concatenate([graph.run([t], "fp32", lambda out, feed: out[:, 0], 32)[0] for t in texts])
    np.testing.assert_allclose(H, H1, rtol=0, atol=2e-5)
    assert sum(s[0] for s, _ in shapes) == len(texts) and len(shapes) > 1
    for (b, width), true in shapes:
        assert b <= 8 and (b == 1 or b * width <= OnnxGraph.PAD_SLACK * true)
    assert graph.run([], "fp32", cls_rows, 32)[0].shape == (0, 32)


def test_pad_reproduces_the_hf_padded_call(encoder_dir):
    from transformers import AutoTokenizer

    directory, node = encoder_dir
    enc = SentenceEncoder(directory, node, RuntimeOptions(), "encoder")
    texts = random_texts(12, seed=2)
    feed, counts = enc.tokenizer.encode_with_counts(texts)
    hf = AutoTokenizer.from_pretrained(directory / "tokenizer")(texts, truncation=True, max_length=48, padding=True,
                                                                return_tensors="np")
    assert set(feed) == set(node["onnx"]["inputs"])
    for k in feed:
        np.testing.assert_array_equal(feed[k], hf[k])
    np.testing.assert_array_equal(counts, enc.tokenizer.count(texts))


# -- the output-token model ----------------------------------------------------------------------------------
def old_predict(om: OutputTokenModel, texts, prompt_tok) -> np.ndarray:
    """The formula before caching: sparse [hashed features | log1p n] @ coef.T on every call."""
    z = OutputTokenModel.features(texts, prompt_tok, om.n_features) @ np.asarray(om.coef, float).T
    y = np.expm1(np.asarray(z) + np.asarray(om.intercept, float)) * np.asarray(om.smearing, float)
    return np.clip(y, 0, np.asarray(om.max_tokens, float))


def test_output_token_model_matches_the_uncached_formula():
    rng = np.random.default_rng(0)
    train = random_texts(300, seed=3)
    tok = rng.integers(1, 400, len(train)).astype(float)
    out = np.exp(rng.normal(4, 1, (len(train), 3))) * (1 + tok[:, None] / 100)
    om = OutputTokenModel.fit(train, tok, out, n_features=512)
    texts = random_texts(80, seed=4) + [""]
    t = rng.integers(0, 600, len(texts)).astype(float)
    ref = old_predict(om, texts, t)
    np.testing.assert_allclose(om.predict(texts, t), ref, rtol=1e-12, atol=1e-12)
    for i in range(0, len(texts), 9):  # one text per call, as the server prices a request
        np.testing.assert_allclose(om.predict(texts[i:i + 1], t[i:i + 1]), ref[i:i + 1], rtol=1e-12, atol=1e-12)
    # the cache is no field: a JSON round trip carries the lists only and rebuilds the same predictions
    cm = CostModel(price_in=[1e-6] * 3, price_out=[2e-6] * 3, input_token_scale=[1.0] * 3,
                   mean_output_tokens=out.mean(0).tolist(), output_model=om)
    doc = json.loads(json.dumps(cm.to_dict()))
    assert set(doc["output_model"]) == {"coef", "intercept", "smearing", "max_tokens", "n_features", "alpha",
                                        "error"}
    np.testing.assert_array_equal(CostModel.from_dict(doc).output_model.predict(texts, t), om.predict(texts, t))


def assert_same_csr(a, b):
    assert type(a) is type(b) and a.shape == b.shape and a.data.dtype == b.data.dtype
    for x, y in ((a.indptr, b.indptr), (a.indices, b.indices), (a.data, b.data)):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


ODD = ["", " ", "ünïcødé ✓ 日本語 Straße", "the the the the", "x " * 500, "A-B c_d e.f 123 4,5"]


@pytest.mark.parametrize("kw", [dict(ngram_range=(1, 2), sublinear_tf=True, min_df=1, strip_accents="unicode"),
                                dict(norm="l1", use_idf=False), dict(norm=None, lowercase=False),
                                dict(binary=True), dict(dtype=np.float32, sublinear_tf=True)])
def test_tfidf_features_equal_sklearn_transform(kw):
    vec = TfidfVectorizer(**kw).fit(random_texts(200, seed=5) + ODD)
    feats = TfidfFeatures(vec)
    texts = random_texts(60, seed=6) + ODD + ["unseen words only"]
    for k in (1, 7, len(texts)):
        for i in range(0, len(texts), k):
            assert_same_csr(feats.transform(texts[i:i + k]), vec.transform(texts[i:i + k]))


def test_output_token_model_hashed_equals_the_hashing_vectorizer():
    om = OutputTokenModel.fit(random_texts(100, seed=7), np.full(100, 10.0), np.ones((100, 2)), n_features=256)
    texts = random_texts(40, seed=8) + ODD
    hv = OutputTokenModel.hashing_vectorizer(256)
    for k in (1, 5, len(texts)):
        for i in range(0, len(texts), k):
            assert_same_csr(om.hashed(texts[i:i + k]), hv.transform(texts[i:i + k]))


def test_tfidf_linear_runtime_equals_one_matvec_per_model(tmp_path):
    rng = np.random.default_rng(1)
    texts = random_texts(120, seed=9)
    y = (rng.random((len(texts), 3)) < 0.5).astype(float)
    y[:, 1] = 1.0  # a model with one class: its constant rate
    node = TfidfLogRegRouter(show_progress=False).fit(texts, y, ["a", "b", "c"]).export_runtime(tmp_path)
    rt = load_runtime(tmp_path, node)
    probe = random_texts(30, seed=10) + ODD
    X = rt.vectorizer.transform(probe)
    ref = np.stack([np.full(len(probe), c) if np.isfinite(c) else expit(X @ rt.coef[j] + rt.intercept[j])
                    for j, c in enumerate(rt.constant)], axis=1)
    got = rt.predict_proba(probe, "fp32")
    assert got.dtype == ref.dtype and got.tobytes() == ref.tobytes()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(st.sampled_from("aZ9 _-.'é日ßİ\u0301\u00a0\u2028\n") | st.characters(), max_size=40),
                min_size=1, max_size=6))
def test_shared_ngrams_equal_each_sklearn_analyzer_in_any_order(docs):
    """The memo is shared by analyzers that strip accents and one that does not: each still gets its own n-grams."""
    vecs = [TfidfVectorizer(ngram_range=(1, 2), strip_accents=s) for s in (None, "unicode", "ascii")]
    pairs = [(ngrams.analyzer_for(v), v.build_analyzer()) for v in vecs]
    for doc in docs + docs[::-1]:
        for ours, theirs in pairs[::-1] + pairs:
            assert ours(doc) == theirs(doc)


def test_ngram_sharing_is_only_for_the_settings_it_reproduces():
    assert ngrams.supports(OutputTokenModel.hashing_vectorizer(16))
    assert ngrams.supports(TfidfVectorizer(ngram_range=(1, 2), strip_accents="unicode"))
    for kw in (dict(), dict(ngram_range=(1, 2), lowercase=False), dict(ngram_range=(1, 2), stop_words="english"),
               dict(ngram_range=(1, 2), token_pattern=r"\w+"), dict(ngram_range=(1, 2), analyzer="char")):
        assert not ngrams.supports(TfidfVectorizer(**kw))
