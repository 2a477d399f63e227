"""Importers on fixtures written from the documented formats, plus smoke tests on ../shared/data."""

import gzip
import json

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate

from kronaxis_lab.data.importers.llmrouter import LLMRouterImporter
from kronaxis_lab.data.importers.routellm import CombinedImporter, RouteLLMGSM8K, RouteLLMMMLU, RouteLLMMTBench
from kronaxis_lab.data.importers.routerbench import RouterBenchImporter
from kronaxis_lab.data.splits import question_key
from kronaxis_lab.data.store import DataStore
from kronaxis_lab.data.tables import TableError
from kronaxis_lab.pipelines.common import make_store
from tests.conftest import FIXTURES, compose

FLEET2 = {"models": {"weak": {"tier": 0, "price_in": 1.0, "price_out": 2.0},
                     "strong": {"tier": 1, "price_in": 10.0, "price_out": 30.0}}}


class WordCounter:
    """Stand-in tokenizer for fixtures: whitespace words (the real one is tested in test_tokens)."""

    def count(self, texts):
        return np.array([len(t.split()) if isinstance(t, str) else 0 for t in texts])


def store_at(root):
    return DataStore(data_dir=root, mirror=root / "no-mirror")


def write_routellm(root):
    d = root / "routellm/routellm/evals"
    (d / "mmlu/responses").mkdir(parents=True)
    prompts = ["What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:",
               "Capital of France?\nA. Paris\nB. Rome\nC. Oslo\nD. Bern\nAnswer:"]
    pd.DataFrame({"prompt": prompts, "weak": [True, False], "strong": [True, True]}).to_csv(
        d / "mmlu/responses/mmlu_misc.csv", index=False)
    (root / "mmlu").mkdir()
    with gzip.open(root / "mmlu/mmlu_test.jsonl.gz", "wt") as f:
        for q, choices, answer, topic in [("question", "abcd", "answer", "t"), ("What is 2+2?", "3456", "B", "misc"),
                                          ("Capital of France?", ["Paris", "Rome", "Oslo", "Bern"], "A", "misc")]:
            row = {"question": q, **{f"answer_{c}": a for c, a in zip("abcd", choices)}}
            f.write(json.dumps({**row, "correct_answer": answer, "topic": topic}) + "\n")
    (d / "gsm8k").mkdir()
    pd.DataFrame({"prompt": ["Tom has 2 apples and gets 3. How many?"], "weak": ["False"], "strong": ["True"],
                  "weak_response": ["He has 6 apples"], "strong_response": ["2 + 3 = 5. The answer is 5"]}
                 ).to_csv(d / "gsm8k/gsm8k_responses.csv", index=False)
    (root / "gsm8k").mkdir()
    tom = "Tom has 2 apples and gets 3. How many?"
    (root / "gsm8k/test.jsonl").write_text(json.dumps({"question": tom, "answer": "2+3=5\n#### 5"}) + "\n")
    (d / "gsm8k/contaminated_prompts.jsonl").write_text(json.dumps({"eval_prompt": tom, "train_prompt": "x"}) + "\n")
    (d / "mt_bench").mkdir()
    (d / "mt_bench/question.jsonl").write_text(
        json.dumps({"question_id": 81, "category": "writing", "turns": ["Write a haiku.", "Now in French."]}) + "\n")
    j = []
    for model, s1, s2 in (("weak", 6, 9), ("strong", 9, 10)):
        j.append({"question_id": 81, "model": model, "score": s1, "turn": 1, "judge": ["gpt-4", "single-v1"],
                  "user_prompt": f"[Question]\nWrite a haiku.\n\n[The Start of Assistant's Answer]\nhaiku by {model}\n"
                                 "[The End of Assistant's Answer]"})
        j.append({"question_id": 81, "model": model, "score": s2, "turn": 2, "judge": ["gpt-4", "single-v1-multi-turn"],
                  "user_prompt": "<|The Start of Assistant A's Conversation with User|>\n\n### User:\nWrite a haiku."
                                 f"\n\n### Assistant A:\nhaiku by {model}\n\n### User:\nNow in French.\n\n"
                                 f"### Assistant A:\nfrench haiku by {model} here\n\n"
                                 "<|The End of Assistant A's Conversation with User|>"})
    (d / "mt_bench/judgements.jsonl").write_text("\n".join(json.dumps(x) for x in j) + "\n")


