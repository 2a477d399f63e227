"""CodeExecutionGrader: code extraction, HumanEval / MBPP assembly, the plain-data wire, scoring in sandboxes."""

import gzip
import json
import math

import pytest

from kronaxis_lab.grading import code_wire as wire
from kronaxis_lab.grading._common import GradingInputError
from kronaxis_lab.grading.code_exec import (
    CodeExecutionGrader,
    build_candidate,
    build_tests,
    extract_code,
    parse_code_gold,
)

HE = {
    "task_id": "Toy/0",
    "prompt": 'from typing import List\n\n\ndef add_all(xs: List[int]) -> int:\n    """Sum of xs.\n    >>> add_all([1, 2])\n    3\n    """\n',
    "entry_point": "add_all",
    "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n",
}
MBPP = ["assert square(3) == 9", "assert square(-2) == 4"]


@pytest.fixture(scope="module")
def grader():
    return CodeExecutionGrader({"timeout_s": 4, "num_workers": 2, "show_progress": False})


def test_extract_code_variants():
    fenced = "Sure!\n```python\ndef f():\n    return 1\n```\nDone."
    assert extract_code(fenced) == "def f():\n    return 1\n"
    two = "```python\nimport math\n```\nthen\n```python\ndef g():\n    return 2\n```"
    assert "def g" in extract_code(two, entry_point="g") and "import math" not in extract_code(two, entry_point="g")
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"  # cut-off generation
    prose = "Here is the function:\ndef f(x):\n    return x + 1\nThis adds one to x."
    assert extract_code(prose) == "def f(x):\n    return x + 1"
    body = "    return sorted(xs)\n\n\ndef helper():\n    pass\n"
    assert extract_code(body).startswith("    return sorted(xs)")  # raw completion kept whole


def test_gold_formats():
    assert parse_code_gold(HE).kind == "humaneval"
    assert parse_code_gold(json.dumps(HE)).entry_point == "add_all"
    t = parse_code_gold(HE["test"], query=HE["prompt"])  # LLMRouter: test code as gold, prompt as query
    assert (t.kind, t.entry_point) == ("humaneval", "add_all")
    assert parse_code_gold(MBPP).entry_point == "square"
    assert parse_code_gold(str(MBPP)).kind == "mbpp"  # LLMRouter stores the list's repr
    d = parse_code_gold({"test_list": MBPP, "test_setup_code": "K = 1", "test_imports": ["import math"]})
    assert "import math" in d.setup and "K = 1" in d.setup
    with pytest.raises(GradingInputError, match="row 3"):
        parse_code_gold({"foo": 1}, row=3)
    with pytest.raises(GradingInputError, match="query"):
        parse_code_gold(HE["test"], query=None)


def test_humaneval_response_styles(grader):
    responses = [
        "    return sum(xs)\n",  # body, as the canonical solutions are written
        "return sum(xs)",  # body at column 0
        "```python\ndef add_all(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total\n```",
        "Here you go:\n```python\nfrom typing import List\n\ndef add_all(xs: List[int]) -> int:\n    return sum(xs)\n\n"
        "if __name__ == '__main__':\n    print(add_all([int(input())]))\n```",  # __main__ block must not run
        "    return sum(xs) + 1\n",  # wrong
        "    while True:\n        pass\n",  # hangs: timeout is a failure
        "",  # nothing
    ]
    scores = grader.grade(responses, [HE] * len(responses))
    assert scores.tolist() == [1, 1, 1, 1, 0, 0, 0]
    st = grader.last_stats_
    assert (st["passed"], st["failed"], st["no_answer"]) == (4, 1, 1)
    assert st["timeout"] == 1 and st["mode"] in ("bwrap", "none")
    assert grader.last_results_[-1] is None and "AssertionError" in grader.last_results_[4].stderr


def test_mbpp(grader):
    responses = [
        "```python\ndef square(x):\n    return x * x\n```",
        "def square(x):\n    return x ** 2",
        "```python\ndef square(x):\n    return x + x\n```",
        "I cannot write code.",
    ]
    golds = [MBPP, str(MBPP), {"test_list": MBPP, "test_setup_code": "", "test_imports": []}, MBPP]
    assert grader.grade(responses, golds).tolist() == [1, 1, 0, 0]


