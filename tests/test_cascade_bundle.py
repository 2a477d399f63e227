"""Cascades leave the lab: `kronaxis-export ... cascade=<signal>` bundles the cascade (no pickle), the bundle
replay runs it, and over real HTTP the served router makes the replay's decisions and returns the recorded reply
of the model the replay charged.

The dataset is arithmetic word problems with recorded replies: the cheap model answers in the marked form
(`#### n`) and rightly on the easy half, hedges without a marked answer ("probably around n") on most hard
ones, and sometimes marks a wrong number; the premium model always marks the right one. The upstreams are
`kronaxis_lab.backends.openai_server` apps over the `ReplayBackend` (the recorded table, keyed by `user` =
query_id) under uvicorn, the client the official `openai` SDK.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import openai
import pandas as pd
import pytest

from kronaxis_lab.backends.openai_server import create_app as upstream_app
from kronaxis_lab.backends.replay import ReplayBackend
from kronaxis_lab.export.bundle import BundleError, load_bundle
from kronaxis_lab.export.replay import bundle_router_names, replay_bundle
from kronaxis_lab.export.schema import ExportError
from kronaxis_lab.serving.app import create_app, sse_from_completion
from kronaxis_lab.serving.settings import ServeSettings
from kronaxis_lab.serving.upstreams import Upstreams
from tests.conftest import compose, in_memory_dataset
from tests.test_serve_replay_parity import ServerThread

CHEAP_EXPORT = ["parity.n=64", "metrics.n_boot=200"]
FLEET = {"models": {"weak": {"tier": 0, "price_in": 1, "price_out": 2, "data_classes": ["*"]},
                    "strong": {"tier": 1, "price_in": 20, "price_out": 40, "data_classes": ["*"]}}}


def word_problems(n: int = 360, seed: int = 0):
    """Three templates: `sum` (the cheap model marks the right answer), `returns` (it fails 90 %: hedges
    without a marked answer, or marks a wrong number) and `share` (a coin toss the text cannot predict; it
    hedges when wrong). A pre-router can learn `returns` from the text; only the reply tells `share` apart."""
    rng = np.random.default_rng(seed)
    things = ["apples", "eggs", "books", "coins", "pens", "cats", "boats", "cups"]
    rows, outs = [], []
    for i in range(n):
        a, b = int(rng.integers(2, 50)), int(rng.integers(2, 50))
        kind = ("sum", "returns", "share")[i % 3]
        thing = rng.choice(things)
        if kind == "sum":
            text, right, p_ok = f"Tom has {a} {thing} and gets {b} more. How many now? (case {i})", a + b, 1.0
        elif kind == "returns":
            text, right, p_ok = (f"A shop sells {a} boxes of {b} {thing}, then a third come back. How many are "
                                 f"left? (case {i})", (a * b) * 2 // 3, 0.1)
        else:
            text, right, p_ok = f"Ann and Bo share {a} {thing} and {b} more. How many each? (case {i})", a + b, 0.5
        wrong = right + int(rng.integers(1, 9))
        if rng.random() < p_ok:
            weak, ok = f"{a} and {b} give {right}.\n#### {right}", 1.0
        elif kind == "share" or rng.random() < 0.75:
            weak, ok = f"It is probably around {wrong} or so.", 0.0
        else:
            weak, ok = f"#### {wrong}", 0.0
        rows.append({"query_id": f"q{i}", "text": text, "task": kind})
        outs += [{"query_id": f"q{i}", "model": "weak", "score": ok, "response": weak, "input_tokens": 40,
                  "output_tokens": 20},
                 {"query_id": f"q{i}", "model": "strong", "score": 1.0, "response": f"Worked out.\n#### {right}",
                  "input_tokens": 40, "output_tokens": 40}]
    q, o = pd.DataFrame(rows), pd.DataFrame(outs)

    return in_memory_dataset(q, o, FLEET, "word_problems")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cascade_bundle")


@pytest.fixture(scope="module")
def dataset(work):
    ds = word_problems()
    ds.save(work / "ds")
    return ds


@pytest.fixture(scope="module")
def run_dir(work, dataset) -> Path:
    from kronaxis_lab.pipelines.train import run as train_run

    out = work / "train"
    train_run(compose("train", ["dataset=saved", f"dataset.path={work / 'ds'}", "classifier=tfidf_logreg"], out))
    return out


def export(run_dir: Path, out: Path, *overrides: str) -> Path:
    from kronaxis_lab.pipelines.export import run as export_run

    return Path(export_run(compose("export", [f"run_dir={run_dir}", *CHEAP_EXPORT, *overrides], out))["bundle_dir"])


@pytest.fixture(scope="module")
def format_bundle(work, run_dir) -> Path:
    return export(run_dir, work / "exp_format", "cascade=format")


@pytest.fixture(scope="module")
def hybrid_bundle(work, run_dir) -> Path:
    return export(run_dir, work / "exp_hybrid", "cascade=verifier", "cascade.pre_route=true", "cascade.Cs=[1.0]",
                  "cascade.tfidf.min_df=1")


def test_format_cascade_bundle_replays_what_the_router_json_says(format_bundle, dataset):
    meta = json.loads((format_bundle / "router.json").read_text())
    cas = meta["cascade"]
    assert cas["signal"] == "format" and cas["first"] == "weak" and cas["second"] == "strong"
    assert cas["pre_route"] is False and cas["threshold"] == 0.5 and cas["also_calls"] == []
    m = json.loads((format_bundle / "metrics.json").read_text())
    fixed = m["bundle_router"]
    assert fixed.startswith("bundle:cascade-format:")
    r = m["replay"]["routers"][fixed]
    always = m["replay"]["routers"]
    # escalates the hedged replies: premium accuracy on easy + hedged-hard, cheaper than always-premium
    assert r["accuracy"] > always["always:weak"]["accuracy"] + 0.2
    assert r["cost_usd"] < always["always:strong"]["cost_usd"]
    info = r["cascade"]
    assert 0.2 < info["escalated_share"][0] < 0.6 and info["cascaded_share"] == 1.0
    assert info["calls_per_query"][0] == pytest.approx(1 + info["escalated_share"][0])
    # every escalated query is charged both calls: cost = Σ weak (all) + Σ strong (escalated)
    b = load_bundle(format_bundle)
    test = dataset.matrices("test")
    index = {n: i for i, n in enumerate(b.model_names)}
    keep = b.cascade.keep(test.queries["text"].tolist(), test.responses[:, index["weak"]])
    expect = test.costs[:, index["weak"]].sum() + test.costs[~keep, index["strong"]].sum()
    assert r["cost_usd"] == pytest.approx(expect)
    assert r["accuracy"] == pytest.approx(np.where(keep, test.scores[:, 0], test.scores[:, 1]).mean())


def _served(bundle_dir: Path, dataset, stream_every: int = 0):
    """(served model per test query, reply text per query, the router's /metrics text)."""
    outcomes = dataset.outcomes
    test = dataset.matrices("test")
    ups = {m: ServerThread(upstream_app(ReplayBackend(model=m, outcomes=outcomes), batch_window_ms=1))
           for m in ("weak", "strong")}
    for u in ups.values():
        u.__enter__()
    try:
        upstreams = Upstreams(models={m: {"endpoints": [{"name": f"ep-{m}", "base_url": f"{u.url}/v1", "model": m}]}
                                      for m, u in ups.items()})
        app = create_app(load_bundle(bundle_dir), upstreams, ServeSettings(), host="127.0.0.1")
        models, texts = [], []
        with ServerThread(app) as srv:
            client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
            for i, (qid, text) in enumerate(zip(test.queries["query_id"], test.queries["text"])):
                msgs = [{"role": "user", "content": text}]
                if stream_every and i % stream_every == 0:
                    with client.chat.completions.with_streaming_response.create(
                            model="kronaxis/auto", messages=msgs, user=str(qid), stream=True) as resp:
                        models.append(resp.headers["x-kronaxis-model"])
                        parts = [c.choices[0].delta.content or "" for c in resp.parse() if c.choices]
                        texts.append("".join(parts))
                    continue
                raw = client.chat.completions.with_raw_response.create(model="kronaxis/auto", messages=msgs,
                                                                       user=str(qid))
                models.append(raw.headers["x-kronaxis-model"])
                texts.append(raw.parse().choices[0].message.content)
            prom = httpx.get(f"{srv.url}/metrics").text
        return models, texts, prom
    finally:
        for u in ups.values():
            u.__exit__(None, None, None)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["format_bundle", "hybrid_bundle"])
