"""Print the requirements of the serving image: pyproject.toml's core dependencies that `kronaxis-serve` imports,
plus its `serve` extra, one per line (pip's requirements format).

    python docker/serve_requirements.py > requirements-serve.txt && pip install -r requirements-serve.txt

The versions stay in pyproject.toml (their one source); this file only names the core dependencies the router
never imports: a bundle runs on onnxruntime + tokenizers + numpy, so torch and the training stack stay out of the
image (tests/test_container.py builds the router from a bundle with these modules blocked).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

#: core dependencies used only to train, label, export or plot (distribution names as pyproject.toml spells them)
NOT_SERVED = frozenset({"torch", "transformers", "datasets", "accelerate", "sentence-transformers", "matplotlib",
                        "pyarrow", "tabulate", "pyseccomp"})
EXTRA = "serve"


def distribution(requirement: str) -> str:
    """`torch>=2.3` → `torch` (PEP 508 name, lower-case)."""
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower()


def serve_requirements(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    core = [r for r in project["dependencies"] if distribution(r) not in NOT_SERVED]
    return core + list(project["optional-dependencies"][EXTRA])


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "pyproject.toml"
    print("\n".join(serve_requirements(path)))
