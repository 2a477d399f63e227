"""Arithmetic self-check of a worked answer: re-compute every equation a response writes and count the wrong ones.

A cheap model's GSM8K-style solution shows its steps (``16 - 3 = 13``, ``<<9*2=18>>``); a step whose stated result
is not what its left side computes is strong evidence the final answer is wrong. This is a verifier signal a
gateway can compute from the response alone (no gold answer), used by the cascade verifier.

Expressions are evaluated by walking Python's AST with only numbers, ``+ - * /``, unary signs and parentheses
allowed (no names, calls, powers or attributes), and only when short, so a hostile response cannot make it do
anything but arithmetic on small inputs.
"""

from __future__ import annotations

import ast
import operator
import re

#: longest left-hand side evaluated (characters); longer ones are skipped, not guessed
MAX_EXPR = 80
#: characters of a response read (its end, where the worked steps and answer are): bounds the scan's cost
MAX_TEXT = 20_000

# one linear tokenizer pass: numbers, arithmetic symbols, calculator brackets, "="; anything else breaks a step
_TOKEN_RE = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|<<|>>|[-+*/x×÷()$=%]|\S+")
_NUMBER_TOKEN = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
_ARITH = {"+", "-", "*", "/", "x", "×", "÷", "(", ")", "$", "%"}
#: tokens of a left-hand side kept (the run of arithmetic right before "=")
MAX_TOKENS = 24
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        v = _eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    raise ValueError("not plain arithmetic")


def evaluate(expr: str) -> float | None:
    """The value of a short plain-arithmetic expression (``1,200 x 3 ÷ 4``, ``$5 * (2 + 1)``), else None."""
    e = expr.replace(",", "").replace("$", "").replace("%", "").replace("×", "*").replace("÷", "/")
    e = re.sub(r"(?<=[\d\)\s])x(?=[\s\d\(])", "*", e).strip()
    if not e or len(e) > MAX_EXPR or not re.fullmatch(r"[\d\.\s\+\-\*/\(\)]+", e):
        return None
    try:
        return _eval(ast.parse(e, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, OverflowError):
        return None


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").strip().rstrip("."))
    except ValueError:
        return None


def _steps(text: str):
    """(left-hand side, stated result) of every "a op b = c" step and <<a op b=c>> annotation, in one pass."""
    run: list[str] = []  # the arithmetic tokens since the last token that is not arithmetic
    toks = _TOKEN_RE.findall(text)
    for i, tok in enumerate(toks):
        if tok == "=":
            while run and run[0] in {"+", "*", "/", "x", "×", "÷", ")", "%"}:  # a step cannot start with these
                run.pop(0)
            nxt = [t for t in toks[i + 1:i + 4] if t != "$"][:2]
            sign = ""
            if nxt[:1] == ["-"]:  # a negative result: "0 - 1 = -1"
                sign, nxt = "-", nxt[1:]
            ops = sum(t in _ARITH - {"(", ")", "$", "%"} for t in run)
            if nxt and _NUMBER_TOKEN.fullmatch(nxt[0]) and ops and any(_NUMBER_TOKEN.fullmatch(t) for t in run):
                yield " ".join(run), sign + nxt[0]
            run = []
        elif _NUMBER_TOKEN.fullmatch(tok) or tok in _ARITH:
            run.append(tok)
            del run[:-MAX_TOKENS]
        else:  # a word, "<<", ">>": a step starts after it
            run = []


def arithmetic_check(text: str) -> tuple[int, int]:
    """(steps that check out, steps whose stated result is wrong) over the equations in `text`. A result counts
    as right within 1 % or 0.01 (answers are often rounded to cents). Linear in the (capped) text."""
    good = bad = 0
    for lhs, stated in _steps(text[-MAX_TEXT:]):
        value, result = evaluate(lhs), _number(stated)
        if value is None or result is None:
            continue
        if abs(value - result) <= max(0.01, 0.01 * abs(result)):
            good += 1
        else:
            bad += 1
    return good, bad