def test_routellm_fixture_mmlu_gsm8k_mtbench(tmp_path):
    write_routellm(tmp_path)
    store = store_at(tmp_path)
    kw = dict(models=["weak", "strong"], fleet=FLEET2, token_counter=WordCounter())
    ds = RouteLLMMMLU(output_tokens_by_task={"mmlu": 1}, **kw).load(store)
    assert ds.queries["gold"].tolist() == ["B", "A"]
    assert ds.queries["category"].tolist() == ["mmlu/misc", "mmlu/misc"]
    o = ds.outcomes.set_index(["query_id", "model"])
    assert o.loc[("routellm-mmlu-misc-1", "weak"), "correct"] == False  # noqa: E712
    # cost = tokens × price: "What is 2+2?\nA. 3 ..." has 12 words in, 1 token out
    row = o.loc[("routellm-mmlu-misc-0", "strong")]
    assert row["input_tokens"] == 12 and row["output_tokens"] == 1
    assert row["cost_usd"] == pytest.approx((12 * 10.0 + 1 * 30.0) / 1e6)

    g = RouteLLMGSM8K(**kw).load(store)
    assert g.queries["gold"].iloc[0].endswith("#### 5")
    og = g.outcomes.set_index("model")
    assert og.loc["strong", "output_tokens"] == 9 and og.loc["weak", "score"] == 0.0  # counted from the response
    assert len(RouteLLMGSM8K(exclude_contaminated=True, **kw).read(store)[0]) == 0

    mt = RouteLLMMTBench(**kw).load(store)
    assert set(mt.queries["query_id"]) == {"mtbench-81-t1", "mtbench-81-t2"}
    assert len(set(mt.queries["split"])) == 1  # turn 2 follows turn 1 into the same split
    om = mt.outcomes.set_index(["query_id", "model"])
    assert om.loc[("mtbench-81-t1", "weak"), "score"] == pytest.approx(0.6)
    assert om.loc[("mtbench-81-t1", "weak"), "correct"] == False  # noqa: E712  (6/10 < 0.8)
    assert om.loc[("mtbench-81-t2", "strong"), "response"] == "french haiku by strong here"
    messages = json.loads(mt.queries.set_index("query_id").loc["mtbench-81-t2", "messages"])
    assert messages[1]["content"] == "Now in French."

    both = CombinedImporter(parts=[RouteLLMMMLU(**kw), RouteLLMGSM8K(**kw)], fleet=FLEET2,
                            token_counter=WordCounter(), name="combo").load(store)
    assert both.info["n_queries"] == 3 and both.info["parts"] == ["routellm_mmlu", "routellm_gsm8k"]


def test_routellm_bad_csv_is_named(tmp_path):
    write_routellm(tmp_path)
    p = tmp_path / "routellm/routellm/evals/mmlu/responses/mmlu_misc.csv"
    pd.DataFrame({"prompt": ["q?\nA. 1\nAnswer:"], "weak": ["maybe"], "strong": [True]}).to_csv(p, index=False)
    with pytest.raises(TableError, match=r"mmlu_misc.csv: column 'weak' must be True/False"):
        RouteLLMMMLU(models=["weak", "strong"], fleet=FLEET2, token_counter=WordCounter()).load(store_at(tmp_path))


def test_llmrouter_fixture(tmp_path):
    (tmp_path / "llmrouter").mkdir()
    (tmp_path / "llmrouter/scores_train.json").write_text(json.dumps([
        {"question": "Solve x+1=2", "scores": {"weak": 0.0, "strong": 1.0}},
        {"question": "Name a colour", "scores": {"weak": 0.6, "strong": 1.0}},
    ]))
    (tmp_path / "llmrouter/queries_train.jsonl").write_text("\n".join(json.dumps(x) for x in [
        {"task_name": "math", "query": "Solve x+1=2", "ground_truth": "1", "metric": "em", "choices": None},
        {"task_name": "natural_qa", "query": "Name a colour", "ground_truth": "red", "metric": "f1", "choices": None},
    ]))
    ds = LLMRouterImporter(fleet=FLEET2, token_counter=WordCounter(), default_output_tokens=10).load(store_at(tmp_path))
    assert ds.queries.set_index("query_id").loc["llmrouter-1", "task"] == "natural_qa"
    o = ds.outcomes.set_index(["query_id", "model"])
    assert o.loc[("llmrouter-1", "weak"), "score"] == pytest.approx(0.6)
    assert o.loc[("llmrouter-1", "weak"), "correct"] == True  # noqa: E712  (0.6 ≥ 0.5)
    assert o.loc[("llmrouter-0", "strong"), "cost_usd"] == pytest.approx((2 * 10 + 10 * 30) / 1e6)
    (tmp_path / "llmrouter/scores_train.json").write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(TableError, match=r"scores_train.json: item 0 needs"):
        LLMRouterImporter(fleet=FLEET2, token_counter=WordCounter()).load(store_at(tmp_path))


def test_routerbench_dir_with_train_test_pairs():
    imp = RouterBenchImporter(path=str(FIXTURES / "routerbench"), token_counter=WordCounter())
    ds = imp.load(store_at(FIXTURES / "nowhere"))
    # fleet derived from recorded $: tiers by mean cost per call
    assert ds.fleet.names == ["mistral-7b-chat", "WizardLM/WizardLM-13B-V1.2", "claude-instant-v1",
                              "gpt-4-1106-preview"]
    assert ds.fleet.premium == "gpt-4-1106-preview"
    # the train row with an empty model cell is dropped whole
    assert ds.info["missing_cells"] == 1
    assert "rb-mmlu-astronomy_train-mmlu-astronomy.train.3" not in set(ds.queries["query_id"])
    # train/test files, no val file: the train question whose key hashes to val is carved into val
    assert ds.queries.groupby("split").size().to_dict() == {"test": 4, "train": 6, "val": 1}
    assert ds.info["val_carved_from_train"] == 1 and ds.info["dropped_missing_outcome"] == 1
    q = ds.queries.set_index("query_id")
    row = q.loc["rb-gsm8k_test-gsm8k.test.0"]
    assert row["text"].startswith("If 4 pens cost $6")
    assert json.loads(row["messages"])[1]["content"] == "Please answer briefly."
    o = ds.outcomes.set_index(["query_id", "model"])
    assert o.loc[("rb-gsm8k_test-gsm8k.test.1", "claude-instant-v1"), "cost_usd"] == pytest.approx(0.00044)
    # "answer of claude-instant-v1 to q1"
    assert o.loc[("rb-gsm8k_test-gsm8k.test.1", "claude-instant-v1"), "output_tokens"] == 5


