"""Question-set loaders (GSM8K, MMLU, HumanEval, MT-Bench, mixes) and prompt templates."""

import gzip
import json

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from kronaxis_lab.data.questions import GSM8K, MMLU, HumanEval, MTBenchQuestions, QuestionMix, QuestionSetError
from kronaxis_lab.data.splits import hash_splits, question_keys
from kronaxis_lab.data.store import DataStore
from kronaxis_lab.data.tables import QUERY_COLUMNS
from kronaxis_lab.grading.code_exec import CodeExecutionGrader, parse_code_gold
from kronaxis_lab.labeling.prompts import PromptBook, PromptError
from tests.conftest import CONFIGS, compose


def store_for(tmp_path):
    return DataStore(data_dir=tmp_path, mirror=tmp_path / "no-mirror")


def write_jsonl(path, rows, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


GSM = [{"question": f"Tom has {i} apples and buys 2 more. How many?", "answer": f"{i}+2={i + 2}\n#### {i + 2}"}
       for i in range(10)]


def test_gsm8k_limit_sample_ids_and_splits(tmp_path):
    write_jsonl(tmp_path / "gsm8k/test.jsonl", GSM)
    full = GSM8K().load(store_for(tmp_path))
    assert list(full.columns) == list(QUERY_COLUMNS)
    assert full["query_id"].tolist() == [f"gsm8k-test-{i}" for i in range(10)]
    assert full["gold"].iloc[3].endswith("#### 5") and set(full["task"]) == {"gsm8k"}
    # split = the shared hash rule on the normalised question (same as the importers)
    expected = hash_splits(question_keys(full["text"]), {"train": 0.6, "val": 0.1, "test": 0.3}, 0)
    assert full["split"].tolist() == expected.tolist()
    first = GSM8K(limit=3).load(store_for(tmp_path))
    assert first["query_id"].tolist() == ["gsm8k-test-0", "gsm8k-test-1", "gsm8k-test-2"]
    s1 = GSM8K(sample=4, seed=1).load(store_for(tmp_path))
    s2 = GSM8K(sample=4, seed=1).load(store_for(tmp_path))
    s3 = GSM8K(sample=4, seed=2).load(store_for(tmp_path))
    assert s1["query_id"].tolist() == s2["query_id"].tolist() and len(s1) == 4
    assert s1["query_id"].tolist() != s3["query_id"].tolist()
    # a sampled row keeps its id and split
    merged = s1.merge(full, on="query_id", suffixes=("", "_full"))
    assert (merged["split"] == merged["split_full"]).all() and (merged["text"] == merged["text_full"]).all()


def test_bad_files_give_clear_errors(tmp_path):
    write_jsonl(tmp_path / "gsm8k/test.jsonl", [GSM[0], {"question": "no answer here"}])
    with pytest.raises(QuestionSetError, match=r"test.jsonl: line 2 lacks field\(s\) \['answer'\]"):
        GSM8K().load(store_for(tmp_path))
    write_jsonl(tmp_path / "gsm8k/test.jsonl", [GSM[0], {"question": "q", "answer": "42"}])
    with pytest.raises(QuestionSetError, match=r"'#### N'.*line\(s\) \[2\]"):
        GSM8K().load(store_for(tmp_path))
    (tmp_path / "gsm8k/test.jsonl").write_text(json.dumps(GSM[0]) + "\n{not json\n")
    with pytest.raises(QuestionSetError, match="line 2 is not valid JSON"):
        GSM8K().load(store_for(tmp_path))
    with pytest.raises(QuestionSetError, match="not found"):
        GSM8K(path="gsm8k/nope.jsonl").load(store_for(tmp_path))
    with pytest.raises(QuestionSetError, match="limit must be a positive integer"):
        GSM8K(limit=0)
    write_jsonl(tmp_path / "mmlu/mmlu_test.jsonl.gz", [
        {"question": "2+2?", "answer_a": "3", "answer_b": "4", "answer_c": "5", "answer_d": "6", "correct_answer": "E",
         "topic": "math"}], gz=True)
    with pytest.raises(QuestionSetError,
                       match=r"correct_answer is not one of \['A', 'B', 'C', 'D'\] at line\(s\) \[1\]"):
        MMLU().load(store_for(tmp_path))


def test_mmlu_drops_header_rows_and_formats_choices(tmp_path):
    rows = [{"question": "question", "answer_a": "answer_a", "answer_b": "answer_b", "answer_c": "answer_c",
             "answer_d": "answer_d", "correct_answer": "answer", "topic": "college mathematics"},
            {"question": "What is 2+2?", "answer_a": "3", "answer_b": "4", "answer_c": "5", "answer_d": "6",
             "correct_answer": "B", "topic": "elementary mathematics"}]
    write_jsonl(tmp_path / "mmlu/mmlu_test.jsonl.gz", rows, gz=True)
    q = MMLU().load(store_for(tmp_path))
    assert len(q) == 1
    row = q.iloc[0]
    assert row["text"] == "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6"
    assert row["gold"] == "B" and row["category"] == "mmlu/elementary_mathematics" and row["query_id"] == "mmlu-test-1"


def test_real_question_sets(shared_data):
    store = DataStore(data_dir=shared_data)
    mmlu = MMLU().load(store)
    assert len(mmlu) == 14042 and not (mmlu["text"].str.startswith("question\n")).any()
    assert set(mmlu["gold"]) == {"A", "B", "C", "D"} and mmlu["category"].nunique() == 57
    he = HumanEval().load(store)
    assert len(he) == 164 and he["query_id"].iloc[0] == "humaneval-0"
    task = parse_code_gold(he["gold"].iloc[0], he["text"].iloc[0])  # the code grader reads our gold
    assert task.kind == "humaneval" and task.entry_point == "has_close_elements" and "def check" in task.tests
    # our gold runs in the code grader: canonical solutions pass, a wrong body fails
    raw = {json.loads(line)["task_id"]: json.loads(line)
           for line in gzip.open(shared_data / "humaneval/HumanEval.jsonl.gz", "rt")}
    right = [raw[f"HumanEval/{i}"]["canonical_solution"] for i in range(3)]
    scores = CodeExecutionGrader().grade([*right, "    return None\n"], [*he["gold"][:3], he["gold"][0]],
                                         [*he["text"][:3], he["text"][0]])
    assert scores.tolist() == [1.0, 1.0, 1.0, 0.0]
    mt = MTBenchQuestions().load(store)
    assert len(mt) == 80 and mt["category"].nunique() == 8
    assert mt["query_id"].str.fullmatch(r"mtbench-\d+-t1").all()
    assert mt["gold"].notna().sum() >= 20  # GPT-4 references for math / reasoning / coding
    assert mt.loc[mt["category"] == "mt_bench/writing", "gold"].isna().all()
    gsm = GSM8K().load(store)
    assert len(gsm) == 1319 and gsm["gold"].str.contains("####").all()


def test_question_set_yamls_and_live_mix(shared_data, tmp_path):
    """configs/questions/* as kronaxis-label composes them (`dataset=<name>`, through the alias in configs/dataset/)."""
    store = DataStore(data_dir=shared_data)
    for name, n in [("gsm8k", 1319), ("humaneval", 164), ("mtbench_questions", 80)]:
        qs = instantiate(compose("label", [f"dataset={name}"], tmp_path).dataset)
        assert len(qs.load(store)) == n
    mix = instantiate(compose("label", ["dataset=live_mix"], tmp_path).dataset)
    assert isinstance(mix, QuestionMix)
    q = mix.load(store)
    assert q["task"].value_counts().to_dict() == {"gsm8k": 50, "mmlu": 50, "humaneval": 20}
    assert q["category"].str.startswith("mmlu/").sum() == 50 and q[q.task == "mmlu"]["category"].nunique() > 20
    assert q["query_id"].is_unique and set(q["split"]) <= {"train", "val", "test"}


def test_mix_rejects_overlapping_parts(tmp_path):
    write_jsonl(tmp_path / "gsm8k/test.jsonl", GSM)
    with pytest.raises(QuestionSetError, match="share query ids"):
        QuestionMix(parts=[GSM8K(limit=3), GSM8K(limit=2)]).load(store_for(tmp_path))


def test_prompt_book_from_yaml():
    book = instantiate(OmegaConf.load(CONFIGS / "prompt/default.yaml"))
    q = {"query_id": "q1", "text": "What is {x}? 2+2", "task": "gsm8k", "category": "gsm8k", "messages": None}
    chat = book.request(q, "chat")
    assert chat.prompt is None and chat.messages[-1]["role"] == "user"
    assert chat.messages[-1]["content"].startswith("What is {x}? 2+2")  # braces in the text are kept verbatim
    assert "####" in chat.messages[-1]["content"] and chat.max_tokens == 256 and chat.temperature == 0.0
    comp = book.request(q, "completion")
    assert comp.messages is None and comp.prompt.endswith("Question: What is {x}? 2+2\nAnswer:")
    assert comp.prompt.count("####") == 2 and comp.stop == ["\n\n", "\nQuestion:"]
    he = book.request({"query_id": "h", "text": "def f():\n", "task": "humaneval"}, "completion")
    assert he.prompt == "def f():\n" and "\ndef " in he.stop
    other = book.request({"query_id": "o", "text": "hi", "task": "unknown_task"}, "chat")
    assert other.messages == [{"role": "user", "content": "hi"}]
    conv = json.dumps([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                       {"role": "user", "content": "c"}])
    multi = book.request({"query_id": "m", "text": "a c", "task": "mt_bench", "messages": conv}, "chat")
    assert [m["content"] for m in multi.messages] == ["a", "b", "c"]
    with pytest.raises(PromptError, match="style"):
        book.request(q, "base")


def test_prompt_book_validation():
    with pytest.raises(PromptError, match=r"'user' template must contain '\{text\}'"):
        PromptBook({"gsm8k": {"user": "no placeholder"}})
    with pytest.raises(PromptError, match="unknown field"):
        PromptBook({"gsm8k": {"usr": "{text}"}})
    with pytest.raises(PromptError, match="no prompt template for task 'x'"):
        PromptBook({"gsm8k": {}}).check_tasks(["x"])
