"""Graders: score responses against gold answers, batch-first, scores in [0, 1] (see base.Grader).

One class + one YAML in configs/grader/ each: numeric, multiple_choice, code_exec, llm_judge, recorded.
"""

from kronaxis_lab.grading.base import Grader
from kronaxis_lab.grading.code_exec import CodeExecutionGrader
from kronaxis_lab.grading.llm_judge import LLMJudgeGrader
from kronaxis_lab.grading.multiple_choice import MultipleChoiceGrader
from kronaxis_lab.grading.numeric import NumericMatchGrader
from kronaxis_lab.grading.recorded import RecordedScoreGrader
from kronaxis_lab.grading.sandbox import Sandbox, SandboxResult

__all__ = [
    "Grader",
    "CodeExecutionGrader",
    "LLMJudgeGrader",
    "MultipleChoiceGrader",
    "NumericMatchGrader",
    "RecordedScoreGrader",
    "Sandbox",
    "SandboxResult",
]
