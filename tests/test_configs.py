"""Every config in configs/ composes (Hydra compose API), every `_target_` imports, and every key of a `_target_`
node is a parameter of its target, so a misspelled constructor kwarg fails here rather than at run time."""

import importlib
import inspect
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from kronaxis_lab.data.importers.base import Importer
from kronaxis_lab.data.questions import QuestionSet
from kronaxis_lab.data.splits import DEFAULT_SPLIT
from kronaxis_lab.pipelines.common import ConfigKindError, load_dataset
from tests.conftest import CONFIGS, compose

ROOTS = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
GROUP_FILES = sorted(p for p in CONFIGS.glob("*/*.yaml"))
#: keys Hydra's instantiate consumes itself
HYDRA_KEYS = {"_target_", "_convert_", "_recursive_", "_partial_", "_args_"}


def _root_groups(root: str) -> set[str]:
    d = yaml.safe_load((CONFIGS / f"{root}.yaml").read_text()) or {}
    out = set()
    for item in d.get("defaults", []):
        if isinstance(item, dict):
            out |= {k.split("@")[0].lstrip("/") for k in item}
    return out


def _target_nodes(node, where):
    """(target, keys, where) for every mapping with a `_target_`, at any depth."""
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield node["_target_"], set(node), where
        for k, v in node.items():
            yield from _target_nodes(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _target_nodes(v, f"{where}[{i}]")


def _import(target: str):
    mod, _, attr = target.rpartition(".")
    try:
        obj = importlib.import_module(mod)
    except ModuleNotFoundError:  # Class.method targets
        mod, _, cls = mod.rpartition(".")
        obj = getattr(importlib.import_module(mod), cls)
    return getattr(obj, attr)


def accepted_keys(obj) -> set[str] | None:
    """The keyword parameters `obj` takes; None = any key. A class whose __init__ takes **kwargs passes them up
    (`super().__init__(**kwargs)`), so it also takes its bases' parameters, up to the first base without **kwargs."""
    if inspect.isclass(obj):
        inits = [c.__init__ for c in inspect.getmro(obj) if c is not object and "__init__" in vars(c)]
    else:
        inits = [obj]
    names: set[str] = set()
    for f in inits:
        params = inspect.signature(f).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return None


def bad_keys(node, where: str) -> list[str]:
    """Every `_target_` that does not import, and every key its target does not take."""
    problems = []
    for target, keys, at in _target_nodes(node, where):
        try:
            names = accepted_keys(_import(target))
        except (ImportError, AttributeError) as e:
            problems.append(f"{at}: {target} does not import ({e})")
            continue
        if names is not None:
            problems += [f"{at}: {target} has no parameter '{k}' (it takes {sorted(names)})"
                         for k in sorted(keys - HYDRA_KEYS - names)]
    return problems


def composed_group_option(path: Path, tmp_path) -> dict:
    """A group file as a pipeline sees it: through a root config that selects the group, else appended to the
    smallest root under a probe key (its own defaults list composed too). Interpolations are left as written."""
    group, option = path.parent.name, path.stem
    roots = [r for r in ROOTS if group in _root_groups(r)]
    if roots:
        overrides = [f"{group}={option}"]
        if group == "dataset" and option == "routerbench":
            overrides.append("dataset.path=/nonexistent")
        node = OmegaConf.to_container(compose(roots[0], overrides, tmp_path), resolve=True)
        return node.get(group, node) if group != "experiment" else node
    cfg = compose("data", [f"+{group}@probe={option}"], tmp_path)
    return OmegaConf.to_container(cfg.probe, resolve=False)


@pytest.mark.parametrize("root", ROOTS)
def test_root_config_composes_and_its_targets_take_its_keys(root, tmp_path):
    cfg = compose(root, [], tmp_path)
    assert bad_keys(OmegaConf.to_container(cfg, resolve=True), root) == []


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_group_option_composes_and_its_targets_take_its_keys(path: Path, tmp_path):
    node = composed_group_option(path, tmp_path)
    assert bad_keys(node, f"{path.parent.name}/{path.stem}") == []


def test_a_misspelled_kwarg_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mix:\n  _target_: kronaxis_lab.data.questions.QuestionMix\n  limt: 3\n  parts:\n"
                   "    - _target_: kronaxis_lab.data.questions.GSM8K\n      smaple: 5\n"
                   "    - _target_: kronaxis_lab.data.questions.NoSuchSet\n"
                   # **kwargs passed up to Importer: its parameters count, a misspelled one does not
                   "importer: {_target_: kronaxis_lab.data.importers.routellm.RouteLLMMMLU, limit: 1,"
                   " exclude_contaminted: true}\n"
                   "any: {_target_: argparse.Namespace, whatever: 1}\n")  # Namespace(**kwargs) takes any key
    problems = bad_keys(OmegaConf.to_container(OmegaConf.load(bad)), "bad")
    assert len(problems) == 4, problems
    assert problems[0].startswith("bad.mix: kronaxis_lab.data.questions.QuestionMix has no parameter 'limt'")
    assert problems[1].startswith("bad.mix.parts[0]: kronaxis_lab.data.questions.GSM8K has no parameter 'smaple'")
    assert problems[2].startswith("bad.mix.parts[1]: kronaxis_lab.data.questions.NoSuchSet does not import")
    assert problems[3].startswith("bad.importer: kronaxis_lab.data.importers.routellm.RouteLLMMMLU has no "
                                  "parameter 'exclude_contaminted'")


