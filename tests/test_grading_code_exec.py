"""CodeExecutionGrader: code extraction, HumanEval / MBPP program assembly, scoring through the sandbox."""

import gzip
import json

import pytest

from kronaxis_lab.grading._common import GradingInputError
from kronaxis_lab.grading.code_exec import CodeExecutionGrader, build_program, extract_code, parse_code_gold

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
    assert st["timeout"] == 1 and st["mode"] in ("namespaces", "userns", "none")
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


def test_build_program_keeps_prompt_helpers():
    task = parse_code_gold(HE)
    prog = build_program(task, "```python\ndef add_all(xs):\n    return sum(xs)\n```")
    assert prog.startswith(HE["prompt"]) and prog.rstrip().endswith("check(add_all)")
    assert build_program(task, "   \n") is None


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
