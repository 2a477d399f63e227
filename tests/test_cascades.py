"""Cascades: answer-format keys, multi-call cost accounting (every call charged), the three signals on
hand-built tables, and a replay of the real RouteLLM GSM8K responses."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from kronaxis_lab import metrics as M
from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.tables import Matrices
from kronaxis_lab.pipelines.replay import run
from kronaxis_lab.routing.cascades import AgreementSignal, CascadeRouter, FormatSignal, VerifierSignal, answer_key
from kronaxis_lab.routing.replay import paired_bootstrap, replay_matrices
from kronaxis_lab.routing.routers import AlwaysRouter, OracleRouter, RandomRouter, ReplayContext
from tests.conftest import compose

FLEET2 = Fleet.from_config({"models": {"weak": {"tier": 0, "price_in": 1, "price_out": 1},
                                       "strong": {"tier": 1, "price_in": 10, "price_out": 10}}})
FLEET3 = Fleet.from_config({"models": {"weak": {"tier": 0, "price_in": 1, "price_out": 1},
                                       "weak2": {"tier": 0, "price_in": 2, "price_out": 2},
                                       "strong": {"tier": 1, "price_in": 10, "price_out": 10}}})


def mats(texts, responses, scores, costs, names):
    n = len(texts)
    q = pd.DataFrame({"query_id": [str(i) for i in range(n)], "text": texts, "task": "t", "category": "c"})
    s = np.asarray(scores, float)
    return Matrices(queries=q, model_names=list(names), scores=s, correct=s.astype(bool), costs=np.asarray(costs, float),
                    input_tokens=np.ones_like(s), output_tokens=np.ones_like(s),
                    responses=None if responses is None else np.asarray(responses, dtype=object))


def split(m, idx):
    idx = np.asarray(idx)
    return Matrices(queries=m.queries.iloc[idx].reset_index(drop=True), model_names=m.model_names, scores=m.scores[idx],
                    correct=m.correct[idx], costs=m.costs[idx], input_tokens=m.input_tokens[idx],
                    output_tokens=m.output_tokens[idx], responses=None if m.responses is None else m.responses[idx])


def test_answer_key_reads_marked_numbers_and_option_letters_only():
    assert answer_key("so 9 * 2 = 18.\n#### 18", "How much?") == "num:18"
    assert answer_key("The answer is $1,234.", "How much?") == "num:1234"
    assert answer_key("She has 9 eggs and sells them for 18", "How much?") is None  # no marked final answer
    mc = "Which is a mammal?\nA) shark\nB) whale\nC) trout\nD) eel"
    assert answer_key("The answer is (B).", mc) == "choice:B"
    assert answer_key("I think A or maybe C", mc) is None  # two letters: no single answer
    assert answer_key(None, "How much?") is None
    assert answer_key("#### 3.50", "q") == answer_key("#### 3.5", "q")
    with pytest.raises(ValueError, match="answer format"):
        answer_key("x", "q", fmt="regex")


def test_format_cascade_charges_the_cheap_call_on_every_escalated_query():
    texts = ["q0", "q1", "q2", "q3"]
    resp = [["#### 4", "#### 4"], ["no idea", "#### 7"], ["#### 2", "#### 3"], ["", "#### 1"]]
    scores = [[1, 1], [0, 1], [0, 1], [0, 0]]
    costs = [[1, 10], [2, 20], [3, 30], [4, 40]]
    t = mats(texts, resp, scores, costs, FLEET2.names)
    res = replay_matrices(t, FLEET2, [CascadeRouter(FormatSignal()), AlwaysRouter()], train=t)
    r = res.routers["cascade:format"]
    # kept: q0, q2 (marked answers); escalated: q1, q3 → premium's cost plus the cheap call already made
    assert r["cost_usd"] == pytest.approx(1 + 3 + (20 + 2) + (40 + 4))
    assert r["accuracy"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert r["premium_share"] == pytest.approx(0.5)
    assert r["cascade"]["calls_per_query"] == [pytest.approx(1.5)]
    assert r["savings_vs_premium"] == pytest.approx(1 - 70 / 100)
    np.testing.assert_array_equal(res.choices["cascade:format"], [0, 1, 0, 1])
    # the per-category table charges the same calls
    assert res.category_table("cascade:format")["cost_vs_premium"].iloc[0] == pytest.approx(70 / 100)


def test_agreement_cascade_always_pays_for_the_second_cheap_model():
    texts = ["q0", "q1", "q2"]
    resp = [["#### 5", "#### 5", "#### 5"], ["#### 5", "#### 6", "#### 6"], ["#### 1", "", "#### 1"]]
    scores = [[1, 1, 1], [0, 1, 1], [1, 0, 1]]
    costs = [[1, 2, 10]] * 3
    t = mats(texts, resp, scores, costs, FLEET3.names)
    res = replay_matrices(t, FLEET3, [CascadeRouter(AgreementSignal())], train=t)
    r = res.routers["cascade:agreement"]
    # q0 agrees (weak + weak2 = 3); q1 disagrees (3 + 10); q2 weak2 has no answer → escalate (3 + 10)
    assert r["cost_usd"] == pytest.approx(3 + 13 + 13)
    assert r["accuracy"] == pytest.approx(1.0)
    assert r["cascade"]["also_calls"] == ["weak2"] and r["cascade"]["calls_per_query"] == [pytest.approx(2 + 2 / 3)]
    # a two-model fleet has no second cheap model: no row, no error
    t2 = mats(texts, [x[::2] for x in resp], [x[::2] for x in scores], [[1, 10]] * 3, FLEET2.names)
    assert "cascade:agreement" not in replay_matrices(t2, FLEET2, [AlwaysRouter(), CascadeRouter(AgreementSignal())], train=t2).routers


def test_cascades_are_not_replayed_without_recorded_responses():
    t = mats(["a", "b"], None, [[1, 1], [0, 1]], [[1, 10]] * 2, FLEET2.names)
    res = replay_matrices(t, FLEET2, [AlwaysRouter(), CascadeRouter(FormatSignal()), CascadeRouter(VerifierSignal())], train=t)
    assert not [k for k in res.routers if k.startswith("cascade")]
    part = mats(["a", "b"], [["#### 1", "#### 1"], [None, "#### 2"]], [[1, 1], [0, 1]], [[1, 10]] * 2, FLEET2.names)
    res = replay_matrices(part, FLEET2, [AlwaysRouter(), CascadeRouter(FormatSignal())], train=part)
    assert "cascade:format" not in res.routers  # one query lacks the cheap model's response


def synthetic(n, seed):
    """Cheap model right ~60 %; its response says 'confident' when right and 'unsure' otherwise, 85 % of the time."""
    rng = np.random.default_rng(seed)
    ok = rng.random(n) < 0.6
    honest = rng.random(n) < 0.85
    word = np.where(ok == honest, "confident", "unsure")
    resp = [[f"I am {w} #### {i}", f"#### {i}"] for i, w in enumerate(word)]
    scores = np.stack([ok, rng.random(n) < 0.95], axis=1).astype(float)
    texts = [f"question {i % 7} about topic {i % 3}" for i in range(n)]
    return mats(texts, resp, scores, np.tile([1.0, 10.0], (n, 1)), FLEET2.names)


def test_verifier_cascade_learns_from_train_responses_and_beats_random_mixing():
    allm = synthetic(1800, 0)
    train, val, test = split(allm, range(0, 1000)), split(allm, range(1000, 1400)), split(allm, range(1400, 1800))
    routers = [OracleRouter(), RandomRouter(), AlwaysRouter(), CascadeRouter(VerifierSignal(Cs=[0.1, 1.0]))]
    res = replay_matrices(test, FLEET2, routers, train=train, val=val)
    r = res.routers["cascade:verifier"]
    assert r["kind"] == "sweep" and r["cascade"]["C"] in (0.1, 1.0) and r["cascade"]["val_log_loss"] < 0.6
    assert r["cascade"]["val_threshold"] is not None
    # the curve's ends: keep everything (one call each) and escalate everything (both calls charged)
    cost = np.array(r["curve"])[:, 0]
    assert cost.min() == pytest.approx(test.costs[:, 0].sum())
    assert cost.max() == pytest.approx(test.costs.sum())
    bs = paired_bootstrap(res, "cascade:verifier", ["random"], n_boot=100)
    assert bs["random"]["aiq"]["lo"] > 0  # the response carries the signal; random mixing has none
    # the bootstrap charges the extra calls on each resample: its full-split AIQ is the replay's
    assert bs["random"]["aiq"]["diff"] == pytest.approx(r["aiq"] - res.routers["random"]["aiq"])


def test_verifier_reads_the_arithmetic_of_the_worked_steps():
    """Replies differ only in whether a written step is right ("3 + 4 = 7" vs "3 + 4 = 9"): TF-IDF drops
    one-character tokens, so only the arithmetic re-check can tell them apart."""
    rng = np.random.default_rng(0)
    n = 400
    a, b = rng.integers(1, 9, n), rng.integers(1, 9, n)
    ok = rng.random(n) < 0.5
    stated = np.where(ok, a + b, a + b + rng.integers(1, 5, n))
    resp = [[f"so {x} + {y} = {z} and #### {z}", f"#### {x + y}"] for x, y, z in zip(a, b, stated)]
    t = mats([f"add {x} and {y} please" for x, y in zip(a, b)], resp, np.stack([ok, np.ones(n)], 1).astype(float),
             np.tile([1.0, 10.0], (n, 1)), FLEET2.names)
    train, test = split(t, range(0, 300)), split(t, range(300, n))
    plain, arith = VerifierSignal(Cs=[1.0]), VerifierSignal(Cs=[1.0], arithmetic=True)
    ctx = ReplayContext(test=test, fleet=FLEET2, train=train, val=train)
    for sig in (plain, arith):
        sig.fit(ctx, 0)
    auc = {name: roc_auc_score(test.correct[:, 0], sig.score(ctx, test, 0)) for name, sig in
           (("plain", plain), ("arith", arith))}
    assert auc["arith"] > 0.99 and auc["plain"] < 0.7


def test_extra_cost_is_checked():
    s = np.ones((2, 2))
    with pytest.raises(ValueError, match="extra_cost has shape"):
        M.choices_metrics_batch(np.zeros((1, 2), int), s, s, s.astype(bool), extra_cost=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="finite and ≥ 0"):
        M.summarize_choice(np.zeros(2, int), s, s, s.astype(bool), 1, extra_cost=np.array([-1.0, 0.0]))
    total, _ = M.choices_metrics_batch(np.zeros((1, 2), int), s, s, s.astype(bool), extra_cost=np.array([[0.5, 0.25]]))
    assert total[0] == pytest.approx(2.75)


@pytest.mark.slow
def test_routellm_gsm8k_cascades_replay_on_real_responses(tmp_path):
    """Real recorded Mixtral / GPT-4 responses: the format cascade escalates the replies without a marked answer;
    the verifier sweeps from always-Mixtral to always-both."""
    cfg = compose("replay", ["dataset=routellm_gsm8k"], tmp_path)
    res = run(cfg)["metrics"]
    fmt, ver = res["cascade:format"], res["cascade:verifier"]
    cheap, prem = res["always:mistralai/Mixtral-8x7B-Instruct-v0.1"], res["always:gpt-4-1106-preview"]
    assert 0 < fmt["premium_share"] < 0.5 and fmt["cost_usd"] > cheap["cost_usd"]
    curve = np.array(ver["curve"])
    assert curve[:, 0].max() == pytest.approx(cheap["cost_usd"] + prem["cost_usd"], rel=1e-9)
    assert ver["aiq"] > res["random"]["aiq"]
    assert "cascade:agreement" not in res  # two models: no second cheap one
