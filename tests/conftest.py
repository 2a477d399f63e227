"""Shared test fixtures: offline env, Hydra composition of the real configs, the shared data mirror."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that spin-wait collapse torch throughput when test servers share the 2 cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHARED_DATA = ROOT.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def compose(config_name: str, overrides: list[str] | None = None, output_dir: Path | None = None):
    """Compose a real root config (as the console script would), with paths.output_dir set for tests."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides or [], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data mirror {SHARED_DATA} not present")
    return SHARED_DATA


def in_memory_dataset(queries, outcomes, fleet, name: str):
    """A `RoutingDataset` from in-memory queries / outcomes tables, through the real importer checks
    (`Importer.build`). Imported here, not at the top: the offline environment above must be set first."""
    from kronaxis_lab.data.importers.base import Importer

    class InMemory(Importer):
        def read(self, store):
            return queries, outcomes

    return InMemory(fleet=fleet, name=name).build(queries, outcomes)