def test_served_cascade_equals_the_bundle_replay_over_http(which, request, dataset):
    bundle_dir = request.getfixturevalue(which)
    b = load_bundle(bundle_dir)
    _, fixed = bundle_router_names(b)
    res = replay_bundle(b, dataset)
    test = dataset.matrices("test")
    index = {n: i for i, n in enumerate(b.model_names)}
    pre = b.decide(b.predict_proba(test.queries["text"].tolist()), test.queries["text"].tolist())
    trust = b.cascade.trust_on(test, index)
    replayed, _ = b.cascade.plan(pre, trust, np.array([b.cascade.threshold]), test.costs, index)
    expect = [b.model_names[j] for j in replayed[0]]
    models, texts, prom = _served(bundle_dir, dataset, stream_every=5)
    assert models == expect  # 100 %: the served decisions are the replay's
    resp = test.responses
    assert texts == [resp[i, index[m]] for i, m in enumerate(models)]  # the returned reply is the charged model's
    esc = sum(1 for m, p in zip(models, pre) if m == "strong" and b.model_names[p] == "weak")
    assert esc > 0
    assert f'kronaxis_cascade_total{{outcome="escalated"}} {float(esc)}' in prom
    # the bundle's own metrics.json replayed the same router
    m = json.loads((bundle_dir / "metrics.json").read_text())
    assert m["replay"]["routers"][fixed]["accuracy"] == pytest.approx(res.routers[fixed]["accuracy"])
    assert m["replay"]["routers"][fixed]["accuracy"] == pytest.approx(test.scores[np.arange(test.n), replayed[0]].mean())


