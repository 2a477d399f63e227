"""Every config in configs/ composes (Hydra compose API) and every _target_ imports."""

import importlib
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import CONFIGS, compose

ROOTS = sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def _root_groups(root: str) -> set[str]:
    d = yaml.safe_load((CONFIGS / f"{root}.yaml").read_text()) or {}
    out = set()
    for item in d.get("defaults", []):
        if isinstance(item, dict):
            out |= {k.split("@")[0].lstrip("/") for k in item}
    return out


def _targets(node, where):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "_target_" and isinstance(v, str):
                yield v, where
            else:
                yield from _targets(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _targets(v, f"{where}[{i}]")


def _import(target: str):
    mod, _, attr = target.rpartition(".")
    try:
        obj = importlib.import_module(mod)
    except ModuleNotFoundError:  # Class.method targets
        mod, _, cls = mod.rpartition(".")
        obj = getattr(importlib.import_module(mod), cls)
    return getattr(obj, attr)


@pytest.mark.parametrize("root", ROOTS)
def test_root_config_composes(root, tmp_path):
    cfg = compose(root, [], tmp_path)
    OmegaConf.to_container(cfg, resolve=True)
    for target, where in _targets(OmegaConf.to_container(cfg, resolve=True), root):
        assert callable(_import(target)), f"{where}: {target}"


GROUP_FILES = sorted(p for p in CONFIGS.glob("*/*.yaml"))


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_group_option_composes(path: Path, tmp_path):
    group, option = path.parent.name, path.stem
    roots = [r for r in ROOTS if group in _root_groups(r)]
    if roots:
        overrides = [f"{group}={option}"]
        if group == "dataset" and option == "routerbench":
            overrides.append("dataset.path=/nonexistent")
        cfg = compose(roots[0], overrides, tmp_path)
        node = OmegaConf.to_container(cfg, resolve=True)
    else:  # a group used inside other configs (fleet, tokenizer, rules, ...): must load and resolve
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    for target, where in _targets(node, f"{group}/{option}"):
        assert callable(_import(target)), f"{where}: {target} does not import"


def test_experiment_overlays_the_root_config(tmp_path):
    """experiment=<name> (a @package _global_ file) must win over the root config's own values."""
    cfg = compose("compare", ["experiment=demo"], tmp_path)
    assert cfg.task_name == "demo"
    assert cfg.classifiers[0].startswith("tier_predictor@") and "tier_predictor_ordinal" not in cfg.classifiers
    for root in ("train", "replay", "export", "compare"):
        d = yaml.safe_load((CONFIGS / f"{root}.yaml").read_text())["defaults"]
        keys = [next(iter(x)) if isinstance(x, dict) else x for x in d]
        assert keys.index("_self_") < keys.index("experiment"), f"{root}.yaml: _self_ must precede experiment"
