"""Pieces every speed benchmark script shares (they run as `python benchmarks/<script>.py`, so this directory is
on sys.path): the machine line each table records, and rewriting one script's block of a results table."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """CPU model, cores, Python, OS and the 1-minute load average now."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}", "loadavg_1m": os.getloadavg()[0]}


def machine() -> str:
    m = machine_info()
    return f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['system']}"


def write_block(path: str | Path, mark: str, text: str, first: bool = False) -> None:
    """Replace the `<!-- mark:begin -->…<!-- mark:end -->` block of `path` with `text` (else append it, or put
    it first), so several scripts can share one results file."""
    path = Path(path)
    begin, end = f"<!-- {mark}:begin -->", f"<!-- {mark}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.is_file() else ""
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end):].lstrip("\n")
    elif first:
        new = block + ("\n" + old if old else "")
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + block
    path.write_text(new)
