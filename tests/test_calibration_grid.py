"""The calibration grid reaches every distinct set of val decisions a λ policy can make, even when the
predictions differ by less than a fixed grid's step (an under-trained model's P̂ bunched near one value)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.tables import Matrices
from kronaxis_lab.routing.calibration import calibrate_router, calibration_grid
from kronaxis_lab.routing.policies import LatencySLO, WillingnessToPay
from kronaxis_lab.routing.routers import PolicyRouter, Predictor, ReplayContext


def _all_decisions(policy, P, cost) -> set[bytes]:
    """Brute force: the choices at 0, ∞ and between every pair of adjacent crossings of any two models."""
    j, k = np.triu_indices(P.shape[1], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = ((cost[:, j] - cost[:, k]) / (P[:, j] - P[:, k])).ravel()
    lam = np.unique(lam[np.isfinite(lam) & (lam > 0)])
    probe = np.concatenate([[0.0, np.inf], lam / 2, lam * 2, (lam[:-1] + lam[1:]) / 2])
    return {row.tobytes() for row in policy.choose(P, cost, probe)}


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 40), m=st.integers(2, 4), spread=st.sampled_from([1e-6, 1e-4, 1e-2, 0.3]),
       seed=st.integers(0, 10_000))
def test_grid_reaches_every_decision_set(n, m, spread, seed):
    rng = np.random.default_rng(seed)
    P = np.clip(np.linspace(0.3, 0.9, m)[None, :] + spread * rng.random((n, m)), 0, 1)
    cost = np.sort(rng.random((n, m)) * 10 ** rng.uniform(-4, 0), axis=1)
    policy = WillingnessToPay()
    grid = calibration_grid(policy, P, cost, points=201)
    reached = {row.tobytes() for row in policy.choose(P, cost, grid)}
    assert _all_decisions(policy, P, cost) <= reached


def test_breakpoints_by_hand_and_through_the_latency_wrapper():
    P = np.array([[0.5, 0.9], [0.5, 0.5], [0.9, 0.5]])  # row 1: no crossing; row 2: cheap model likelier
    cost = np.array([[1.0, 3.0], [1.0, 3.0], [1.0, 3.0]])
    assert WillingnessToPay().breakpoints(P, cost) == pytest.approx([5.0])  # (3 − 1) / (0.9 − 0.5)
    fleet = Fleet.from_config({"models": {"w": {"tier": 0, "price_in": 1}, "s": {"tier": 1, "price_in": 3}}})
    slo = LatencySLO(WillingnessToPay(), slo_s=1.0).bind(fleet, None)
    assert slo.breakpoints(P, cost) == pytest.approx([5.0])


class Bunched(Predictor):
    """P̂(weak) within 1e-4 of 0.55 for every query, ranked right: easy queries slightly higher."""

    def predict(self, ctx, mats=None):
        mats = ctx.test if mats is None else mats
        easy = mats.queries["task"].eq("easy").to_numpy()
        rank = np.random.default_rng(0).random(mats.n) * 1e-5
        return np.stack([0.55 + np.where(easy, 1e-4, 0.0) + rank, np.full(mats.n, 0.95)], axis=1)


def _mats(n: int, rng) -> Matrices:
    easy = np.arange(n) % 2 == 0
    weak = easy.astype(float)
    scores = np.stack([weak, np.ones(n)], axis=1)
    return Matrices(queries=pd.DataFrame({"query_id": [f"q{i}" for i in range(n)],
                                          "task": np.where(easy, "easy", "hard"), "text": "x"}),
                    model_names=["weak", "strong"], scores=scores, correct=scores.astype(bool),
                    costs=np.tile([1.0, 20.0], (n, 1)), input_tokens=np.ones((n, 2)), output_tokens=np.ones((n, 2)))


def test_operating_point_separates_bunched_predictions():
    """P̂ bunched within 1e-4: the λ band that sends the easy half (and only it) to the cheap model is ~2e-4 wide
    relative, far narrower than a fixed geometric grid's step. The 99 %-of-premium point must still find it,
    on val and on test."""
    rng = np.random.default_rng(1)
    val, test = _mats(40, rng), _mats(200, rng)
    fleet = Fleet.from_config({"models": {"weak": {"tier": 0, "price_in": 1}, "strong": {"tier": 1, "price_in": 20}}})
    ctx = ReplayContext(test=test, fleet=fleet, val=val, train=val)
    router = PolicyRouter(Bunched(), WillingnessToPay(), "bunched")
    P = router.predictions(ctx, test)
    out = calibrate_router(router, ctx, P, ctx.expected_cost_for(test), target="pct_premium_accuracy", value=0.99,
                           n_boot=200)
    assert out["val_achieved"] == 1.0
    assert out["test_premium_share"] == pytest.approx(0.5, abs=0.01)
    assert out["test_accuracy"] == 1.0
