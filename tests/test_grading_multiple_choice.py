"""MultipleChoiceGrader: letter extraction from many answer styles, ambiguity, gold formats, choices."""

import pytest

from kronaxis_lab.grading._common import GradingInputError
from kronaxis_lab.grading.multiple_choice import MultipleChoiceGrader

QUERY = "What is the capital of France?\nA. London\nB. Paris\nC. Rome\nD. Berlin\nAnswer:"


@pytest.mark.parametrize(
    "response, letter",
    [
        ("Answer: B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B", "B"),
        (" C\n\nQuestion: what is 2+2?\nA. 3\nB. 4", "C"),  # base model: first token, then it rambles on
        ("the correct option is b", "B"),
        ("The answer is a bit tricky, but I'd say the answer is (D).", "D"),
        ("A good question. The capital is Paris, so **B**", "B"),
        (r"\boxed{C}", "C"),
        ("(B) is correct", "B"),
        ("Option A is wrong; option B is the right answer.", "B"),
        ("answer: d.", "D"),
        ("The correct answer is: (A) London", "A"),
        ("Paris", "B"),  # restates one choice's text only
        ("I believe it is Paris.", "B"),
    ],
)
def test_extracts_letter(response, letter):
    g = MultipleChoiceGrader()
    g.grade([response], [letter], [QUERY])
    assert g.last_predictions_ == [letter]


@pytest.mark.parametrize("response", ["I don't know.", "DNA is correct here", "The answer is a matter of taste"])
def test_no_answer(response):
    g = MultipleChoiceGrader()
    assert g.grade([response], ["B"], [QUERY]).tolist() == [0.0]
    assert g.last_predictions_ == [None] and g.last_stats_["no_answer"] == 1 and g.last_stats_["ambiguous"] == 0


@pytest.mark.parametrize(
    "response",
    ["The answer is A. Actually, the answer is B.", "It could be (A) or (B).", "Either Paris or London."],
)
def test_several_letters_are_ambiguous_and_score_zero(response):
    g = MultipleChoiceGrader()
    assert g.grade([response], ["B"], [QUERY]).tolist() == [0.0]
    assert g.last_stats_["ambiguous"] == 1 and g.last_stats_["no_answer"] == 0


def test_batch_scores_and_stats():
    g = MultipleChoiceGrader()
    scores = g.grade(["Answer: B", "C", "(A) or (B)", "hmm", None], ["B", "B", "B", "B", "A"])
    assert scores.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert g.last_stats_ == {"n": 5, "no_answer": 2, "ambiguous": 1, "correct": 1}


def test_gold_formats_and_choices():
    g = MultipleChoiceGrader()
    choices = [["London", "Paris", "Rome", "Berlin"]] * 4
    scores = g.grade(["B", "B", "B", "Rome"], ["b", 1, "Paris", "(C)"], choices=choices)
    assert scores.tolist() == [1.0, 1.0, 1.0, 1.0]
    # LLMRouter's {"text", "label"} dicts with five labels, passed as their string form
    five = str({"label": ["A", "B", "C", "D", "E"], "text": ["bus depot", "train station", "beach", "bridge", "taxi"]})
    assert g.grade(["The answer is E", "train station"], ["E", "B"], choices=[five, five]).tolist() == [1.0, 1.0]
    # gold as a dict carrying its own choices
    assert g.grade(["Rome"], [{"answer": "C", "choices": ["London", "Paris", "Rome", "Berlin"]}]).tolist() == [1.0]


def test_configurable_letters():
    g = MultipleChoiceGrader(letters=["A", "B", "C", "D", "E"])
    assert g.grade(["Answer: E"], ["E"]).tolist() == [1.0]
    with pytest.raises(GradingInputError, match="row 0"):
        MultipleChoiceGrader().grade(["Answer: E"], ["E"])
    with pytest.raises(ValueError):
        MultipleChoiceGrader(letters=["AB"])


def test_unknown_gold_raises_with_row():
    with pytest.raises(GradingInputError, match="row 1"):
        MultipleChoiceGrader().grade(["A", "A"], ["A", "Madrid"], choices=[["x", "y"], ["London", "Paris"]])
