"""Code execution grading (HumanEval / MBPP): run the model's code with the unit tests in a sandbox.

Score = 1 if the assembled program exits cleanly after all its tests ran, else 0 (timeouts, crashes,
failed asserts, sandbox errors). The program runs in `kronaxis_lab.grading.sandbox.Sandbox`.

Gold formats (one per row; JSON / Python-repr strings of these are decoded):
- HumanEval dict ``{"prompt", "test", "entry_point", ...}`` (a HumanEval.jsonl row). Program =
  prompt + completion + test + ``check(entry_point)``. The response may hold the whole function
  (``def entry_point(...)``: it is appended after the prompt and replaces the stub) or only the body
  (unindented bodies are indented).
- HumanEval test code alone (a string with ``def check(``, as LLMRouter stores it): the prompt is the
  row's query and the entry point the last function defined in it.
- MBPP: a list of assert strings, or ``{"test_list": [...], "test_setup_code": "", "test_imports": [...]}``.
  Program = imports + setup + code + asserts.

Code is taken from the response's ```python fences (the block defining the function under test if
several), an unclosed fence (cut-off generation), else the whole response trimmed to its Python part.
"""

from __future__ import annotations

import ast
import builtins
import re
import textwrap
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from kronaxis_lab.grading._common import GradingInputError, as_text, check_lengths, decode_structured
from kronaxis_lab.grading.base import Grader
from kronaxis_lab.grading.sandbox import Sandbox, SandboxResult

_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CODE_START_RE = re.compile(r"^(?:def |class |import |from |@|async def )", re.MULTILINE)


@dataclass
class CodeTask:
    """What to run for one row: `kind` is "humaneval" or "mbpp"."""

    kind: str
    tests: str
    prompt: str = ""
    entry_point: str = ""
    setup: str = ""


def parse_code_gold(gold: Any, query: Any = None, row: int = 0) -> CodeTask:
    """Recognise a HumanEval or MBPP gold (see module docstring)."""
    g = decode_structured(gold)
    if isinstance(g, dict):
        if "test" in g and "entry_point" in g:
            prompt = g.get("prompt") if g.get("prompt") is not None else (query if isinstance(query, str) else "")
            return CodeTask("humaneval", str(g["test"]), prompt=str(prompt), entry_point=str(g["entry_point"]))
        if "test_list" in g:
            setup = "\n".join([*map(str, g.get("test_imports") or []), str(g.get("test_setup_code") or "")])
            return CodeTask("mbpp", "\n".join(map(str, g["test_list"])), setup=setup,
                            entry_point=_called_function(g["test_list"]))
        raise GradingInputError(f"row {row}: code gold dict needs 'test'+'entry_point' (HumanEval) or "
                                f"'test_list' (MBPP); got keys {sorted(g)}")
    if isinstance(g, (list, tuple)) and g and all(isinstance(t, str) for t in g):
        return CodeTask("mbpp", "\n".join(g), entry_point=_called_function(g))
    if isinstance(g, str) and "def check(" in g:
        if not isinstance(query, str) or not query.strip():
            raise GradingInputError(f"row {row}: HumanEval test code as gold needs the prompt as the query")
        names = re.findall(r"^def\s+(\w+)\s*\(", query, re.MULTILINE)
        if not names:
            raise GradingInputError(f"row {row}: no function definition in the HumanEval prompt (query)")
        return CodeTask("humaneval", g, prompt=query, entry_point=names[-1])
    if isinstance(g, str) and g.lstrip().startswith("assert"):
        return CodeTask("mbpp", g, entry_point=_called_function([g]))
    raise GradingInputError(f"row {row}: unrecognised code gold {str(gold)[:80]!r} (want a HumanEval dict, "
                            "HumanEval test code, or a list of assert strings)")


