"""How steady this machine's CPU is: a fixed pure-Python loop counted per wall-clock second, on one core.

    python benchmarks/cpu_pulse.py [--seconds 60]

On a shared VM the vCPU's speed can swing without any CPU steal being reported (host frequency, co-tenants on
the same physical core); every wall-clock speed figure in benchmarks/speed.md moves with it. The spread printed
here (max / min iterations per second, with CPU time ≈ wall time) is the size of that swing.
"""

from __future__ import annotations

import argparse
import os
import time


def pulse(seconds: float) -> list[tuple[int, float]]:
    """(loop iterations, CPU seconds) per wall-clock second."""
    out = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0, c0, n = time.perf_counter(), time.process_time(), 0
        while time.perf_counter() - t0 < 1.0:
            sum(range(10_000))
            n += 1
        out.append((n, time.process_time() - c0))
    return out


def main(argv: list[str] | None = None) -> list[tuple[int, float]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    out = pulse(args.seconds)
    rates = [n for n, _ in out]
    print("iterations per second:", " ".join(map(str, rates)))
    print(f"{len(rates)} s, 1-min load average {load:.2f} at the start: min {min(rates)}, max {max(rates)} "
          f"({max(rates) / max(min(rates), 1):.2f}x), CPU/wall ≥ {min(c for _, c in out):.2f}")
    return out


if __name__ == "__main__":
    main()