def test_experiment_overlays_the_root_config(tmp_path):
    """experiment=<name> (a @package _global_ file) must win over the root config's own values."""
    cfg = compose("compare", ["experiment=demo"], tmp_path)
    assert cfg.task_name == "demo"
    assert cfg.classifiers[0].split("@")[0] == "tier_predictor" and "tier_predictor_ordinal" not in cfg.classifiers
    for root in ("train", "replay", "export", "compare"):
        d = yaml.safe_load((CONFIGS / f"{root}.yaml").read_text())["defaults"]
        keys = [next(iter(x)) if isinstance(x, dict) else x for x in d]
        assert keys.index("_self_") < keys.index("experiment"), f"{root}.yaml: _self_ must precede experiment"


# -- dataset kinds: recorded outcomes (configs/dataset/) vs question sets (configs/questions/) ----------------------
QUESTION_SETS = sorted(p.stem for p in (CONFIGS / "questions").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONFIGS / "dataset").glob("*.yaml"))


def test_every_dataset_is_recorded_outcomes_or_an_alias_of_a_question_set(tmp_path):
    assert QUESTION_SETS and set(QUESTION_SETS) <= set(DATASETS)  # kronaxis-label dataset=<question set> works
    for name in DATASETS:
        d = yaml.safe_load((CONFIGS / f"dataset/{name}.yaml").read_text())
        target = _import(compose("export", [f"dataset={name}", "dataset.path=/x"] if name == "routerbench"
                                 else [f"dataset={name}"], tmp_path).dataset._target_)
        if name in QUESTION_SETS:  # an alias: only its defaults list, pointing at configs/questions/<name>
            assert d == {"defaults": [{"/questions@_here_": name}]}, name
            assert issubclass(target, QuestionSet), name
        else:
            assert issubclass(target, Importer), name


def test_the_split_block_has_one_source(tmp_path):
    assert yaml.safe_load((CONFIGS / "splits/default.yaml").read_text()) == DEFAULT_SPLIT
    for root, name in [("replay", "llmrouter"), ("label", "live_mix"), ("train", "saved")]:
        assert OmegaConf.to_container(compose(root, [f"dataset={name}"], tmp_path).dataset.split) == DEFAULT_SPLIT
    cfg = compose("replay", ["dataset=llmrouter", "dataset.split.seed=1", "split=val"], tmp_path)
    assert cfg.dataset.split.seed == 1 and cfg.split == "val"
    for p in [*GROUP_FILES, *CONFIGS.glob("*.yaml")]:
        if p.parent.name != "splits":
            assert "fractions" not in p.read_text(), f"{p}: select splits@split instead of copying the block"


@pytest.mark.parametrize("root", ["replay", "train"])
def test_a_question_set_is_refused_by_train_and_replay_in_one_line(root, tmp_path):
    cfg = compose(root, ["dataset=gsm8k"], tmp_path)
    with pytest.raises(ConfigKindError) as e:
        load_dataset(cfg)
    msg = str(e.value)
    assert msg.startswith("dataset=gsm8k <kronaxis_lab.data.questions.GSM8K> is a question set") and "\n" not in msg
    assert "for kronaxis-label, not a recorded-outcome dataset" in msg and "kronaxis-label dataset=gsm8k" in msg