def test_hybrid_chooses_lambda_and_tau_on_val(hybrid_bundle):
    meta = json.loads((hybrid_bundle / "router.json").read_text())
    cas = meta["cascade"]
    assert cas["signal"] == "verifier" and cas["pre_route"] is True
    assert meta["policy"]["param_source"] == "cascade" and meta["policy"]["param"] == cas["fit"]["param"]
    # the classifier-only operating point no longer describes the shipped λ: kept aside, not shown as the bundle's
    assert meta["policy"]["operating_point"] is None and meta["policy"]["pre_cascade_operating_point"]["target"]
    card = (hybrid_bundle / "README.md").read_text()
    assert "**Cascade:** the requests the policy sends to it" in card and "escalates to `strong`" in card
    assert cas["fit"]["val_accuracy"] >= cas["fit"]["target_accuracy"] - 1e-9
    assert {"cascade/query_vectorizer.json", "cascade/reply_vectorizer.json", "cascade/verifier.npz"} <= set(meta["sha256"])
    with np.load(hybrid_bundle / "cascade" / "verifier.npz", allow_pickle=False) as z:  # plain arrays, no pickle
        assert z["coef"].dtype == np.float64
    m = json.loads((hybrid_bundle / "metrics.json").read_text())
    routers = m["replay"]["routers"]
    plain = f"bundle:wtp@{load_bundle(hybrid_bundle).param:.4g}"
    assert plain in routers and "bundle+cascade-verifier" in routers  # the pre-route alone and the τ sweep


def test_bad_cascade_nodes_name_the_field(format_bundle, tmp_path):
    def broken(**change) -> Path:
        d = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(format_bundle, d)
        meta = json.loads((d / "router.json").read_text())
        meta["cascade"].update(change)
        (d / "router.json").write_text(json.dumps(meta))
        return d

    for change, field in [({"signal": "vibes"}, "cascade.signal"), ({"first": "gpt-9"}, "cascade.first"),
                          ({"threshold": "high"}, "cascade.threshold"), ({"also_calls": ["weak"]}, "cascade.also_calls")]:
        with pytest.raises(BundleError, match=field.replace(".", r"\.")):
            load_bundle(broken(**change), verify_hashes=False)


def test_export_refuses_a_cascade_without_recorded_replies(run_dir, tmp_path, dataset):
    with pytest.raises(ExportError, match="cascade.signal"):
        export(run_dir, tmp_path / "x", "cascade=format", "cascade.signal=vibes")


def test_sse_from_completion_is_what_a_streaming_client_reads():
    data = {"id": "c1", "created": 1, "model": "weak", "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "#### 4"}, "finish_reason": "stop"}]}
    chunks = sse_from_completion(data, include_usage=True)
    assert chunks[-1] == b"data: [DONE]\n\n"
    parsed = [json.loads(c[6:]) for c in chunks[:-1]]
    assert "".join(p["choices"][0]["delta"].get("content", "") for p in parsed if p["choices"]) == "#### 4"
    assert parsed[1]["choices"][0]["finish_reason"] == "stop" and parsed[-1]["usage"]["completion_tokens"] == 2