def test_routerbench_single_pickle_gets_seeded_split_and_error_rows(tmp_path):
    df = pd.concat([pd.read_csv(p) for p in sorted((FIXTURES / "routerbench").glob("*.csv"))], ignore_index=True)
    df.to_pickle(tmp_path / "routerbench_0shot.pkl")
    imp = RouterBenchImporter(path=str(tmp_path / "routerbench_0shot.pkl"), missing="error_row",
                              token_counter=WordCounter(), split={"fractions": {"train": 0.5, "test": 0.5}, "seed": 3})
    ds = imp.load(store_at(tmp_path))
    assert set(ds.queries["split"]) <= {"train", "test"} and len(ds.queries) == 12
    assert ds.outcomes["error"].notna().sum() == 1
    again = RouterBenchImporter(path=str(tmp_path / "routerbench_0shot.pkl"), missing="error_row",
                                token_counter=WordCounter(),
                                split={"fractions": {"train": 0.5, "test": 0.5}, "seed": 3}).load(store_at(tmp_path))
    assert again.queries["split"].tolist() == ds.queries["split"].tolist()


def test_routerbench_train_test_overlap_is_removed_from_train(tmp_path):
    for p in (FIXTURES / "routerbench").glob("gsm8k_*.csv"):
        df = pd.read_csv(p)
        if "train" in p.name:  # plant a test question in train (different case/spacing)
            df.loc[1, "prompt"] = "HALF of 90 plus a third of   60?"
        df.to_csv(tmp_path / p.name, index=False)
    ds = RouterBenchImporter(path=str(tmp_path), token_counter=WordCounter()).load(store_at(tmp_path))
    assert ds.info["dropped_train_overlapping_test"] == 1
    train_keys = set(ds.queries.loc[ds.queries["split"] == "train", "text"].map(question_key))
    test_keys = set(ds.queries.loc[ds.queries["split"] == "test", "text"].map(question_key))
    assert not train_keys & test_keys


@pytest.mark.parametrize("content,msg", [
    ("prompt,eval_name\nq,t\n", "no model columns"),
    ("sample_id,prompt,m,m|total_cost\n1,q,1.7,0.1\n", r"row 0, column 'm': score 1.7 outside"),
    ("sample_id,text\n1,q\n", "column 'prompt' is missing"),
])
def test_routerbench_malformed_files(tmp_path, content, msg):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(TableError, match=msg) as e:
        RouterBenchImporter(path=str(tmp_path / "bad.csv"), token_counter=WordCounter()).load(store_at(tmp_path))
    assert "bad.csv" in str(e.value)


def test_question_key_dedups_across_formats():
    a = "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
    b = "what is 2 + 2 ?"
    assert question_key(a) == question_key(b) == "what is 2 2"


# ---- smoke tests on the real recorded data -------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name,n_min,models", [
    ("routellm_mmlu_gsm8k", 15000, 2), ("llmrouter", 5500, 9), ("routellm_mtbench", 150, 2)])
def test_real_datasets_import(shared_data, tmp_path, name, n_min, models):
    cfg = compose("replay", [f"dataset={name}", f"paths.data_dir={tmp_path / 'data'}",
                             f"paths.data_mirror={shared_data}"], tmp_path)
    ds = instantiate(cfg.dataset).load(make_store(cfg))
    assert len(ds.queries) >= n_min and len(ds.fleet.names) == models
    assert ds.outcomes["cost_usd"].gt(0).all() and ds.outcomes["input_tokens"].gt(0).all()
    keys = ds.queries["text"].map(question_key)
    assert not set(keys[ds.queries["split"] == "test"]) & set(keys[ds.queries["split"] != "test"])
    if name == "routellm_mmlu_gsm8k":
        # RouteLLM README numbers: MMLU both right 8,818, only GPT-4 2,497, only Mixtral 742, neither 1,985
        w = ds.wide("correct")
        mm = w[w.index.str.startswith("routellm-mmlu")]
        g, x = mm["gpt-4-1106-preview"].astype(bool), mm["mistralai/Mixtral-8x7B-Instruct-v0.1"].astype(bool)
        assert [(g & x).sum(), (g & ~x).sum(), (~g & x).sum(), (~g & ~x).sum()] == [8818, 2497, 742, 1985]
        assert ds.queries["gold"].notna().mean() > 0.999
