"""Every configs/grader/*.yaml instantiates (Hydra) into a working grader of its class."""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from kronaxis_lab.backends.base import Backend, GenResult
from kronaxis_lab.grading.base import Grader

GRADER_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "grader"


class _Judge(Backend):
    model = "fake"

    async def agenerate(self, requests):
        return [GenResult(text="Rating: [[10]]") for _ in requests]


CASES = {
    "numeric": (["#### 4"], ["2+2 = 4\n#### 4"], None, [1.0]),
    "multiple_choice": (["Answer: C"], ["C"], None, [1.0]),
    "code_exec": (["def f():\n    return 1"], [["assert f() == 1"]], None, [1.0]),
    "llm_judge": (["Paris."], [None], ["Capital of France?"], [1.0]),
    "recorded": (["x"], [0.25], None, [0.25]),
}


def test_every_grader_config_has_a_case():
    assert sorted(p.stem for p in GRADER_CONFIGS.glob("*.yaml")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_instantiate_and_grade(name):
    cfg = OmegaConf.load(GRADER_CONFIGS / f"{name}.yaml")
    assert cfg._target_.startswith("kronaxis_lab.grading.")
    kwargs = {"backend": _Judge()} if name == "llm_judge" else {}
    if name == "code_exec":
        cfg.sandbox.show_progress = False
    grader = instantiate(cfg, **kwargs)
    assert isinstance(grader, Grader) and type(grader).__name__ == cfg._target_.rsplit(".", 1)[1]
    responses, golds, queries, expected = CASES[name]
    scores = grader.grade(responses, golds, queries)
    assert scores.tolist() == pytest.approx(expected)
    assert grader.last_stats_["n"] == len(responses) and grader.last_stats_["no_answer"] == 0
