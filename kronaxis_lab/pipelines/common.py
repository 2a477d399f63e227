"""Pieces every pipeline shares: the data store, the dataset, instantiation with logging, config-kind checks."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from kronaxis_lab.data.importers.base import Importer
from kronaxis_lab.data.questions import QuestionSet
from kronaxis_lab.data.store import DataStore
from kronaxis_lab.data.tables import RoutingDataset

log = logging.getLogger("kronaxis_lab")

#: the configs/ directory of the checkout (the package is installed editable by `make setup`)
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


@dataclass(frozen=True)
class ConfigKind:
    """What a `dataset` config can be: its base class, a description, and what to do with it in the other stages."""

    base: type
    what: str
    elsewhere: str  # advice when it is passed to a stage that needs the other kind ({name}: the config's name)


RECORDED_OUTCOMES = ConfigKind(Importer,
                               "a recorded-outcome dataset (configs/dataset/*) for kronaxis-train/-replay/-export",
                               "it already has outcomes: train or replay it")
QUESTION_SET = ConfigKind(QuestionSet, "a question set (configs/questions/*) for kronaxis-label",
                          "label it first (kronaxis-label dataset={name} hydra.run.dir=<dir>), then use "
                          "dataset=saved dataset.path=<dir>")


class ConfigKindError(ValueError):
    """A config of the wrong kind for this stage, e.g. a question set passed to kronaxis-replay."""


def make_store(cfg: DictConfig) -> DataStore:
    files = OmegaConf.to_container(cfg.data.files, resolve=True) if "data" in cfg and cfg.data else []
    return DataStore(cfg.paths.data_dir, cfg.paths.data_mirror, cfg.paths.get("data_base_url"), sources=files)


def build(node: Any, what: str) -> Any:
    """Hydra-instantiate one config node, logging what is built."""
    target = node.get("_target_", "?") if isinstance(node, (dict, DictConfig)) else "?"
    log.info("Instantiating %s <%s>", what, target)
    return instantiate(node)


def require_kind(node: Any, kind: ConfigKind, group: str = "dataset") -> None:
    """Refuse, before anything is built, a `group` config whose `_target_` is not a `kind.base`; the one-line
    message names the config and says what it is instead."""
    target = node.get("_target_") if isinstance(node, (dict, DictConfig)) else None
    if not target:
        raise ConfigKindError(f"the {group} config has no _target_; expected {kind.what}")
    cls = get_class(str(target))
    if issubclass(cls, kind.base):
        return
    name = node.get("name") or getattr(cls, "name", None) or target
    have = next((k for k in (RECORDED_OUTCOMES, QUESTION_SET) if issubclass(cls, k.base)), None)
    what, hint = (have.what, "; " + have.elsewhere.format(name=name)) if have else (f"a {cls.__name__}", "")
    raise ConfigKindError(f"{group}={name} <{target}> is {what}, not {kind.what}{hint}")


def load_dataset(cfg: DictConfig) -> RoutingDataset:
    """The recorded-outcome dataset of `cfg.dataset` (a question set is refused with a ConfigKindError)."""
    require_kind(cfg.dataset, RECORDED_OUTCOMES)
    ds = build(cfg.dataset, "dataset").load(make_store(cfg))
    log.info("dataset %s: %s", ds.name, ds.info)
    return ds


def output_dir(cfg: DictConfig) -> Path:
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextmanager
def one_line_errors(stage: str, *errors: type[BaseException]) -> Iterator[None]:
    """In a console script: turn `errors` (bad input: configs, files) into a one-line exit message, no traceback."""
    try:
        yield
    except errors as e:
        raise SystemExit(f"{stage}: {type(e).__name__}: {e}") from None
