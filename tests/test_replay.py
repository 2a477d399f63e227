"""Policies, routers and the replay engine on tiny hand-checked tables; the replay pipeline end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.tables import Matrices, RoutingDataset
from kronaxis_lab.routing.costs import CostModel, CostModelError
from kronaxis_lab.routing.policies import StrongWinThreshold, Threshold, WillingnessToPay
from kronaxis_lab.routing.replay import paired_bootstrap, replay, replay_matrices
from kronaxis_lab.routing.routers import (
    AlwaysRouter,
    OracleRouter,
    PolicyRouter,
    Predictor,
    PriorPredictor,
    RandomRouter,
    ReplayContext,
)
from tests.conftest import FIXTURES, ROOT, compose

FLEET = Fleet.from_config({"models": {"weak": {"tier": 0, "price_in": 1, "price_out": 1},
                                      "strong": {"tier": 1, "price_in": 10, "price_out": 10}}})


def tiny_dataset() -> RoutingDataset:
    """4 test queries: weak right on q0,q1; strong right on q0,q1,q2; nobody on q3. Costs: weak $1, strong $10."""
    qs = [f"q{i}" for i in range(4)] + [f"t{i}" for i in range(4)]
    queries = pd.DataFrame({"query_id": qs, "text": [f"question {q}" for q in qs],
                            "task": ["a", "a", "b", "b"] * 2, "split": ["test"] * 4 + ["train"] * 4})
    weak = [1, 1, 0, 0, 1, 1, 0, 0]
    strong = [1, 1, 1, 0, 1, 1, 1, 1]
    rows = []
    for q, w, s in zip(qs, weak, strong):
        rows.append({"query_id": q, "model": "weak", "score": float(w), "correct": bool(w), "cost_usd": 1.0, "input_tokens": 1, "output_tokens": 1})
        rows.append({"query_id": q, "model": "strong", "score": float(s), "correct": bool(s), "cost_usd": 10.0, "input_tokens": 1, "output_tokens": 1})
    return RoutingDataset(queries, pd.DataFrame(rows), FLEET, name="tiny")


class Fixed(Predictor):
    def __init__(self, P):
        self.P = np.asarray(P, float)

    def predict(self, ctx, mats=None):
        return self.P


def test_policies_by_hand():
    P = np.array([[0.9, 0.95], [0.2, 0.9], [0.1, 0.2]])
    cost = np.array([[1.0, 10.0]] * 3)
    # λ=0 → cheapest; λ=100: utilities q0 (89, 85)→weak, q1 (19, 80)→strong, q2 (9, 10)→strong; λ=inf → max P
    np.testing.assert_array_equal(WillingnessToPay().choose(P, cost, [0, 100, np.inf]), [[0, 0, 0], [0, 1, 1], [1, 1, 1]])
    # τ=0.5: q0 weak (0.9≥.5), q1 strong, q2 none → argmax P = strong
    np.testing.assert_array_equal(Threshold().choose(P, cost, [0.5]), [[0, 1, 1]])
    # strong-win score = P1 − P0 = (0.05, 0.7, 0.1); τ=0.08 → strong on q1, q2
    np.testing.assert_array_equal(StrongWinThreshold().choose(P, cost, [0.08]), [[0, 1, 1]])
    params, ch = StrongWinThreshold(num=5).sweep(P, cost)
    shares = (ch == 1).mean(axis=1)
    assert shares[0] == 0 and shares[-1] == 1 and np.all(np.diff(shares) >= 0)


def test_wtp_sweep_is_memory_bounded_and_matches_bruteforce():
    rng = np.random.default_rng(0)
    P, cost = rng.random((5000, 7)), rng.random((5000, 7))
    lams = np.array([0.0, 0.3, 2.0, 50.0])
    expect = np.stack([(l * P - cost).argmax(axis=1) for l in lams])
    np.testing.assert_array_equal(WillingnessToPay().choose(P, cost, lams), expect)


def test_replay_golden_tiny():
    ds = tiny_dataset()
    res = replay(ds, [OracleRouter(), AlwaysRouter(), RandomRouter(num=3, seed=0),
                      PolicyRouter(Fixed([[0.9, 0.9], [0.9, 0.9], [0.1, 0.9], [0.1, 0.2]]), StrongWinThreshold(), "fixed")])
    r = res.routers
    # oracle: q0,q1 → weak ($1 each), q2 → strong ($10), q3 → nobody right → cheapest ($1): cost 13, 3 correct
    assert r["oracle"]["cost_usd"] == 13 and r["oracle"]["accuracy"] == 0.75
    assert r["oracle"]["cpao"] == pytest.approx(13 / 3)
    assert r["always:strong"]["cost_usd"] == 40 and r["always:strong"]["accuracy"] == 0.75
    assert r["always:weak"]["savings_vs_premium"] == pytest.approx(1 - 4 / 40)
    assert r["always:strong"]["premium_share"] == 1.0
    # 2 models → APGR/CPT defined for sweeps; the fixed-prediction router sends q2,q3 to strong first
    fx = r["fixed"]
    assert fx["kind"] == "sweep" and fx["apgr"] is not None
    # operating point: cheapest reaching 95 % of premium accuracy (0.7125) → q2 to strong: $13, acc 0.75
    assert fx["cost_usd"] == 13 and fx["accuracy"] == 0.75
    assert fx["oracle_gap"] == 0.0
    assert fx["curve"][0] == [4.0, 0.5] and fx["curve"][-1] == [40.0, 0.75]
    # CPT(50%): PGR = (acc − 0.5)/(0.75 − 0.5); reaching 0.625 needs half of q2's step → share 0.25·0.5+... (≤ 0.5)
    assert 0 < fx["cpt50"] <= 0.5
    assert set(r) >= {"oracle", "random", "always:weak", "always:strong"}
    # the oracle's budget curve dominates every router's hull
    assert r["oracle"]["aiq"] >= max(v["aiq"] for v in r.values()) and r["oracle"]["kind"] == "sweep"


def test_prior_predictor_uses_train_only():
    ds = tiny_dataset()
    test = ds.matrices("test")
    ctx = ReplayContext(test=test, fleet=FLEET, train=ds.matrices("train"))
    P = PriorPredictor(by="task", smoothing=0).predict(ctx)
    # train task a: weak 2/2, strong 2/2; task b: weak 0/2, strong 2/2
    np.testing.assert_allclose(P, [[1, 1], [1, 1], [0, 1], [0, 1]])


def test_replay_pipeline_run_on_routerbench_fixture(tmp_path):
    from kronaxis_lab.pipelines.replay import run

    cfg = compose("replay", ["dataset=routerbench", f"dataset.path={FIXTURES / 'routerbench'}"], tmp_path)
    out = run(cfg)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert {"oracle", "random", "always:gpt-4-1106-preview", "always:mistral-7b-chat"} <= set(m["routers"])
    for r in m["routers"].values():
        assert r["n_queries"] == 4 and isinstance(r["curve"], list) and len(r["curve"][0]) == 2
    assert (tmp_path / "report.md").read_text().startswith("# Replay report")
    for png in ("cost_quality.png", "per_category.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["paths"]["metrics"].endswith("metrics.json")


@pytest.mark.slow
def test_replay_console_script_contract(tmp_path):
    """`kronaxis-replay dataset=routerbench dataset.path=<dir> hydra.run.dir=<out>` as external scripts call it."""
    exe = os.path.join(os.path.dirname(sys.executable), "kronaxis-replay")
    cmd = [exe, "dataset=routerbench", f"dataset.path={FIXTURES / 'routerbench'}", f"hydra.run.dir={tmp_path / 'out'}"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((tmp_path / "out/metrics.json").read_text())
    assert "oracle" in m["routers"] and "random" in m["routers"]
    assert m["routers"]["oracle"]["accuracy"] >= max(r["accuracy"] for r in m["routers"].values())


def test_replay_errors_are_clear(tmp_path):
    from kronaxis_lab.pipelines.replay import run

    cfg = compose("replay", ["dataset=routerbench", f"dataset.path={tmp_path / 'missing'}"], tmp_path)
    with pytest.raises(Exception, match="missing does not exist"):
        run(cfg)


@pytest.mark.slow
def test_replay_real_llmrouter(shared_data, tmp_path):
    from kronaxis_lab.pipelines.replay import run

    cfg = compose("replay", ["dataset=llmrouter", f"paths.data_mirror={shared_data}", f"paths.data_dir={tmp_path / 'd'}"], tmp_path)
    m = run(cfg)["metrics"]
    best_single = max(v["accuracy"] for k, v in m.items() if k.startswith("always:"))
    assert m["oracle"]["accuracy"] > best_single
    assert m["task-prior+wtp (uses task label)"]["aiq"] > m["random"]["aiq"]


def test_wtp_small_batch_fast_path_matches_envelope():
    from kronaxis_lab.routing.policies import _envelope_choices

    rng = np.random.default_rng(1)
    P, cost = rng.random((300, 5)), rng.random((300, 5))
    lams = np.array([0.0, 0.1, 1.0, 10.0, np.inf])
    direct = WillingnessToPay().choose(P[:8], cost[:8], lams)  # 40 cells → fast path
    np.testing.assert_array_equal(direct, _envelope_choices(P[:8], cost[:8], lams))
    np.testing.assert_array_equal(WillingnessToPay().choose(P, cost, lams), _envelope_choices(P, cost, lams))


def test_paired_bootstrap_separates_a_better_router_and_not_a_copy():
    """Router 'good' sees the strong-win signal, 'noise' does not, 'copy' is 'good' again: good − noise has a
    CI above 0 on AIQ and savings; good − copy is exactly 0 on every resample."""
    rng = np.random.default_rng(0)
    n = 3000
    need_strong = rng.random(n) < 0.3
    weak_ok = (~need_strong) & (rng.random(n) < 0.95)
    strong_ok = rng.random(n) < 0.95
    scores = np.stack([weak_ok, strong_ok], axis=1).astype(float)
    test = Matrices(queries=pd.DataFrame({"query_id": [str(i) for i in range(n)], "task": "t", "text": "x"}),
                    model_names=["weak", "strong"], scores=scores, correct=scores.astype(bool),
                    costs=np.tile([1.0, 10.0], (n, 1)), input_tokens=np.ones((n, 2)), output_tokens=np.ones((n, 2)))
    good = np.stack([np.full(n, 0.5), 0.5 + 0.4 * need_strong + 0.05 * rng.random(n)], axis=1)
    noise = np.stack([np.full(n, 0.5), 0.5 + 0.4 * rng.random(n)], axis=1)
    routers = [OracleRouter(), AlwaysRouter(), PolicyRouter(Fixed(good), StrongWinThreshold(), "good"),
               PolicyRouter(Fixed(noise), StrongWinThreshold(), "noise"), PolicyRouter(Fixed(good), StrongWinThreshold(), "copy")]
    res = replay_matrices(test, FLEET, routers, train=test)  # synthetic: priced from the same (constant) table
    bs = paired_bootstrap(res, "good", ["noise", "copy"], n_boot=200, seed=1)
    same = bs["copy"]
    bs = bs["noise"]
    assert bs["aiq"]["diff"] == pytest.approx(res.routers["good"]["aiq"] - res.routers["noise"]["aiq"])
    assert 0 < bs["aiq"]["lo"] <= bs["aiq"]["diff"] <= bs["aiq"]["hi"] and bs["aiq"]["p_a_better"] == 1.0
    assert bs["savings_at_95pct_premium"]["lo"] > 0.2 and bs["savings_at_95pct_premium"]["n"] == 200
    assert same["aiq"] == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "p_a_better": 0.0, "n": 200}
    with pytest.raises(KeyError, match="no router 'nope'"):
        paired_bootstrap(res, "good", ["nope"])


def test_cost_model_is_fitted_on_train_only_and_reads_no_task():
    """One decision-time cost model: n_i·s_j·p_in + ō_j·p_out, with ō from train (no per-task table, no test
    outcomes); a dataset without a train split cannot be priced."""
    ds = tiny_dataset()
    train, test = ds.matrices("train"), ds.matrices("test")
    cm = CostModel.fit(train, FLEET)
    # the expected cost does not change when the replayed split's recorded outputs or tasks change
    ctx = ReplayContext(test=test, fleet=FLEET, train=train)
    before = ctx.expected_cost.copy()
    test.output_tokens[:] = 1e6
    test.queries["task"] = "zzz"
    np.testing.assert_allclose(ReplayContext(test=test, fleet=FLEET, train=train).expected_cost, before)
    # n_i = mean recorded input tokens without a counter; s_j maps it back to model j's count
    n_i = test.input_tokens.mean(axis=1)
    s_j = train.input_tokens.sum(axis=0) / train.input_tokens.mean(axis=1).sum()
    p_in, p_out = FLEET.prices()
    np.testing.assert_allclose(before, n_i[:, None] * s_j * p_in + train.output_tokens.mean(axis=0) * p_out)
    np.testing.assert_allclose(cm.expected(n_i), before)
    with pytest.raises(CostModelError, match="train split"):
        CostModel.fit(Matrices(queries=test.queries.iloc[:0], model_names=test.model_names,
                                     scores=test.scores[:0], correct=test.correct[:0], costs=test.costs[:0],
                                     input_tokens=test.input_tokens[:0], output_tokens=test.output_tokens[:0]), FLEET)
    assert CostModel.from_dict(cm.to_dict()) == cm


class CountChars:
    name = "chars"

    def count(self, texts):
        return np.array([len(t) for t in texts])


def test_replay_prices_with_the_token_counter_it_is_given():
    ds = tiny_dataset()
    res = replay(ds, [AlwaysRouter()], token_counter=CountChars())
    cm = res.ctx.cost_model
    assert cm.tokenizer == "chars"
    texts = res.ctx.test.queries["text"].tolist()
    np.testing.assert_allclose(res.ctx.expected_cost, cm.expected([len(t) for t in texts]))


def test_output_tokens_are_predicted_from_the_text_and_survive_json():
    """Where output lengths depend on the prompt (proofs are long, yes/no questions short), the cost model
    predicts them from the text, beats the per-model mean on held-out queries, and round-trips through JSON."""
    rng = np.random.default_rng(0)
    n = 400
    long = rng.random(n) < 0.5
    texts = [("prove that the sequence converges " if x else "is it raining today ") + str(i) for i, x in enumerate(long)]
    out = np.stack([np.where(long, 200, 2), np.where(long, 400, 3)], axis=1).astype(float)
    q = pd.DataFrame({"query_id": [str(i) for i in range(n)], "text": texts, "task": "t"})
    mats = Matrices(queries=q, model_names=["weak", "strong"], scores=np.ones((n, 2)), correct=np.ones((n, 2), bool),
                    costs=np.ones((n, 2)), input_tokens=np.full((n, 2), 8.0), output_tokens=out)
    train = Matrices(queries=q.iloc[:300].reset_index(drop=True), model_names=mats.model_names,
                     scores=mats.scores[:300], correct=mats.correct[:300], costs=mats.costs[:300],
                     input_tokens=mats.input_tokens[:300], output_tokens=out[:300])
    val = Matrices(queries=q.iloc[300:].reset_index(drop=True), model_names=mats.model_names,
                   scores=mats.scores[300:], correct=mats.correct[300:], costs=mats.costs[300:],
                   input_tokens=mats.input_tokens[300:], output_tokens=out[300:])
    cm = CostModel.fit(train, FLEET, val=val)
    err = cm.output_model.error
    assert all(e < 0.2 * b for e, b in zip(err["mae_tokens"], err["mae_tokens_mean_baseline"]))
    pred = cm.output_tokens(np.full(val.n, 8.0), val.queries["text"].tolist())
    np.testing.assert_allclose(pred, out[300:], rtol=0.2)
    again = CostModel.from_dict(json.loads(json.dumps(cm.to_dict())))
    np.testing.assert_allclose(again.expected(np.full(3, 8.0), texts=texts[:3]), cm.expected(np.full(3, 8.0), texts=texts[:3]))
    # without a text the model's train mean is used
    np.testing.assert_allclose(cm.output_tokens(np.full(2, 8.0)), np.broadcast_to(out[:300].mean(axis=0), (2, 2)))