def test_candidate_and_tests_are_built_apart():
    task = parse_code_gold(HE)
    cand = build_candidate(task, "```python\ndef add_all(xs):\n    return sum(xs)\n```")
    assert cand.startswith(HE["prompt"]) and "def check" not in cand and "assert" not in cand  # no tests in it
    assert build_candidate(task, "   \n") is None
    spec = build_tests(task)
    assert spec["setup"] == HE["prompt"] and spec["tests"] == HE["test"] and "return sum" not in json.dumps(spec)
    assert (spec["functions"], spec["call"]) == (["add_all"], "check")
    mbpp = build_tests(parse_code_gold({"test_list": ["assert f(g(1), len([2])) == 3"], "test_setup_code": "def g(x):"
                                        "\n    return x", "test_imports": ["import math"]}))
    assert mbpp["functions"] == ["f"] and mbpp["call"] is None  # g comes from the setup, len is a builtin


def test_wire_round_trip_and_rejections():
    values = [None, True, 0, -3, 2**80, 1.5, -0.0, math.inf, "é\n\udcff", [1, [2]], (1, (2,)), {"a": 1, 2: (3,)},
              {1, "x"}, frozenset({2}), b"\x00\xff", 1 + 2j, [], (), {}]
    for v in values:
        back = wire.loads(wire.dumps(wire.encode(v)), 1 << 20)
        assert type(back) is type(v) and (back == v or (v != v and back != back)), v
    assert math.isnan(wire.loads(wire.dumps(wire.encode(math.nan)), 100))

    class Sneaky(int):
        def __eq__(self, other):
            return True

    for bad in [Sneaky(1), object(), [1, Sneaky(2)], {"k": print}, range(3), iter([1])]:
        with pytest.raises(wire.WireError):
            wire.encode(bad)
    for raw in ['{"x": 1}', '["ok", {"t": [1], "d": []}]', '{"d": [[[1], 2]]}', '{"s": [[1]]}', "NaN",
                '{"f": "1e999"}', "[" * 100000 + "]" * 100000, "not json", '"' + "a" * 200 + '"']:
        with pytest.raises(wire.WireError):
            wire.loads(raw, 100 if raw.startswith('"') else 10**6)


def test_strict_equality():
    eq = wire.strict_eq
    assert eq(1, 1.0) and eq([1, (2, "a")], [1.0, (2, "a")]) and eq({"a": [1]}, {"a": [1]})
    assert not eq(True, 1) and not eq(1, True) and not eq(0, False) and not eq([0], [False])
    assert not eq({1: "a"}, {True: "a"}) and not eq({1, 2}, {True, 2}) and not eq([1], (1,))
    assert not eq(None, 0) and not eq("1", 1) and not eq(math.nan, math.nan)
    ns = {wire.EQ_NAME: eq}
    exec(wire.compile_strict("r1 = True == 1\nr2 = [1] != [True]\nr3 = 1 < 2 == 2", "t.py"), ns)
    assert (ns["r1"], ns["r2"], ns["r3"]) == (False, True, True)


def test_bool_for_int_and_wrong_container_type_fail(grader):
    task = {"prompt": "def count(xs):\n", "entry_point": "count",
            "test": "def check(candidate):\n    assert candidate([5]) == 1\n    assert candidate([]) == 0\n"}
    responses = ["    return len(xs)\n", "    return bool(xs)\n", "    return float(len(xs))\n"]
    assert grader.grade(responses, [task] * 3).tolist() == [1.0, 0.0, 1.0]  # True != 1, but 1.0 == 1


def test_canonical_humaneval_solutions_pass(shared_data, grader):
    """Real HumanEval: a sample of canonical solutions (as bodies and as fenced full functions) all pass."""
    path = shared_data / "humaneval" / "HumanEval.jsonl.gz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f][::8]  # 21 problems
    bodies = [p["canonical_solution"] for p in problems]
    fenced = [f"Solution:\n```python\n{p['prompt']}{p['canonical_solution']}\n```\n" for p in problems]
    wrong = ["    return None\n"] * len(problems)
    scores = grader.grade(bodies + fenced + wrong, problems * 3)
    n = len(problems)
    assert scores[: 2 * n].tolist() == [1.0] * (2 * n), [r.stderr[-300:] for r in grader.last_results_ if not r.passed][:3]
    assert scores[2 * n:].sum() == 0


@pytest.mark.slow
def test_all_humaneval_canonical_solutions_pass(shared_data):
    """All 164 canonical solutions pass the two-sandbox harness (remote calls, plain-data wire, strict ==)."""
    path = shared_data / "humaneval" / "HumanEval.jsonl.gz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f]
    grader = CodeExecutionGrader({"timeout_s": 20, "num_workers": 2, "show_progress": False})
    scores = grader.grade([p["canonical_solution"] for p in problems], problems)
    failing = [(p["task_id"], r.status, r.stderr[-300:]) for p, r in zip(problems, grader.last_results_) if not r.passed]
    assert len(problems) == 164 and scores.tolist() == [1.0] * 164, failing
