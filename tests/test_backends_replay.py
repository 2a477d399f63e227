"""ReplayBackend: recorded outcomes served through the backend interface."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from kronaxis_lab.backends.base import GenRequest
from kronaxis_lab.backends.replay import ReplayBackend, ReplayError


def outcomes() -> pd.DataFrame:
    return pd.DataFrame({
        "query_id": ["q1", "q2", "q1", "q3"],
        "model": ["small", "small", "big", "small"],
        "response": ["four", None, "4", ""],
        "input_tokens": [10, 11, 10, math.nan],
        "output_tokens": [1, 0, 1, 2],
        "latency_s": [0.5, 0.25, 2.0, 0.1],
        "error": [None, "timeout", None, math.nan],
    })


def req(qid: str | None) -> GenRequest:
    return GenRequest(prompt="ignored: replay answers by id", request_id=qid)


def test_replays_rows_of_its_model_in_request_order():
    b = ReplayBackend("small", outcomes())
    res = b.generate([req("q2"), req("q1"), req("q3")])
    assert [r.text for r in res] == ["", "four", ""]
    assert [r.error for r in res] == ["timeout", None, None]
    assert [r.input_tokens for r in res] == [11, 10, 0]  # NaN tokens read as 0
    assert [r.latency_s for r in res] == [0.25, 0.5, 0.1]
    assert all(r.meta["replayed"] for r in res)


def test_recorded_model_maps_a_fleet_name_to_a_table_name():
    res = ReplayBackend("premium", outcomes(), recorded_model="big").generate([req("q1")])
    assert res[0].text == "4" and res[0].latency_s == 2.0


def test_missing_id_is_an_error_result_not_an_exception():
    res = ReplayBackend("small", outcomes()).generate([req("nope"), req(None), req("q1")])
    assert "nope" in res[0].error and "small" in res[0].error
    assert "request_id" in res[1].error
    assert res[2].text == "four" and res[2].error is None


def test_bad_tables_raise_clear_errors(tmp_path):
    df = outcomes()
    with pytest.raises(ReplayError, match="duplicate"):
        ReplayBackend("small", pd.concat([df, df]))
    with pytest.raises(ReplayError, match="lacks column"):
        ReplayBackend("small", df.drop(columns=["response"]))
    with pytest.raises(ReplayError, match="no rows for model 'other'"):
        ReplayBackend("other", df)
    with pytest.raises(ReplayError, match="not found"):
        ReplayBackend("small", tmp_path / "missing.parquet")


def test_reads_a_table_file(tmp_path):
    path = tmp_path / "outcomes.csv"
    outcomes().to_csv(path, index=False)
    b = ReplayBackend("small", str(path))
    assert len(b) == 3
    assert b.generate([req("q1")])[0].text == "four"
