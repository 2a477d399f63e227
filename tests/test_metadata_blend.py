"""Text + metadata: the blend weight is chosen on val and follows whichever input carries the signal."""

import json
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.tables import Matrices, RoutingDataset
from kronaxis_lab.routing.routers import MetadataBlendPredictor, Predictor, ReplayContext
from tests.conftest import compose, in_memory_dataset

FLEET = Fleet.from_config({"models": {"weak": {"tier": 0, "price_in": 1, "price_out": 1},
                                      "strong": {"tier": 1, "price_in": 10, "price_out": 10}}})


class Rows(Predictor):
    """A text predictor whose P̂ is a per-query column of the queries table (so any split can be predicted)."""

    def predict(self, ctx, mats=None):
        mats = ctx.test if mats is None else mats
        p = mats.queries["p_text"].to_numpy(float)
        return np.stack([p, np.full(len(p), 0.9)], axis=1)


def split(n, seed, text_informative):
    rng = np.random.default_rng(seed)
    task = rng.choice(["easy", "hard"], n)
    weak = np.where(task == "easy", rng.random(n) < 0.9, rng.random(n) < 0.1)
    if text_informative:
        weak = rng.random(n) < 0.5
        p_text = np.where(weak, 0.95, 0.05)
    else:
        p_text = np.full(n, 0.5)
    q = pd.DataFrame({"query_id": [f"{seed}-{i}" for i in range(n)], "text": "x", "task": task, "p_text": p_text})
    s = np.stack([weak, rng.random(n) < 0.9], axis=1).astype(float)
    return Matrices(queries=q, model_names=FLEET.names, scores=s, correct=s.astype(bool), costs=np.ones_like(s),
                    input_tokens=np.ones_like(s), output_tokens=np.ones_like(s))


@pytest.mark.parametrize("text_informative, expect", [(False, 0.0), (True, 1.0)])
def test_weight_follows_the_informative_input(text_informative, expect):
    tr, va, te = (split(600, s, text_informative) for s in (0, 1, 2))
    ctx = ReplayContext(test=te, fleet=FLEET, train=tr, val=va)
    blend = MetadataBlendPredictor(Rows(), by="task", smoothing=0)
    P = blend.predict(ctx)
    assert blend.weight == pytest.approx(expect, abs=0.11)
    assert P.shape == te.scores.shape and np.all((P > 0) & (P < 1))


def test_blend_needs_a_val_split():
    tr = split(50, 0, False)
    with pytest.raises(ValueError, match="no val split"):
        MetadataBlendPredictor(Rows()).predict(ReplayContext(test=tr, fleet=FLEET, train=tr))


def save_tagged(path, n: int = 400):
    """Text says nothing about difficulty (random words); the `task` tag does: `hard` fails on `weak` 90 %."""
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    rows, outs = [], []
    for i in range(n):
        task = ("hard", "easy")[i % 2]
        rows.append({"query_id": f"q{i}", "text": " ".join(rng.choice(words, 4)) + f" {i}", "task": task})
        outs += [{"query_id": f"q{i}", "model": "weak", "score": float(rng.random() < (0.1 if task == "hard" else 0.95)),
                  "input_tokens": 10, "output_tokens": 10},
                 {"query_id": f"q{i}", "model": "strong", "score": float(rng.random() < 0.95), "input_tokens": 10,
                  "output_tokens": 10}]
    fleet = {"models": {"weak": {"tier": 0, "price_in": 1, "price_out": 1, "data_classes": ["*"]},
                        "strong": {"tier": 1, "price_in": 20, "price_out": 20, "data_classes": ["*"]}}}
    q, o = pd.DataFrame(rows), pd.DataFrame(outs)

    return in_memory_dataset(q, o, fleet, "tagged").save(path)


def test_compare_shows_text_and_text_plus_metadata_rows_separately(tmp_path):
    """kronaxis-compare with metadata={by:task} adds a "text + metadata" row per classifier beside its text-only
    row; the tagged row routes better, and it never wins (production traffic may lack the tag)."""
    from kronaxis_lab.pipelines.compare import run as compare_run

    save_tagged(tmp_path / "ds")
    over = ["datasets=[saved]", f"overrides=['dataset.path={tmp_path / 'ds'}']", "classifiers=[tfidf_logreg]",
            "bootstrap.n=0", "metadata={by:task}"]
    (r,) = compare_run(compose("compare", over, tmp_path))["results"]
    by_kind = {row["kind"]: row for row in r["rows"] if row["kind"] in ("classifier", "metadata")}
    text, meta = by_kind["classifier"], by_kind["metadata"]
    assert text["inputs"] == "text" and meta["inputs"] == "text + metadata"
    assert meta["router"].startswith("tfidf_logreg + metadata:task (")
    assert meta["aiq"] > text["aiq"] + 0.05  # the tag carries what the text lacks
    assert r["winner"]["label"] == "tfidf_logreg" and r["winner"]["entry"] == text["entry"]
    test = json.loads((tmp_path / "saved/replay/metrics.json").read_text())["routers"]
    assert test[meta["entry"]]["identity"]["metadata"] == "task" and test[meta["entry"]]["family"] == "metadata"


