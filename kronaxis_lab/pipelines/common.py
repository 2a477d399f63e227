"""Pieces every pipeline shares: the data store, the dataset, instantiation with logging."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kronaxis_lab.data.store import DataStore
from kronaxis_lab.data.tables import RoutingDataset

log = logging.getLogger("kronaxis_lab")

#: the configs/ directory of the checkout (the package is installed editable by `make setup`)
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def make_store(cfg: DictConfig) -> DataStore:
    files = OmegaConf.to_container(cfg.data.files, resolve=True) if "data" in cfg and cfg.data else []
    return DataStore(cfg.paths.data_dir, cfg.paths.data_mirror, cfg.paths.get("data_base_url"), sources=files)


def build(node: Any, what: str) -> Any:
    """Hydra-instantiate one config node, logging what is built."""
    target = node.get("_target_", "?") if isinstance(node, (dict, DictConfig)) else "?"
    log.info("Instantiating %s <%s>", what, target)
    return instantiate(node)


def load_dataset(cfg: DictConfig) -> RoutingDataset:
    ds = build(cfg.dataset, "dataset").load(make_store(cfg))
    log.info("dataset %s: %s", ds.name, ds.info)
    return ds


def output_dir(cfg: DictConfig) -> Path:
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def not_implemented(stage: str, issue: str) -> None:
    raise SystemExit(f"kronaxis-{stage} is not implemented yet (tracked in the '{issue}' issue).")