def _called_function(asserts: Sequence[str]) -> str:
    """Name of the first non-builtin function the asserts call (MBPP's function under test)."""
    for line in asserts:
        try:
            tree = ast.parse(str(line))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not hasattr(builtins, node.func.id):
                return node.func.id
    return ""


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def extract_code(response: str, entry_point: str = "") -> str:
    """The Python code in a model response (see module docstring)."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE_RE.findall(response)]
    blocks = [(lang, body) for lang, body in blocks if lang in ("", "python", "py", "python3", "pycon")]
    if blocks:
        if entry_point:
            defining = [b for _, b in blocks if re.search(rf"def\s+{re.escape(entry_point)}\s*\(", b)]
            if defining:
                return defining[0]
        return blocks[0][1]
    text = response.strip("\n")
    first = next((line for line in text.split("\n") if line.strip()), "")
    if _parses(text) or first != first.lstrip():  # whole code, or a raw function-body continuation
        return text
    # prose around unfenced code: start at the first line that looks like code, drop trailing prose
    m = _CODE_START_RE.search(text)
    if m is None:
        return text
    lines = text[m.start():].split("\n")
    for end in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:end])
        if _parses(candidate):
            return candidate
    return text[m.start():]


def build_program(task: CodeTask, response: str) -> str | None:
    """Program text for one row, or None when the response holds no code."""
    code = extract_code(response, task.entry_point)
    if not code.strip():
        return None
    if task.kind == "humaneval":
        defines = re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(task.entry_point)}\s*\(", code, re.MULTILINE)
        if defines:
            # a whole function: keep the prompt for its imports/helpers; the response's def replaces the stub
            body = textwrap.dedent(code)
            program = task.prompt + "\n    pass\n\n" + body if not _parses(task.prompt) else task.prompt + "\n\n" + body
        else:
            first = next((l for l in code.split("\n") if l.strip()), "")
            if first == first.lstrip():  # body written at column 0: indent into the function
                code = textwrap.indent(code, "    ")
            program = task.prompt + code
        return f"{program}\n\n{task.tests}\n\ncheck({task.entry_point})\n"
    return f"{task.setup}\n{code}\n\n{task.tests}\n"


class CodeExecutionGrader(Grader):
    """Runs response code + unit tests in a sandbox; 1.0 if all tests pass, else 0.0.

    `sandbox` is a `Sandbox`, a dict of its keyword arguments, or None for defaults.
    After `grade`: `last_stats_` = {n, no_answer (no code in the response), passed, failed, timeout,
    sandbox_error, mode}; `last_results_` holds each row's SandboxResult (None where nothing ran).
    """

    def __init__(self, sandbox: Sandbox | dict | None = None) -> None:
        if sandbox is None:
            sandbox = Sandbox()
        elif not isinstance(sandbox, Sandbox):
            sandbox = Sandbox(**dict(sandbox))
        self.sandbox = sandbox
        self.last_stats_: dict[str, Any] = {}
        self.last_results_: list[SandboxResult | None] = []

    def grade(self, responses: Sequence[Any], golds: Sequence[Any], queries: Sequence[Any] | None = None) -> np.ndarray:
        n = check_lengths(responses, golds, queries)
        tasks = [parse_code_gold(golds[i], queries[i] if queries is not None else None, i) for i in range(n)]
        programs = [build_program(t, as_text(r)) for t, r in zip(tasks, responses)]
        to_run = [i for i, p in enumerate(programs) if p is not None]
        results: list[SandboxResult | None] = [None] * n
        for i, res in zip(to_run, self.sandbox.run_many([programs[i] for i in to_run])):
            results[i] = res
        scores = np.array([1.0 if r is not None and r.passed else 0.0 for r in results])
        statuses = [r.status for r in results if r is not None]
        self.last_results_ = results
        self.last_stats_ = {
            "n": n,
            "no_answer": n - len(to_run),
            "passed": statuses.count("passed"),
            "failed": statuses.count("failed"),
            "timeout": statuses.count("timeout"),
            "sandbox_error": statuses.count("error"),
            "mode": self.sandbox.mode if to_run else None,
        }
        return scores