@pytest.mark.slow
def test_tagged_bundle_serves_what_its_replay_measured(tmp_path):
    """kronaxis-export metadata={by:task}: the bundle blends a request's tag; over real HTTP, /v1/route decisions
    for requests tagged by OpenAI `metadata` (single and batched) or the x-kronaxis-tag header equal the bundle
    replay's (which reads the queries' task column as the tag); untagged requests route on text alone."""
    from kronaxis_lab.export.bundle import load_bundle
    from kronaxis_lab.export.replay import bundle_router_names, replay_bundle
    from kronaxis_lab.pipelines.export import run as export_run
    from kronaxis_lab.pipelines.train import run as train_run
    from kronaxis_lab.serving.app import create_app
    from tests.test_serve_replay_parity import ServerThread

    ds_dir = save_tagged(tmp_path / "ds")
    train_run(compose("train", ["dataset=saved", f"dataset.path={ds_dir}", "classifier=tfidf_logreg"], tmp_path / "tr"))
    exp = ["parity.n=64", "metrics.n_boot=200"]
    tagged = Path(export_run(compose("export", [f"run_dir={tmp_path / 'tr'}", *exp, "metadata={by:task}"],
                                     tmp_path / "ex"))["bundle_dir"])
    plain = Path(export_run(compose("export", [f"run_dir={tmp_path / 'tr'}", *exp], tmp_path / "ex0"))["bundle_dir"])
    meta = json.loads((tagged / "router.json").read_text())["metadata"]
    assert meta["by"] == meta["field"] == "task" and set(meta["tags"]) == {"easy", "hard"} and meta["weight"] < 0.5
    m, m0 = (json.loads((d / "metrics.json").read_text()) for d in (tagged, plain))
    fixed, fixed0 = m["replay"]["routers"][m["bundle_router"]], m0["replay"]["routers"][m0["bundle_router"]]
    assert fixed["cost_usd"] < 0.8 * fixed0["cost_usd"] or fixed["accuracy"] > fixed0["accuracy"] + 0.05

    b = load_bundle(tagged)
    ds = RoutingDataset.load(ds_dir)
    test = ds.matrices("test")
    texts, tags = test.queries["text"].tolist(), test.queries["task"].tolist()
    res = replay_bundle(b, ds)
    _, fixed_name = bundle_router_names(b)
    P = b.metadata.apply(b.predict_proba(texts), tags)
    want = [b.model_names[j] for j in b.decide(P, texts)]
    assert res.routers[fixed_name]["accuracy"] == pytest.approx(test.scores[np.arange(test.n),
                                                                             [b.model_names.index(w) for w in want]].mean())
    untagged = [b.model_names[j] for j in b.decide(b.predict_proba(texts), texts)]
    app = create_app(b, settings={"batching": {"max_batch": 8, "max_wait_ms": 5.0}}, host="127.0.0.1", environ={})
    msgs = [[{"role": "user", "content": t}] for t in texts]
    half = len(texts) // 2
    with ServerThread(app) as srv:
        r = httpx.post(srv.url + "/v1/route", timeout=120, json={"requests": [
            {"messages": mm, "metadata": {"task": tg}} for mm, tg in zip(msgs[:half], tags[:half])]})
        got = [x["model"] for x in r.json()["results"]]
        got += [httpx.post(srv.url + "/v1/route", headers={"x-kronaxis-tag": tg}, json={"messages": mm}).json()["model"]
                for mm, tg in zip(msgs[half:], tags[half:])]
        plain_got = [httpx.post(srv.url + "/v1/route", json={"messages": mm}).json()["model"] for mm in msgs[:20]]
    assert got == want  # tagged: the replay's decisions, 100 %
    assert plain_got == untagged[:20]  # untagged: the text-only decision
    assert want != untagged  # and the tag changed some of them
