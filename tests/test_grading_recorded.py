"""RecordedScoreGrader: pass-through of recorded scores, validation, scaling, missing cells."""

import math

import numpy as np
import pytest

from kronaxis_lab.grading._common import GradingInputError
from kronaxis_lab.grading.recorded import RecordedScoreGrader


def test_pass_through_of_mixed_recorded_values():
    g = RecordedScoreGrader()
    scores = g.grade(["r"] * 6, [1, 0.25, True, "False", "0.5", np.float32(0.75)])
    assert scores.tolist() == [1.0, 0.25, 1.0, 0.0, 0.5, 0.75]
    assert g.last_stats_["no_answer"] == 0 and g.last_stats_["mean"] == pytest.approx(3.5 / 6)


def test_missing_scores_are_nan_and_counted():
    g = RecordedScoreGrader()
    scores = g.grade(["a", "b", "c"], [None, float("nan"), 1.0])
    assert math.isnan(scores[0]) and math.isnan(scores[1]) and scores[2] == 1.0
    assert g.last_stats_["no_answer"] == 2
    with pytest.raises(GradingInputError, match="missing"):
        RecordedScoreGrader(allow_missing=False).grade(["a"], [None])


def test_scale_maps_mt_bench_ratings():
    assert RecordedScoreGrader(scale=10).grade(["a", "b"], [10, 7.5]).tolist() == [1.0, 0.75]


def test_out_of_range_and_garbage_raise_with_row():
    with pytest.raises(GradingInputError, match="row 1"):
        RecordedScoreGrader().grade(["a", "b"], [0.5, 7])
    with pytest.raises(GradingInputError, match="row 0"):
        RecordedScoreGrader().grade(["a"], ["good"])
    with pytest.raises(GradingInputError):
        RecordedScoreGrader().grade(["a"], [-0.1])
