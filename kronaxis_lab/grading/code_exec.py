"""Code execution grading (HumanEval / MBPP): the model's code and the unit tests run in two sandboxes.

The candidate's sandbox (`code_runner.py`) holds the prompt + the model's code and nothing of the tests;
it only answers calls ``f(*args)`` with the return value as plain data (`code_wire`: JSON of builtin
types; anything else is an error). The tests' sandbox (`code_harness.py`) holds the prompt's helpers + the
test code and never any candidate code; there each call to the function under test is a remote call,
``==`` / ``!=`` are type-strict (``True != 1``), and the verdict goes out on a pipe of its own. So the
candidate cannot forge the verdict (no marker to print, atexit / excepthook / a forked child reach
nothing), cannot return an object whose ``__eq__`` says yes, cannot patch the tests' builtins or assert,
and cannot read the tests (not in its files, argv or environment). Both run in
`kronaxis_lab.grading.sandbox.Sandbox` (bubblewrap), each with its own uid, cgroup and namespaces, and
the two pipes between them are all they share.

Score = 1 if the test code ran to its end in the tests' sandbox (the harness's verdict), else 0
(failed asserts, the candidate raising / dying / answering with non-plain data, timeouts, sandbox errors).
Tests that pass the candidate arguments that are not plain data (rare in MBPP: instances of classes the
candidate defines) cannot be graded this way and score 0.

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
import functools
import json
import os
import re
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kronaxis_lab.grading._common import GradingInputError, as_text, check_lengths, decode_structured
from kronaxis_lab.grading.base import Grader
from kronaxis_lab.grading.sandbox import Sandbox, SandboxResult

MAX_MESSAGE_BYTES = 16 * 2**20  # largest return value (as JSON) the tests' side accepts from the candidate
_HERE = Path(__file__).parent

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


def build_candidate(task: CodeTask, response: str) -> str | None:
    """The candidate's module (prompt + the response's code, no tests), or None when the response holds no code."""
    code = extract_code(response, task.entry_point)
    if not code.strip():
        return None
    if task.kind == "humaneval":
        defines = re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(task.entry_point)}\s*\(", code, re.MULTILINE)
        if defines:
            # a whole function: keep the prompt for its imports/helpers; the response's def replaces the stub
            body = textwrap.dedent(code)
            return task.prompt + "\n    pass\n\n" + body if not _parses(task.prompt) else task.prompt + "\n\n" + body
        first = next((line for line in code.split("\n") if line.strip()), "")
        if first == first.lstrip():  # body written at column 0: indent into the function
            code = textwrap.indent(code, "    ")
        return task.prompt + code + "\n"
    return f"{task.setup}\n{code}\n"


def _defined_names(source: str) -> set[str]:
    """Names a piece of code binds at top level (imports, defs, classes, assignments)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def build_tests(task: CodeTask) -> dict:
    """The tests' sandbox spec (see `code_harness.py`): trusted code only, nothing from the response."""
    if task.kind == "humaneval":
        setup = task.prompt if _parses(task.prompt) else task.prompt + "\n    pass\n"
        return {"setup": setup, "tests": task.tests, "functions": [task.entry_point], "call": "check",
                "entry_point": task.entry_point, "max_message_bytes": MAX_MESSAGE_BYTES}
    defined = _defined_names(task.setup)
    called: list[str] = []
    for tree in _parse_each(task.tests):
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not hasattr(builtins, node.func.id)
                    and node.func.id not in defined and node.func.id not in called):
                called.append(node.func.id)
    return {"setup": task.setup, "tests": task.tests, "functions": called, "call": None,
            "entry_point": task.entry_point, "max_message_bytes": MAX_MESSAGE_BYTES}


def _parse_each(source: str) -> list[ast.Module]:
    """The whole source parsed, or else each line that parses on its own (asserts lists with a bad line)."""
    try:
        return [ast.parse(source)]
    except SyntaxError:
        trees = []
        for line in source.split("\n"):
            try:
                trees.append(ast.parse(line))
            except SyntaxError:
                continue
        return trees


@functools.lru_cache(maxsize=None)
def _script(name: str) -> str:
    return (_HERE / name).read_text(encoding="utf-8")


#: seconds the candidate may take to exit after the tests' side is done (then it is SIGKILLed)
CANDIDATE_GRACE_S = 1.0


def run_tests(sandbox: Sandbox, candidate: str, tests: dict) -> SandboxResult:
    """Run `candidate` and `tests` in two sandboxes joined by two pipes; the verdict is the tests' side's.

    Result: status passed / failed / timeout / error, returncode of the tests' side, stdout = the candidate's,
    stderr = the candidate's, then the tests' error (``[tests] ...``).
    """
    t0 = time.monotonic()
    req_r, req_w = os.pipe()  # tests -> candidate: calls
    resp_r, resp_w = os.pipe()  # candidate -> tests: return values
    verdict_r, verdict_w = os.pipe()  # tests -> us
    wire = _script("code_wire.py")
    try:
        cand = sandbox.start(_script("code_runner.py"), {"candidate.py": candidate, "code_wire.py": wire},
                             [str(req_r), str(resp_w), *tests["functions"]], pass_fds=[req_r, resp_w])
        harness = sandbox.start(_script("code_harness.py"), {"tests.json": json.dumps(tests), "code_wire.py": wire},
                                [str(req_w), str(resp_r), str(verdict_w)], pass_fds=[req_w, resp_r, verdict_w])
    finally:
        for fd in (req_r, req_w, resp_r, resp_w, verdict_w):
            os.close(fd)  # from here on only the two sandboxes hold the pipes: either one dying ends the other
    try:
        with cand, harness:
            exited = harness.wait(sandbox.timeout_s - (time.monotonic() - t0))
            # the harness closing its pipes ends the candidate's call loop: a short grace lets it exit (and flush
            # its stdout) by itself; whatever still runs then is killed. The verdict is already on its pipe.
            if not cand.wait(CANDIDATE_GRACE_S):
                cand.kill()
            tests_res, cand_res = harness.finish(timed_out=not exited), cand.finish()
        verdict = _read_verdict(verdict_r)
    finally:
        os.close(verdict_r)
    if tests_res.status == "timeout":
        status = "timeout"
    elif tests_res.status == "error" or cand.start_error:
        status = "error"
    elif tests_res.returncode == 0 and verdict == ["verdict", True, ""]:
        status = "passed"
    else:
        status = "failed"
    why = verdict[2] if isinstance(verdict, list) and len(verdict) == 3 else "no verdict from the tests"
    stderr = cand_res.stderr + ("" if status == "passed" else f"\n[tests] {why}\n{tests_res.stderr[-2000:]}")
    return SandboxResult(status, tests_res.returncode, cand_res.stdout, stderr, time.monotonic() - t0)


def _read_verdict(fd: int) -> Any:
    """The harness's one line (every writer is dead by now, so this reads to EOF)."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) < 65536:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    except BlockingIOError:
        pass
    try:
        return json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        return None


class CodeExecutionGrader(Grader):
    """Runs response code against the unit tests (module docstring); 1.0 if all tests pass, else 0.0.

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
        candidates = [build_candidate(t, as_text(r)) for t, r in zip(tasks, responses)]
        to_run = [i for i, c in enumerate(candidates) if c is not None]
        jobs = [(candidates[i], build_tests(tasks[i])) for i in to_run]
        results: list[SandboxResult | None] = [None] * n
        ran = self.sandbox.map(lambda job: run_tests(self.sandbox, *job), jobs, desc="code tests")
        for i, res in zip(to_run, ran):
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
