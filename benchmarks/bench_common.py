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


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs since boot (/proc/stat; (0, 0) elsewhere): on a shared VM the time the
    hypervisor gave our vCPUs to someone else, which no process CPU time shows."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_percent(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """CPU steal between two `cpu_ticks` readings, % of all CPU time."""
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total > 0 else None


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
