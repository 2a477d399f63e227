"""Text + metadata: the blend weight is chosen on val and follows whichever input carries the signal."""

import numpy as np
import pandas as pd
import pytest

from kronaxis_lab.data.fleet import Fleet
from kronaxis_lab.data.tables import Matrices
from kronaxis_lab.routing.routers import MetadataBlendPredictor, Predictor, ReplayContext

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
