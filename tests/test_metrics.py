"""Golden tests for kronaxis_lab.metrics on tiny hand-worked tables.

Every expected number below is worked out by hand in the comments next to it (not produced by
running the implementation); the RouteLLM / RouterBench reference behaviour each one pins down is
named in the test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kronaxis_lab import metrics as M

# --------------------------------------------------------------------------------------------------
# A 4-query × 3-model outcome table (model 2 = premium)
# --------------------------------------------------------------------------------------------------
SCORES = np.array(
    [
        [1.0, 0.0, 1.0],
        [0.0, 1.0, 1.0],
        [0.5, 0.0, 1.0],
        [0.0, 0.0, 0.0],
    ]
)
COSTS = np.array(
    [
        [0.1, 0.2, 1.0],
        [0.1, 0.2, 1.0],
        [0.2, 0.3, 2.0],
        [0.1, 0.1, 1.0],
    ]
)
CORRECT = np.array(
    [
        [1, 0, 1],
        [0, 1, 1],
        [0, 0, 1],
        [0, 0, 0],
    ],
    dtype=bool,
)


def test_cpao_golden_and_zero_correct():
    # 3.3 $ over 3 correct answers = 1.1 $ per correct answer
    assert M.cpao(3.3, 3) == pytest.approx(1.1)
    # fractional expected count: 1.0 / 2.5 = 0.4
    assert M.cpao(1.0, 2.5) == pytest.approx(0.4)
    assert M.cpao(0.5, 0) == math.inf
    with pytest.raises(ValueError):
        M.cpao(-1.0, 3)
    with pytest.raises(ValueError):
        M.cpao(float("nan"), 3)


def test_summarize_choice_golden():
    choice = np.array([0, 1, 2, 2])
    out = M.summarize_choice(choice, SCORES, COSTS, CORRECT, premium_idx=2)
    # chosen scores: row0 m0 = 1, row1 m1 = 1, row2 m2 = 1, row3 m2 = 0  -> accuracy 3/4
    assert out["accuracy"] == pytest.approx(0.75)
    # chosen costs: 0.1 + 0.2 + 2.0 + 1.0 = 3.3; per query 3.3 / 4 = 0.825
    assert out["cost_usd"] == pytest.approx(3.3)
    assert out["cost_per_query"] == pytest.approx(0.825)
    # chosen correct: 1 + 1 + 1 + 0 = 3; cpao = 3.3 / 3 = 1.1
    assert out["n_correct"] == pytest.approx(3.0)
    assert out["cpao"] == pytest.approx(1.1)
    # 2 of 4 queries went to model 2
    assert out["premium_share"] == pytest.approx(0.5)
    # always-premium cost: 1 + 1 + 2 + 1 = 5; savings = 1 - 3.3/5 = 0.34
    assert out["savings_vs_premium"] == pytest.approx(0.34)
    assert out["model_mix"] == pytest.approx({0: 0.25, 1: 0.25, 2: 0.5})
    json.dumps(out, allow_nan=False)  # JSON-safe


def test_summarize_choice_nothing_correct_and_free_premium():
    # all queries to model 0, which is never fully correct on rows 1..3 and correct on row 0 only
    out = M.summarize_choice(np.array([1, 0, 1, 1]), SCORES, COSTS, CORRECT, premium_idx=2)
    # chosen correct: row0 m1 = 0, row1 m0 = 0, row2 m1 = 0, row3 m1 = 0 -> no correct answer
    assert out["n_correct"] == 0.0
    assert out["cpao"] is None  # inf is not JSON
    free = COSTS.copy()
    free[:, 2] = 0.0
    out2 = M.summarize_choice(np.array([2, 2, 2, 2]), SCORES, free, CORRECT, premium_idx=2)
    assert out2["savings_vs_premium"] is None  # 1 - 0/0 is undefined
    json.dumps(out, allow_nan=False)
    json.dumps(out2, allow_nan=False)


def test_summarize_choice_bad_input():
    with pytest.raises(ValueError, match="not a model index"):
        M.summarize_choice(np.array([0, 3, 0, 0]), SCORES, COSTS, CORRECT, premium_idx=2)
    with pytest.raises(ValueError, match="premium_idx"):
        M.summarize_choice(np.array([0, 0, 0, 0]), SCORES, COSTS, CORRECT, premium_idx=5)
    with pytest.raises(ValueError, match="shape"):
        M.summarize_choice(np.array([0, 0, 0]), SCORES, COSTS, CORRECT, premium_idx=2)
    with pytest.raises(ValueError, match="integers"):
        M.summarize_choice(np.array([0.0, 0, 0, 0]), SCORES, COSTS, CORRECT, premium_idx=2)
    with pytest.raises(ValueError, match="shape"):
        M.summarize_choice(np.array([0, 0, 0, 0]), SCORES, COSTS[:, :2], CORRECT, premium_idx=0)
    missing = SCORES.copy()
    missing[2, 1] = np.nan  # model 1 never ran on query 2
    # not chosen -> fine
    M.summarize_choice(np.array([0, 0, 0, 0]), missing, COSTS, CORRECT, premium_idx=2)
    with pytest.raises(ValueError, match=r"scores\[row 2, model 1\]"):
        M.summarize_choice(np.array([0, 0, 1, 0]), missing, COSTS, CORRECT, premium_idx=2)


def test_choices_metrics_batch_golden():
    choices = np.array(
        [
            [0, 1, 2, 2],  # cost 0.1+0.2+2.0+1.0 = 3.3; scores 1+1+1+0 -> 0.75
            [2, 2, 2, 2],  # cost 1+1+2+1 = 5.0;         scores 1+1+1+0 -> 0.75
            [0, 0, 0, 0],  # cost 0.1+0.1+0.2+0.1 = 0.5; scores 1+0+0.5+0 -> 0.375
        ],
        dtype=np.int8,
    )
    cost, acc = M.choices_metrics_batch(choices, SCORES, COSTS, CORRECT)
    np.testing.assert_allclose(cost, [3.3, 5.0, 0.5])
    np.testing.assert_allclose(acc, [0.75, 0.75, 0.375])
    # a single (n,) row is k = 1; unsigned indices work too
    cost1, acc1 = M.choices_metrics_batch(np.array([0, 0, 0, 0], dtype=np.uint64), SCORES, COSTS, CORRECT)
    np.testing.assert_allclose(cost1, [0.5])
    np.testing.assert_allclose(acc1, [0.375])


def test_choices_metrics_batch_matches_summarize_choice_across_blocks(monkeypatch):
    # force several blocks (2 rows of 50 queries each) to exercise the block loop
    monkeypatch.setattr(M, "_BLOCK_CELLS", 100)
    rng = np.random.default_rng(0)
    n, m, k = 50, 5, 7
    scores, costs = rng.random((n, m)), rng.random((n, m))
    correct = scores > 0.5
    choices = rng.integers(0, m, size=(k, n))
    cost, acc = M.choices_metrics_batch(choices, scores, costs, correct)
    for r in range(k):
        ref = M.summarize_choice(choices[r], scores, costs, correct, premium_idx=0)
        assert cost[r] == pytest.approx(ref["cost_usd"])
        assert acc[r] == pytest.approx(ref["accuracy"])


def test_choices_metrics_batch_bad_input():
    with pytest.raises(ValueError, match=r"choices\[1, 2\] = 3"):
        M.choices_metrics_batch(np.array([[0, 0, 0, 0], [0, 0, 3, 0]]), SCORES, COSTS, CORRECT)
    with pytest.raises(ValueError, match="not a model index"):
        M.choices_metrics_batch(np.array([[0, -1, 0, 0]]), SCORES, COSTS, CORRECT)
    with pytest.raises(ValueError, match=r"expected \(k, 4\)"):
        M.choices_metrics_batch(np.zeros((2, 3), dtype=int), SCORES, COSTS, CORRECT)
    nan_costs = COSTS.copy()
    nan_costs[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"costs\[row 3, model 0\].*operating point 1"):
        M.choices_metrics_batch(np.array([[1, 1, 1, 1], [0, 0, 0, 0]]), SCORES, nan_costs, CORRECT)


# --------------------------------------------------------------------------------------------------
# NDCH / AIQ / savings (RouterBench)
# --------------------------------------------------------------------------------------------------
# Seven operating points. Upper hull by hand, walking from the cheapest point A(1, .2):
#   slopes from A: B .3, F(2.5,.3) .067, C .175, D .233, E .1625, G .14          -> next vertex B
#   slopes from B(2,.5): F -.4, C .05, D .2, E .117, G .1                         -> next vertex D
#   slopes from D(4,.9): E -.05, G 0                                              -> next vertex G
# Hull A, B, D, G with qualities .2, .5, .9, .9: non-decreasing, and RouterBench keeps the equal-
# quality plateau end G (it only drops points strictly below their predecessor).
C7 = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 2.5, 6.0])
Q7 = np.array([0.2, 0.5, 0.55, 0.9, 0.85, 0.3, 0.9])


def test_ndch_golden():
    hc, hq = M.ndch(C7, Q7)
    np.testing.assert_allclose(hc, [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(hq, [0.2, 0.5, 0.9, 0.9])
    # order of the input does not matter
    perm = np.array([6, 2, 0, 5, 3, 1, 4])
    hc2, hq2 = M.ndch(C7[perm], Q7[perm])
    np.testing.assert_allclose(hc2, hc)
    np.testing.assert_allclose(hq2, hq)


def test_ndch_drops_decreasing_tail():
    # (1,.5) (2,.8) (3,.6): hull is concave 1->2->3 but quality falls after 2 -> tail dropped
    hc, hq = M.ndch([3.0, 1.0, 2.0], [0.6, 0.5, 0.8])
    np.testing.assert_allclose(hc, [1.0, 2.0])
    np.testing.assert_allclose(hq, [0.5, 0.8])


def test_ndch_edge_cases():
    hc, hq = M.ndch([2.0], [0.6])  # single point
    assert hc.tolist() == [2.0] and hq.tolist() == [0.6]
    hc, hq = M.ndch([1.0, 1.0, 1.0], [0.3, 0.7, 0.5])  # all equal cost -> the best one
    assert hc.tolist() == [1.0] and hq.tolist() == [0.7]
    hc, hq = M.ndch([1.0, 2.0], [0.8, 0.4])  # two points, the dearer one worse -> only the cheap one
    assert hc.tolist() == [1.0] and hq.tolist() == [0.8]
    with pytest.raises(ValueError, match="empty"):
        M.ndch([], [])
    with pytest.raises(ValueError, match=r"quality\[1\]"):
        M.ndch([1.0, 2.0], [0.5, np.nan])
    with pytest.raises(ValueError, match="points"):
        M.ndch([1.0, 2.0], [0.5])


def _brute_force_envelope(c: np.ndarray, q: np.ndarray, x: float) -> float:
    """Upper concave envelope at x: the best point at x, or the best chord a–b with c_a < x < c_b."""
    best = q[c == x].max() if np.any(c == x) else -np.inf
    for a in range(c.size):
        for b in range(c.size):
            if c[a] < x < c[b]:
                best = max(best, q[a] + (q[b] - q[a]) * (x - c[a]) / (c[b] - c[a]))
    return best


@pytest.mark.parametrize("seed", range(8))
def test_ndch_property_non_decreasing_and_dominating(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 25))
    c = np.round(rng.random(k) * 10, 1)  # rounding creates repeated costs on purpose
    q = rng.random(k)
    hc, hq = M.ndch(c, q)
    assert np.all(np.diff(hc) > 0)  # sorted by cost, no duplicates
    assert np.all(np.diff(hq) >= 0)  # non-decreasing
    slopes = np.diff(hq) / np.diff(hc)
    assert np.all(np.diff(slopes) <= 1e-12)  # concave
    # vertices are input points
    for hx, hy in zip(hc, hq):
        assert np.any((c == hx) & (q == hy))
    # dominates every input point at its cost (flat after the last vertex)
    at = np.interp(c, hc, hq)
    assert np.all(at >= q - 1e-12)
    # and equals the brute-force envelope up to the hull's end (RouterBench's pairwise definition)
    for x in c[c <= hc[-1]]:
        assert np.interp(x, hc, hq) == pytest.approx(_brute_force_envelope(c, q, x))
    # max quality is reached
    assert hq[-1] == pytest.approx(q.max())


def test_aiq_golden():
    # R~ on the C7 hull: 0 below 1; (1,.2)-(2,.5)-(4,.9)-(6,.9); flat .9 after 6.
    # [0, 8]: 0 + (.2+.5)/2*1 + (.5+.9)/2*2 + .9*2 + .9*2 = .35 + 1.4 + 1.8 + 1.8 = 5.35; / 8
    assert M.aiq(C7, Q7, 0.0, 8.0) == pytest.approx(5.35 / 8)
    # [1.5, 5]: R~(1.5) = .35; (.35+.5)/2*.5 + 1.4 + .9*1 = .2125 + 1.4 + .9 = 2.5125; / 3.5
    assert M.aiq(C7, Q7, 1.5, 5.0) == pytest.approx(2.5125 / 3.5)
    # RouterBench's own range for this router alone: (0, last hull cost = 6);
    # its calc_AIQ: trapz over hull from 1 to 6 = .35 + 1.4 + 1.8 = 3.55, divided by max_x = 6
    lo, hi = M.routerbench_cost_range([(C7, Q7)])
    assert (lo, hi) == (0.0, 6.0)
    assert M.aiq(C7, Q7, lo, hi) == pytest.approx(3.55 / 6)


def test_routerbench_cost_range_takes_largest_hull_end():
    # second router's hull ends at 9 (its best point) -> shared range (0, 9); the (10, .1) point is
    # off its hull (quality drops), so it does not stretch the range
    assert M.routerbench_cost_range([(C7, Q7), ([3.0, 9.0, 10.0], [0.4, 0.95, 0.1])]) == (0.0, 9.0)
    with pytest.raises(ValueError):
        M.routerbench_cost_range([])


def test_aiq_edge_cases():
    # single point (2, .6) on [0, 4]: R~ = 0 on [0,2), .6 on [2,4] -> 1.2 / 4 = .3
    assert M.aiq([2.0], [0.6], 0.0, 4.0) == pytest.approx(0.3)
    # all equal cost: best point (1, .7); on [0, 2] -> .7 * 1 / 2 = .35
    assert M.aiq([1.0, 1.0, 1.0], [0.3, 0.7, 0.5], 0.0, 2.0) == pytest.approx(0.35)
    # router cheapest point beyond the range -> 0
    assert M.aiq([5.0, 6.0], [0.5, 0.9], 0.0, 4.0) == 0.0
    # range entirely past the hull end -> flat at .9
    assert M.aiq(C7, Q7, 7.0, 9.0) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="cost_max > cost_min"):
        M.aiq(C7, Q7, 1.0, 1.0)


def test_cost_and_savings_at_quality_golden():
    # target .7: first hull vertex with q >= .7 is (4,.9); between (2,.5) and (4,.9):
    #   2 + (.7-.5)/(.9-.5) * (4-2) = 2 + .5*2 = 3
    assert M.cost_at_quality(C7, Q7, 0.7) == pytest.approx(3.0)
    assert M.cost_at_quality(C7, Q7, 0.9) == pytest.approx(4.0)  # reached exactly at vertex D
    assert M.cost_at_quality(C7, Q7, 0.2) == pytest.approx(1.0)  # the first vertex
    assert M.cost_at_quality(C7, Q7, 0.1) == pytest.approx(1.0)  # hull starts at cost 1
    assert M.cost_at_quality(C7, Q7, 0.95) is None  # never reached
    # savings vs premium cost 6: 1 - 3/6 = .5
    assert M.savings_at_quality(C7, Q7, 0.7, premium_cost=6.0) == pytest.approx(0.5)
    assert M.savings_at_quality(C7, Q7, 0.95, premium_cost=6.0) is None
    with pytest.raises(ValueError, match="premium_cost"):
        M.savings_at_quality(C7, Q7, 0.7, premium_cost=0.0)


def test_max_accuracy_and_oracle_gap():
    assert M.max_accuracy(C7, Q7) == pytest.approx(0.9)
    assert M.max_accuracy([1.0], [0.4]) == pytest.approx(0.4)
    assert M.oracle_gap(0.72, 0.9) == pytest.approx(0.18)


# --------------------------------------------------------------------------------------------------
# PGR / APGR / CPT (RouteLLM)
# --------------------------------------------------------------------------------------------------
# A RouteLLM-style sweep from 0 % to 100 % strong calls; weak .5, strong .9.
SHARE5 = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
QUAL5 = np.array([0.5, 0.7, 0.8, 0.85, 0.9])
# PGR = (q - .5) / .4 = [0, .5, .75, .875, 1]


def test_pgr_golden():
    np.testing.assert_allclose(M.pgr(QUAL5, 0.5, 0.9), [0.0, 0.5, 0.75, 0.875, 1.0])
    with pytest.raises(ValueError, match="strong_quality == weak_quality"):
        M.pgr(QUAL5, 0.7, 0.7)


def test_apgr_golden():
    # trapz(PGR, share) = .25 * [(0+.5)/2 + (.5+.75)/2 + (.75+.875)/2 + (.875+1)/2]
    #                   = .25 * [.25 + .625 + .8125 + .9375] = .25 * 2.625 = .65625; width 1
    # (RouteLLM's form: AUC = .25*[.6+.75+.825+.875] = .7625; (.7625 - .5)/(.9 - .5) = .65625)
    assert M.apgr(SHARE5, QUAL5, 0.5, 0.9) == pytest.approx(0.65625)
    # order of the points does not matter (RouteLLM sorts by strong_percentage)
    perm = np.array([3, 0, 4, 1, 2])
    assert M.apgr(SHARE5[perm], QUAL5[perm], 0.5, 0.9) == pytest.approx(0.65625)


def test_apgr_no_endpoints_added():
    # RouteLLM integrates only over the observed share range and divides by its width:
    # shares [.2, .6], quality [.6, .8] -> PGR [.25, .75]; trapz = .4 * (.25+.75)/2 = .2; / .4 = .5
    # (RouteLLM: AUC = .4*.7 = .28, weak_auc = .5*.4 = .2, strong_auc = .9*.4 = .36 -> .08/.16 = .5)
    assert M.apgr([0.2, 0.6], [0.6, 0.8], 0.5, 0.9) == pytest.approx(0.5)


def test_apgr_edge_cases():
    with pytest.raises(ValueError, match="strong_quality == weak_quality"):
        M.apgr(SHARE5, QUAL5, 0.8, 0.8)
    with pytest.raises(ValueError, match="two distinct premium shares"):
        M.apgr([0.5], [0.7], 0.5, 0.9)
    with pytest.raises(ValueError, match="two distinct premium shares"):
        M.apgr([0.5, 0.5], [0.7, 0.6], 0.5, 0.9)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.apgr([0.0, 50.0], [0.5, 0.9], 0.5, 0.9)  # percentages instead of fractions


def test_cpt_golden():
    # CPT(20%): PGR .2 between share 0 (PGR 0) and .25 (PGR .5): .2/.5 * .25 = .1
    #   (RouteLLM: np.interp(.2*.4 + .5 = .58, quality, share) = (.58-.5)/(.7-.5) * .25 = .1)
    assert M.cpt(SHARE5, QUAL5, 0.5, 0.9, 0.2) == pytest.approx(0.1)
    # CPT(50%): PGR exactly .5 at share .25
    assert M.cpt(SHARE5, QUAL5, 0.5, 0.9, 0.5) == pytest.approx(0.25)
    # CPT(80%): between .5 (PGR .75) and .75 (PGR .875): .5 + (.8-.75)/.125 * .25 = .5 + .1 = .6
    assert M.cpt(SHARE5, QUAL5, 0.5, 0.9, 0.8) == pytest.approx(0.6)


def test_cpt_edge_cases():
    # never reached: PGR tops out at (.6-.5)/.4 = .25 < .5
    assert M.cpt([0.0, 0.5], [0.5, 0.6], 0.5, 0.9, 0.5) is None
    # already reached at the first (cheapest) point: PGR(.8) = .75 >= .5 -> its share .3
    assert M.cpt([0.3, 1.0], [0.8, 0.9], 0.5, 0.9, 0.5) == pytest.approx(0.3)
    # non-monotone curve, PGR [0, 1, .75] at shares [0, .5, 1]: first crossing of .8 is on the
    # first segment, .8/1 * .5 = .4 (np.interp is undefined for a non-monotone xp)
    assert M.cpt([0.0, 0.5, 1.0], [0.5, 0.9, 0.8], 0.5, 0.9, 0.8) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        M.cpt(SHARE5, QUAL5, 0.9, 0.9, 0.5)


# --------------------------------------------------------------------------------------------------
# router_summary
# --------------------------------------------------------------------------------------------------
# Two-model sweep on n = 100 queries: weak $0.001/query, strong $0.01/query, so the total cost at
# strong share s is 100 * (.001 + .009 s) = .1 + .9 s -> [.1, .325, .55, .775, 1.0].
COST5 = 0.1 + 0.9 * SHARE5


def test_router_summary_golden():
    out = M.router_summary(
        COST5,
        QUAL5,
        SHARE5,
        cost_min=0.0,
        cost_max=1.0,
        premium_cost=1.0,
        premium_quality=0.9,
        n_queries=100,
        weak_quality=0.5,
        strong_quality=0.9,
    )
    # hull: (.1,.5) (.325,.7) (.55,.8) (1,.9)  [(.775,.85) is collinear with (.55,.8)-(1,.9)]
    # AIQ on [0,1]: (.5+.7)/2*.225 + (.7+.8)/2*.225 + (.8+.9)/2*.45 = .135 + .16875 + .3825 = .68625
    assert out["aiq"] == pytest.approx(0.68625)
    assert out["max_accuracy"] == pytest.approx(0.9)
    # q* = .95 * .9 = .855, between (.55,.8) and (1,.9): .55 + (.055/.1) * .45 = .55 + .2475 = .7975
    assert out["cost_at_95pct_premium"] == pytest.approx(0.7975)
    assert out["savings_at_95pct_premium"] == pytest.approx(1 - 0.7975)
    # expected correct at q* on 100 queries: 85.5; CPAO = .7975 / 85.5
    assert out["cpao_at_95pct_premium"] == pytest.approx(0.7975 / 85.5)
    assert out["apgr"] == pytest.approx(0.65625)  # as in test_apgr_golden
    assert out["cpt50"] == pytest.approx(0.25)
    assert out["cpt80"] == pytest.approx(0.6)
    json.dumps(out, allow_nan=False)
    assert all(v is None or type(v) is float for v in out.values())


def test_router_summary_none_cases():
    base = dict(cost_min=0.0, cost_max=1.0, premium_cost=1.0)
    # multi-model set (no weak/strong), target never reached (q* = .95 > .9), no n_queries
    out = M.router_summary(COST5, QUAL5, SHARE5, premium_quality=1.0, **base)
    assert out["cost_at_95pct_premium"] is None
    assert out["savings_at_95pct_premium"] is None
    assert out["cpao_at_95pct_premium"] is None
    assert out["apgr"] is None and out["cpt50"] is None and out["cpt80"] is None
    assert out["aiq"] == pytest.approx(0.68625)
    # strong == weak: PGR undefined -> None, not an exception
    out = M.router_summary(
        COST5, QUAL5, SHARE5, premium_quality=0.9, weak_quality=0.7, strong_quality=0.7, **base
    )
    assert out["apgr"] is None and out["cpt50"] is None
    # one operating point: AIQ/savings defined, APGR not (one share); CPT still read off
    out = M.router_summary([0.55], [0.8], [0.5], premium_quality=0.8, n_queries=10,
                           weak_quality=0.5, strong_quality=0.9, **base)
    # AIQ: 0 on [0,.55), .8 on [.55,1] -> .8*.45 = .36; q* = .76 <= .8 -> c* = .55, savings .45
    assert out["aiq"] == pytest.approx(0.36)
    assert out["savings_at_95pct_premium"] == pytest.approx(0.45)
    # cpao = .55 / (.76 * 10)
    assert out["cpao_at_95pct_premium"] == pytest.approx(0.55 / 7.6)
    assert out["apgr"] is None
    assert out["cpt50"] == pytest.approx(0.5)  # PGR(.8) = .75 >= .5 at the only point
    assert out["cpt80"] is None  # .75 < .8
    json.dumps(out, allow_nan=False)
