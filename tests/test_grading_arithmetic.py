"""Arithmetic self-check: generated right and wrong steps are counted as such; hostile text is only ever
parsed as arithmetic and never raises."""

import operator

from hypothesis import given, settings
from hypothesis import strategies as st

from kronaxis_lab.grading.arithmetic import arithmetic_check, evaluate

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "x": operator.mul, "/": operator.truediv}


def test_worked_answer_steps_are_rechecked():
    assert arithmetic_check("She has 16 - 3 = 13 eggs, then 13 - 4 = 9. 9 * 2 = <<9*2=18>>18.\n#### 18") == (3, 0)
    assert arithmetic_check("3 x 4 = 13 and 1,200 / 4 = 300 and (2 + 3) * 4 = 20") == (2, 1)
    assert arithmetic_check("So 20% of 5 = 1 and the answer is 7.") == (0, 0)  # "of" is not arithmetic
    assert arithmetic_check("no numbers here = none") == (0, 0)
    assert arithmetic_check("10 / 3 = 3.33") == (1, 0)  # rounded results count as right
    assert arithmetic_check("0 - 1 = -1, 2 - 5 = 3") == (1, 1)


def test_evaluate_accepts_only_short_plain_arithmetic():
    assert evaluate("1,200 x 3 ÷ 4") == 900
    assert evaluate("$5 * (2 + 1)") == 15
    for hostile in ("__import__('os')", "2**99999", "1/0", "(" * 60 + "1" + ")" * 60, "9" * 100, "a + 1", ""):
        assert evaluate(hostile) is None


@settings(max_examples=300, deadline=None)
@given(a=st.integers(0, 10**6), b=st.integers(1, 10**4), op=st.sampled_from(sorted(OPS)),
       off=st.integers(1, 10**6), annotate=st.booleans(), words=st.sampled_from(["", "So", "Then she pays"]))
def test_generated_steps(a, b, op, off, annotate, words):
    value = OPS[op](a, b)
    right = round(value, 2)
    wrong = right + off * max(1.0, abs(right))  # far outside the 1 % / 0.01 tolerance
    def num(r: float) -> str:
        return f"{r:.2f}".rstrip("0").rstrip(".")

    def step(r: float) -> str:
        return f"<<{a}{'*' if op == 'x' else op}{b}={num(r)}>>" if annotate else f"{a} {op} {b} = {num(r)}"

    assert arithmetic_check(f"{words} {step(right)}") == (1, 0)
    assert arithmetic_check(f"{words} {step(wrong)}") == (0, 1)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789 +-*/x()=$<>.,%abc\n")), max_size=3000))
def test_any_text_is_checked_without_error(text):
    good, bad = arithmetic_check(text)
    assert good >= 0 and bad >= 0 and good + bad <= text.count("=")
