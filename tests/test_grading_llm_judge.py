"""LLMJudgeGrader: MT-Bench judge prompts from the YAML config, rating parsing, failures as NaN, real records."""

import json
import math
import re
from pathlib import Path

import pytest
import yaml

from kronaxis_lab.backends.base import Backend, GenResult
from kronaxis_lab.grading._common import GradingInputError
from kronaxis_lab.grading.llm_judge import LLMJudgeGrader

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "grader" / "llm_judge.yaml"


class FakeJudge(Backend):
    """Returns canned judgements (a function of the request), records what it was sent."""

    model = "fake-judge"

    def __init__(self, reply):
        self.reply = reply
        self.requests = []

    async def agenerate(self, requests):
        self.requests.extend(requests)
        out = []
        for r in requests:
            text = self.reply(r)
            out.append(GenResult(error=text[len("ERROR:"):]) if text.startswith("ERROR:") else GenResult(text=text))
        return out


def _grader(backend, **kw) -> LLMJudgeGrader:
    cfg = yaml.safe_load(CONFIG.read_text())
    params = {k: v for k, v in cfg.items() if not k.startswith("_") and k != "backend"}
    params.update(show_progress=False, **kw)
    return LLMJudgeGrader(backend=backend, **params)


def test_ratings_parsed_and_failures_counted_not_raised():
    replies = ["Good. Rating: [[8]]", "Rating: [[9.5]]", "I'd say [7].", "No rating at all.", "Rating: [[11]]",
               "ERROR:HTTP 503"]
    it = iter(replies)
    g = _grader(FakeJudge(lambda r: next(it)))
    scores = g.grade(["answer"] * 6, [None] * 6, ["question"] * 6)
    assert scores[:3].tolist() == pytest.approx([0.8, 0.95, 0.7])
    assert all(math.isnan(s) for s in scores[3:])
    assert g.last_stats_["unparsable"] == 2 and g.last_stats_["judge_errors"] == 1 and g.last_stats_["no_answer"] == 3
    assert g.last_stats_["mean_rating"] == pytest.approx((8 + 9.5 + 7) / 3)
    assert g.last_judgements_[-1] is None


def test_prompt_selection_and_contents():
    judge = FakeJudge(lambda r: "[[5]]")
    g = _grader(judge)
    conv = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "Q1?"},
            {"role": "assistant", "content": "A1."}, {"role": "user", "content": "Q2?"}]
    g.grade(["plain answer", "math answer", "turn-2 answer", "turn-2 math"],
            [None, "REF-1", None, ["REF-1", "REF-2"]],
            ["What is X?", "What is 2+2?", conv, json.dumps(conv)])
    systems = [r.messages[0]["content"] for r in judge.requests]
    users = [r.messages[1]["content"] for r in judge.requests]
    assert systems[0] == systems[1] == "You are a helpful assistant."
    assert "[Question]\nWhat is X?" in users[0] and "Reference" not in users[0] and "plain answer" in users[0]
    assert "[The Start of Reference Answer]\nREF-1\n" in users[1]
    assert systems[2].startswith("Please act as an impartial judge") and "### User:\nQ1?" in users[2]
    assert "### Assistant A:\nA1." in users[2] and "### Assistant A:\nturn-2 answer" in users[2] and "be nice" not in users[2]
    assert "### Reference answer:\nREF-1" in users[3] and "### Reference answer:\nREF-2" in users[3]
    assert all(r.temperature == 0.0 and r.max_tokens == 2048 for r in judge.requests)


def test_gold_and_query_encodings():
    judge = FakeJudge(lambda r: "[[5]]")
    g = _grader(judge)
    g.grade(["a", "a", "a"], ['{"reference": ["R-ONE", "R-TWO"]}', "[3, 2, 1]", ["R-ONE"]], ["q", "[1, 2, 3]", "q"])
    users = [r.messages[1]["content"] for r in judge.requests]
    assert "Reference Answer]\nR-ONE\n" in users[0] and "R-TWO" not in users[0]  # turn 1 gets reference 1
    assert "[Question]\n[1, 2, 3]\n" in users[1] and "Reference Answer]\n[3, 2, 1]\n" in users[1]  # JSON-looking text
    assert "Reference Answer]\nR-ONE\n" in users[2]


