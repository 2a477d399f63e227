"""RouterBench as published: few-shot prompts, repeated sample_ids, <task>_train/_test files without val.

The fixture (tests/fixtures/routerbench/fewshot/, written by its make_fixture.py from the format description in
../shared/data/README.md): 2 tasks × 100 questions (70 train, 30 test), every prompt of a task starting with
the same 3 demonstrations; gsm8k_train repeats sample_ids on 3 rows and has one empty model cell; one
mmlu-astronomy train prompt is also a test prompt.
"""

import json
import logging
import subprocess
import sys

import pandas as pd
import pytest

from kronaxis_lab.data.importers.routerbench import RouterBenchImporter, unique_ids
from kronaxis_lab.data.splits import final_questions, hash_splits, question_key, question_keys, shared_prefix
from kronaxis_lab.pipelines.compare import run as compare_run
from tests.conftest import FIXTURES, ROOT, compose
from tests.test_importers import WordCounter, store_at

FEWSHOT = FIXTURES / "routerbench" / "fewshot"
DEMOS = "Q: 1+1?\nA: 2.\n\nQ: 2+2?\nA: 4.\n\n"


def load(**kw):
    return RouterBenchImporter(path=str(FEWSHOT), token_counter=WordCounter(), **kw).load(store_at(FEWSHOT))


def test_shared_prefix_is_the_demonstrations_cut_at_a_blank_line():
    prompts = [DEMOS + f"Q: What is {x}?\nA:" for x in ("3+5", "3+6", "7*8")]
    # the common prefix runs into "Q: What is " / "Q: What is 3+": cut back to the blank line after the demos
    assert shared_prefix(prompts) == DEMOS
    # a majority suffices (one prompt without demonstrations), duplicates count once
    assert shared_prefix([*prompts, prompts[0], prompts[0], "Q: 9-1?\nA:"]) == DEMOS
    assert shared_prefix(prompts, min_prompts=4) == ""  # too few distinct prompts to tell
    # single-question prompts sharing words on their only line keep them ("What is " is not a line)
    assert shared_prefix(["What is a light year?", "What is a neutron star?", "What is a pulsar?"]) == ""
    # without a blank line the cut is at the last line break (an instruction line every prompt repeats)
    assert shared_prefix(["Answer briefly.\nWhy is the sky blue?", "Answer briefly.\nWhy do cats purr?",
                          "Answer briefly.\nWho wrote Hamlet?"]) == "Answer briefly.\n"


def test_final_questions_per_group_and_question_key_unchanged_for_single_questions():
    texts = pd.Series([DEMOS + "Q: 3+5?\nA:", DEMOS + "Q: 6+1?\nA:", DEMOS + "Q: 9*9?\nA:", "Q: lone?\nA:",
                       "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:", "Capital of France?\nA. Paris\nAnswer:"])
    groups = pd.Series(["gsm8k"] * 4 + ["mmlu"] * 2)
    q, stripped = final_questions(texts, groups)
    assert q.tolist()[:4] == ["Q: 3+5?\nA:", "Q: 6+1?\nA:", "Q: 9*9?\nA:", "Q: lone?\nA:"]
    assert stripped.tolist() == [True, True, True, False, False, False]
    assert q.tolist()[4:] == texts.tolist()[4:]  # a group of 2 is left alone
    # the whole prompt's key is its first demonstration ("\nA: " reads as a choice list); the final question's
    # key is the question
    assert question_key(texts[0]) == question_key(texts[1]) == "q 1 1"
    assert question_key(q[0]) == "q 3 5 a" and question_key(texts[4]) == "what is 2 2"


def test_fewshot_text_is_the_final_question_full_prompt_in_messages():
    ds = load()
    q = ds.queries.set_index("query_id")
    row = q.loc["rb-mmlu-astronomy_test-mmlu-astronomy.test.0"]
    assert row["text"].startswith("Which kind of object is") and row["text"].endswith("Answer:")
    full = json.loads(row["messages"])[0]["content"]
    assert full.startswith("The following are multiple choice questions") and full.endswith(row["text"])
    assert ds.info["final_question_texts"] == len(ds.queries) + 1  # every prompt read (one dropped later)
    # input tokens are those of the whole prompt the models read, not of the final question
    tok = ds.outcomes.set_index(["query_id", "model"]).loc[("rb-mmlu-astronomy_test-mmlu-astronomy.test.0",
                                                             "gpt-4-1106-preview"), "input_tokens"]
    assert tok == len(full.split()) > 3 * len(row["text"].split())
    # keys: one per question, so the only train/test overlap is the planted one
    assert ds.info["dropped_train_overlapping_test"] == 1
    keys = ds.queries["text"].map(question_key)
    assert keys.nunique() == len(keys)
    assert not set(keys[ds.queries["split"] == "test"]) & set(keys[ds.queries["split"] != "test"])


def test_keying_on_the_whole_prompt_reproduces_the_bug_loudly(caplog):
    """Without final_question every prompt is keyed on its first demonstration: the leak filter empties train,
    and says so instead of letting training run silently on what is left."""
    with caplog.at_level(logging.WARNING, logger="kronaxis_lab.data.importers.base"):
        ds = load(final_question=False)
    assert ds.info["dropped_train_overlapping_test"] == 139 and set(ds.queries["split"]) == {"test"}
    assert any("139 of 139 train/val queries dropped" in r.getMessage() for r in caplog.records)


