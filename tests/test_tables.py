import numpy as np
import pandas as pd
import pytest

from kronaxis_lab.data.fleet import Fleet, FleetError
from kronaxis_lab.data.tables import RoutingDataset, TableError, load_outcomes, validate_outcomes, validate_queries

FLEET = Fleet.from_config({"models": {"big": {"tier": 1, "price_in": 10, "price_out": 30},
                                      "small": {"tier": 0, "price_in": 1, "price_out": 1}}})


def outcomes(**over):
    df = pd.DataFrame({
        "query_id": ["q1", "q1", "q2", "q2"], "model": ["small", "big", "small", "big"],
        "response": ["a", "b", "c", "d"], "score": [0.0, 1.0, 1.0, 1.0], "correct": [False, True, True, True],
        "input_tokens": [10, 10, 20, 20], "output_tokens": [5, 5, 5, 5], "cost_usd": [1e-5, 2e-4, 2e-5, 3e-4],
        "latency_s": [0.1, 0.2, 0.1, 0.2], "error": [None] * 4,
    })
    for k, v in over.items():
        df[k] = v
    return df


def queries():
    return pd.DataFrame({"query_id": ["q1", "q2"], "text": ["hard?", "easy?"], "task": ["t", "t"],
                         "split": ["train", "test"], "source": ["s", "s"]})


def test_fleet_orders_cheapest_first_and_prices_per_token():
    assert FLEET.names == ["small", "big"]
    assert FLEET.premium == "big" and FLEET.cheapest == "small"
    cost = FLEET.cost(["big", "small"], np.array([1e6, 1e6]), np.array([1e6, 0]))
    np.testing.assert_allclose(cost, [40.0, 1.0])


def test_fleet_errors_are_clear():
    with pytest.raises(FleetError, match="duplicate|no 'models'|invalid"):
        Fleet.from_config({"models": {}})
    with pytest.raises(FleetError, match="price_in"):
        Fleet.from_config({"models": {"a": {"tier": 0, "price_in": -1}}}, source="fleet.yaml")
    with pytest.raises(FleetError, match="premium 'x'"):
        Fleet.from_config({"models": {"a": {"tier": 0}}, "premium": "x"})


@pytest.mark.parametrize("col,val,msg", [
    ("score", [0.0, 1.5, 1.0, 1.0], r"score outside \[0, 1\].*row index \[1\]"),
    ("model", ["small", "big", "small", "small"], r"duplicate \(query_id, model\)"),
    ("input_tokens", [10, -1, 20, 20], "negative input_tokens"),
    ("score", [0.0, "x", 1.0, 1.0], "column 'score' is not numeric"),
])
def test_outcome_validation_names_file_and_rows(col, val, msg):
    with pytest.raises(TableError, match=msg) as e:
        validate_outcomes(outcomes(**{col: val}), source="runs/x/outcomes.parquet")
    assert "runs/x/outcomes.parquet" in str(e.value)


def test_missing_column_and_unknown_model():
    with pytest.raises(TableError, match=r"missing column\(s\) \['cost_usd'\]"):
        validate_outcomes(outcomes().drop(columns="cost_usd"), source="f.parquet")
    with pytest.raises(TableError, match=r"\['huge'\] are not in the fleet"):
        validate_outcomes(outcomes(model=["small", "big", "small", "huge"]), "f", FLEET.names)


def test_error_rows_may_have_no_score():
    df = outcomes(score=[0.0, 1.0, np.nan, 1.0], error=[None, None, "timeout", None])
    out = validate_outcomes(df, "f")
    assert out["error"].notna().sum() == 1


def test_queries_validation():
    q = queries()
    q.loc[1, "split"] = "holdout"
    with pytest.raises(TableError, match="split must be one of"):
        validate_queries(q, "queries.parquet")
    q = pd.concat([queries(), queries().iloc[:1]])
    with pytest.raises(TableError, match="duplicate query_id"):
        validate_queries(q, "queries.parquet")


def test_dataset_wide_views_and_roundtrip(tmp_path):
    ds = RoutingDataset(queries(), outcomes(), FLEET, name="tiny")
    w = ds.wide("score")
    assert list(w.columns) == ["small", "big"] and w.loc["q1", "big"] == 1.0
    m = ds.matrices("test")
    assert m.n == 1 and m.scores.tolist() == [[1.0, 1.0]] and m.costs[0, 1] == pytest.approx(3e-4)
    ds.save(tmp_path / "d")
    back = RoutingDataset.load(tmp_path / "d")
    pd.testing.assert_frame_equal(back.outcomes, ds.outcomes)
    assert back.fleet.names == FLEET.names
    assert load_outcomes(tmp_path / "d" / "outcomes.parquet", FLEET.names).shape == (4, 10)


def test_incomplete_queries_are_dropped_from_matrices():
    df = outcomes(error=[None, None, "boom", None])
    ds = RoutingDataset(queries(), df, FLEET)
    assert ds.matrices().n == 1  # q2 has an errored row: not comparable across routers


def test_orphan_outcomes_rejected():
    with pytest.raises(TableError, match="not in the queries table"):
        RoutingDataset(queries().iloc[:1], outcomes(), FLEET, name="x")
