"""Start helper servers as real subprocesses on 127.0.0.1 and wait until they answer /health."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[2]


#: ports handed out by this process; each pytest-xdist worker draws from its own block below the kernel's
#: ephemeral range. A port from bind(0) is free only until the socket closes: another worker could be handed the
#: same one before our server binds it, and our health check would then reach *its* server.
_PORT_BLOCK = 2500
_next_port = itertools.count()


def free_port() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    base = 20000 + (int(worker) % 4 if worker.isdigit() else 0) * _PORT_BLOCK
    for _ in range(_PORT_BLOCK):
        port = base + next(_next_port) % _PORT_BLOCK
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {base}–{base + _PORT_BLOCK - 1}")


class ServerProc:
    """`python -m <module> --port N <args>` run from the repo root; `url` is its `/v1` base URL.
    `python` defaults to this interpreter (another venv's python for vLLM)."""

    def __init__(self, module: str, args: Sequence[str] = (), env: dict[str, str] | None = None,
                 python: str | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/v1"
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"{module.rsplit('.', 1)[-1]}-", suffix=".log", delete=False)
        full_env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
        self.proc = subprocess.Popen([python or sys.executable, "-m", module, "--port", str(self.port), *args], cwd=ROOT,
                                     env=full_env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 60.0) -> "ServerProc":
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.base + "/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"server not ready after {timeout_s}s:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text()[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)

    def stats(self) -> dict:
        import httpx

        return httpx.get(self.base + "/stats", timeout=5.0).json()