def test_duplicate_sample_ids_become_unique_with_a_counted_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="kronaxis_lab.data.importers.routerbench"):
        ds = load()
    assert ds.info["renamed_duplicate_sample_ids"] == 3
    (msg,) = [r.getMessage() for r in caplog.records if "sample_id" in r.getMessage()]
    assert "gsm8k_train.csv: 3 rows repeat a sample_id" in msg
    ids = set(ds.queries["query_id"])
    assert {"rb-gsm8k_train-gsm8k.train.0", "rb-gsm8k_train-gsm8k.train.0#1", "rb-gsm8k_train-gsm8k.train.0#2",
            "rb-gsm8k_train-gsm8k.train.3#1"} <= ids
    assert ds.queries["query_id"].is_unique
    ids, n = unique_ids(pd.Series(["a", "b", "a", "a", "c"]))
    assert ids.tolist() == ["a", "b", "a#1", "a#2", "c"] and n == 2


def test_val_is_carved_from_train_seeded_and_leak_free():
    ds = load()
    info = ds.info
    assert info["dropped_missing_outcome"] == 1 and info["missing_cells"] == 1
    assert info["splits"] == {"train": 125, "val": 13, "test": 60} and info["val_carved_from_train"] == 13
    q = ds.queries
    assert set(q.loc[q["split"] == "test", "source"]) == {"routerbench/gsm8k_test.csv",
                                                         "routerbench/mmlu-astronomy_test.csv"}
    assert not q.loc[q["split"] != "test", "source"].str.endswith("_test.csv").any()
    keys = question_keys(q["text"])
    # the carved questions are those the configured hash split puts in val: the same in every source and run
    hashed = hash_splits(keys, {"train": 0.6, "val": 0.1, "test": 0.3}, 0)
    assert (hashed[q["split"] == "val"] == "val").all() and not (hashed[q["split"] == "train"] == "val").any()
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(keys[q["split"] == a]) & set(keys[q["split"] == b])
    other = load(split={"seed": 1})
    assert set(other.split("val")["query_id"]) != set(ds.split("val")["query_id"])
    assert set(other.split("test")["query_id"]) == set(ds.split("test")["query_id"])  # the files' test stays
    # a val fraction of 0 carves nothing
    none = load(split={"fractions": {"train": 0.7, "test": 0.3}})
    assert "val" not in none.info["splits"] and none.info["val_carved_from_train"] == 0


def test_compare_on_a_routerbench_directory_names_a_winner(tmp_path):
    """The command contract, composed as the CLI would: a directory of <task>_train/_test files, no val file."""
    over = ["datasets=[routerbench]", f"overrides=['dataset.path={FEWSHOT}']", "bootstrap.n=50",
            "classifiers=[tfidf_logreg,rules,'ens:ensemble@~classifier.members.knn@~classifier.members.cluster_prior"
            "@classifier.n_folds=2@classifier.show_progress=false']"]
    res = compare_run(compose("compare", over, tmp_path))
    saved = json.loads((tmp_path / "comparison.json").read_text())
    (r,) = saved["datasets"]
    for row in r["rows"]:
        assert {"label", "aiq", "savings_at_95pct_premium", "val_aiq"} <= set(row)
    w = r["winner"]
    trained = [row for row in r["rows"] if row["kind"] == "classifier"]
    assert [row["label"] for row in trained] == ["tfidf_logreg", "rules", "ens"]
    best = max(trained, key=lambda row: row["val_aiq"])
    assert w["label"] == best["label"] and w["val_aiq"] == best["val_aiq"] and w["test_aiq"] == best["aiq"]
    assert w["policy"] in ("wtp", "threshold") and w["label"] != "task-prior+wtp (uses task label)"
    assert (tmp_path / "routerbench/train" / w["label"] / "classifier/classifier.json").is_file()
    assert w["classifier_dir"] == str(tmp_path / "routerbench/train" / w["label"] / "classifier")
    assert w["export_command"] == f"kronaxis-export run_dir={w['classifier_dir']} policy={w['policy']}"
    assert r["focus"] == w["label"]  # the bootstrap asks whether the winner's lead is real
    metrics = json.loads((tmp_path / "routerbench/replay/metrics.json").read_text())
    info = metrics["dataset_info"]
    assert info["splits"] == {"train": 125, "val": 13, "test": 60} and info["dropped_train_overlapping_test"] == 1
    assert res["markdown"].index("winner on routerbench: " + w["label"]) < res["markdown"].index("| router")


@pytest.mark.slow
def test_compare_cli_contract(tmp_path):
    """`kronaxis-compare datasets=[routerbench] "overrides=['dataset.path=<dir>']" hydra.run.dir=<out>`, verbatim
    (cheap classifiers), prints the winner first."""
    out = tmp_path / "out"
    cmd = [str(ROOT / ".venv/bin/kronaxis-compare") if (ROOT / ".venv/bin/kronaxis-compare").is_file()
           else sys.executable, "datasets=[routerbench]", f"overrides=['dataset.path={FEWSHOT}']",
           f"hydra.run.dir={out}", "classifiers=[tfidf_logreg,mf]", "bootstrap.n=0"]
    if cmd[0] == sys.executable:
        cmd[1:1] = ["-m", "kronaxis_lab.pipelines.compare"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    # Hydra's log lines go to stdout too; what the pipeline prints comes after them and starts with the winner
    lines = p.stdout.splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("winner on routerbench: "))
    assert not any(ln.startswith("[20") for ln in lines[first:]) and lines[-1].startswith("written: ")
    w = json.loads((out / "comparison.json").read_text())["datasets"][0]["winner"]
    assert w["label"] in ("tfidf_logreg", "mf")
    assert "dropped_train_overlapping_test" in json.loads((out / "routerbench/replay/metrics.json").read_text())[
        "dataset_info"]
