"""`AsciiWordPieceCounter`: the cost model's prompt-token counts without the Rust pipeline, checked against it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from kronaxis_lab.export.runtimes import BundleTokenizer
from kronaxis_lab.export.wordpiece import AsciiWordPieceCounter
from kronaxis_lab.local_models import resolve_model
from tests.conftest import MINILM, SHARED_DATA


@pytest.fixture(scope="module")
def rust() -> Tokenizer:
    tok = Tokenizer.from_file(str(Path(resolve_model(MINILM)) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def reference(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    return np.array([len(e) for e in tok.encode_batch_fast(texts, add_special_tokens=False)], dtype=np.int64)


# ASCII with every control character, BERT punctuation, the added tokens' text, long words and case changes
WORDS = st.sampled_from(["[MASK]", "[cls]", "[Sep]", "[PAD", "UNK]", "unbelievably", "tokenised", "x" * 120,
                         "ünïcödé", "日本語", "e\u0301", "\u00a0", "\u2028", "don't", "3.14159", "C++", "a_b"])
TEXT = st.lists(st.one_of(st.text(st.characters(max_codepoint=127), max_size=30), WORDS), max_size=12).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(TEXT, min_size=1, max_size=8))
def test_counts_equal_the_rust_tokenizer_on_generated_text(rust, texts):
    counter = AsciiWordPieceCounter(rust, max_cached=64)  # a small memo: full and evicting-free paths both run
    np.testing.assert_array_equal(counter.count(texts), reference(rust, texts))
    np.testing.assert_array_equal(counter.count(texts), reference(rust, texts))  # the memoised second pass


def test_counts_equal_on_real_prompts_and_take_the_fast_path(rust):
    path = SHARED_DATA / "llmrouter" / "queries_train.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is not here")
    texts = [json.loads(line).get("query", "") for line in path.read_text().split("\n")[:3000] if line.strip()]
    counter = AsciiWordPieceCounter(rust)
    np.testing.assert_array_equal(counter.count(texts), reference(rust, texts))
    fast = [t for t in texts if counter.fast_path(t)]
    assert len(fast) > 0.9 * len(texts)  # most prompts never reach the Rust pipeline


def test_added_token_text_and_non_ascii_go_to_the_rust_tokenizer(rust):
    counter = AsciiWordPieceCounter(rust)
    assert not counter.fast_path("fill the [MASK] in")  # one added token, not "[", "mask", "]"
    assert not counter.fast_path("fill the [mask] in")
    assert not counter.fast_path("café")
    assert counter.fast_path("fill the [mas] in")
    assert counter.count(["fill the [MASK] in"])[0] == 4


def test_other_pipelines_are_not_accepted(rust):
    cased = json.loads(rust.to_str())
    cased["normalizer"]["lowercase"] = False
    assert AsciiWordPieceCounter.accepts(rust)
    assert not AsciiWordPieceCounter.accepts(Tokenizer.from_str(json.dumps(cased)))


def test_bundle_tokenizer_counts_through_it(rust):
    bt = BundleTokenizer(Path(resolve_model(MINILM)), max_length=16)  # truncation is for encoding, not counting
    texts = ["What is 2+2?", "A long prompt " * 40, "naïve café", "[MASK] it"]
    np.testing.assert_array_equal(bt.count(texts), reference(rust, texts))
    assert bt.count(texts)[1] > 16