def test_batches_and_backend_contract():
    judge = FakeJudge(lambda r: "[[6]]")
    g = _grader(judge, batch_size=2)
    assert g.grade(["a"] * 5, None, ["q"] * 5).tolist() == pytest.approx([0.6] * 5)
    assert len(judge.requests) == 5

    class Broken(FakeJudge):
        async def agenerate(self, requests):
            return []

    with pytest.raises(RuntimeError, match="0 results"):
        _grader(Broken(None)).grade(["a"], [None], ["q"])


def test_bad_input_errors():
    g = _grader(FakeJudge(lambda r: "[[5]]"))
    with pytest.raises(GradingInputError, match="queries"):
        g.grade(["a"], [None])
    with pytest.raises(GradingInputError, match="row 0"):
        g.grade(["a"], [None], [[{"role": "assistant", "content": "x"}]])
    conv = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
    with pytest.raises(GradingInputError, match="one reference per turn"):
        g.grade(["a"], ["single ref"], [conv])
    with pytest.raises(ValueError, match="backend"):
        _grader(None).grade(["a"], [None], ["q"])
    with pytest.raises(ValueError, match="missing"):
        LLMJudgeGrader(prompts={"single": {"system_prompt": "", "prompt_template": ""}})


def test_yaml_templates_are_the_mt_bench_originals(shared_data):
    path = shared_data / "mtbench" / "data_judge_prompts.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not present")
    originals = {json.loads(l)["name"]: json.loads(l) for l in path.read_text().splitlines() if l.strip()}
    cfg = yaml.safe_load(CONFIG.read_text())
    for key, p in cfg["prompts"].items():
        o = originals[p["name"]]
        assert o["type"] == "single"
        assert (p["system_prompt"], p["prompt_template"]) == (o["system_prompt"], o["prompt_template"]), key


def _template_regex(template: str) -> re.Pattern:
    """Regex that reads the fields back out of a filled template (repeated fields must be equal)."""
    out, seen, pos = "", set(), 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out += re.escape(template[pos: m.start()])
        out += f"(?P={m.group(1)})" if m.group(1) in seen else f"(?P<{m.group(1)}>.*?)"
        seen.add(m.group(1))
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]) + r"\Z", re.DOTALL)


def test_reproduces_routellm_recorded_mt_bench_judgements(shared_data):
    """RouteLLM's 320 GPT-4 judgements (GPT-4-1106 and Mixtral answers, both turns): our prompts are
    byte-identical to the recorded judge prompts, and replaying the recorded judgement texts through a
    fake backend gives exactly the recorded scores / 10."""
    base = shared_data / "routellm" / "routellm" / "evals" / "mt_bench"
    refs_path = shared_data / "mtbench" / "reference_answer_gpt-4.jsonl"
    if not (base / "judgements.jsonl").exists() or not refs_path.exists():
        pytest.skip("RouteLLM MT-Bench judgements not present")
    records = [json.loads(l) for l in (base / "judgements.jsonl").read_text().splitlines() if l.strip()]
    questions = {json.loads(l)["question_id"]: json.loads(l) for l in (base / "question.jsonl").read_text().splitlines() if l.strip()}
    refs = {json.loads(l)["question_id"]: json.loads(l)["choices"][0]["turns"] for l in refs_path.read_text().splitlines() if l.strip()}
    cfg = yaml.safe_load(CONFIG.read_text())
    key_of = {p["name"]: k for k, p in cfg["prompts"].items()}
    judgement_of = {r["user_prompt"]: r["judgment"] for r in records}
    judge = FakeJudge(lambda req: judgement_of.get(req.messages[1]["content"], "ERROR:prompt differs from the record"))
    g = _grader(judge)

    responses, golds, queries = [], [], []
    for r in records:
        key = key_of[r["judge"][1]]
        fields = _template_regex(cfg["prompts"][key]["prompt_template"]).match(r["user_prompt"])
        q = questions[r["question_id"]]["turns"]
        if key.startswith("single"):
            queries.append(q[0])
            responses.append(fields["answer"])
        else:
            queries.append([{"role": "user", "content": q[0]}, {"role": "assistant", "content": fields["answer_1"]},
                            {"role": "user", "content": q[1]}])
            responses.append(fields["answer_2"])
        golds.append(refs[r["question_id"]] if key.endswith("_ref") else None)
    scores = g.grade(responses, golds, queries)
    assert g.last_stats_["judge_errors"] == 0 and g.last_stats_["no_answer"] == 0
    assert scores.tolist() == pytest.approx([r["score"] / 10 for r in records])
    assert [r.messages[0]["content"] for r in judge.requests] == [cfg["prompts"][key_of[r["judge"][1]]]["system_prompt"] for r in records]
