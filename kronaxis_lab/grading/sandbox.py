"""Run untrusted Python (model-written code + unit tests) in a contained subprocess.

Layers, strongest available first (``isolation: auto`` probes them once per process and keeps the first
that works; ``last_mode_``/``mode`` tells which):

``namespaces`` (running as root, `unshare` works)
    new network namespace (only a downed loopback: no connection anywhere, 127.0.0.1 included), new pid
    namespace (everything the program forks dies with it), new mount namespace with private tmpfs on
    /tmp, /var/tmp, /dev/shm; the program runs as an unprivileged uid (one of ``sandbox_uid`` ..
    ``sandbox_uid + sandbox_uid_range - 1``, a distinct one per worker slot) so it can write only its own
    work dir, RLIMIT_NPROC (which root ignores) caps its processes, and every process of that uid is
    killed after the run (keep that uid range for the sandbox alone).
``userns`` (not root, unprivileged user namespaces allowed)
    the same namespaces through a user namespace; the program keeps the caller's uid on the host, so
    host files the caller owns outside the private tmpfs are *not* protected.
``none``
    plain subprocess in its own process group (killed as a group), Python-level socket refusal,
    and, if running as root, the same uid drop as ``namespaces``.

Always: wall-clock timeout, RLIMIT_CPU / RLIMIT_AS / RLIMIT_NPROC / RLIMIT_FSIZE / RLIMIT_NOFILE, no core
dumps, stdin = /dev/null, a throw-away work dir as cwd and HOME, a minimal environment, stdout/stderr in
files capped by RLIMIT_FSIZE and read back only up to ``max_output_bytes``; everything is removed after.
A run *passes* when the program exits 0 after running to its end (a marker the launcher prints last).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("_sandbox_launcher.py")
MODES = ("namespaces", "userns", "none")
_NS_FLAGS = ["--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc"]
_PROBE_CACHE: dict[tuple, tuple[str, str]] = {}


@dataclass
class SandboxResult:
    status: str  # "passed" | "failed" | "timeout" | "error" (the sandbox itself could not run the program)
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class SandboxUnavailable(RuntimeError):
    """No isolation mode (of those allowed) could run a trivial program."""


class Sandbox:
    """Executes programs one per subprocess; see the module docstring for what contains them.

    `run(program)` → SandboxResult; `run_many(programs)` runs them on `num_workers` parallel slots.
    """

    def __init__(
        self,
        timeout_s: float = 10.0,
        cpu_time_s: int | None = None,
        memory_mb: int = 1024,
        max_processes: int = 32,
        max_file_mb: int = 16,
        max_open_files: int = 256,
        max_output_bytes: int = 65536,
        tmpfs_mb: int = 64,
        isolation: str = "auto",
        sandbox_uid: int = 64000,
        sandbox_uid_range: int = 1000,
        python: str | None = None,
        tmp_root: str | None = None,
        num_workers: int = 2,
        show_progress: bool = True,
    ) -> None:
        if isolation not in ("auto", *MODES):
            raise ValueError(f"isolation must be one of auto, {', '.join(MODES)}; got {isolation!r}")
        if timeout_s <= 0 or memory_mb <= 0 or max_processes < 1 or num_workers < 1:
            raise ValueError("timeout_s, memory_mb must be > 0 and max_processes, num_workers >= 1")
        self.timeout_s = float(timeout_s)
        self.cpu_time_s = int(cpu_time_s) if cpu_time_s else max(1, int(timeout_s) + 1)
        self.memory_mb = int(memory_mb)
        self.max_processes = int(max_processes)
        self.max_file_mb = int(max_file_mb)
        self.max_open_files = int(max_open_files)
        self.max_output_bytes = int(max_output_bytes)
        self.tmpfs_mb = int(tmpfs_mb)
        self.isolation = isolation
        self.sandbox_uid = int(sandbox_uid)
        self.sandbox_uid_range = max(1, int(sandbox_uid_range))
        self.python = python
        self.tmp_root = tmp_root
        self.num_workers = int(num_workers)
        self.show_progress = show_progress

    # ------------------------------------------------------------------ mode selection
    def _mode_settings(self, mode: str) -> dict | None:
        """Command prefix and launcher flags for a mode, or None if it cannot apply here."""
        root = os.geteuid() == 0
        unshare = shutil.which("unshare")
        if mode == "namespaces":
            if not (root and unshare):
                return None
            return {"prefix": [unshare, *_NS_FLAGS], "private_tmp": True, "drop_uid": True, "patch_socket": False}
        if mode == "userns":
            if not unshare:
                return None
            return {"prefix": [unshare, "--user", "--map-root-user", *_NS_FLAGS], "private_tmp": True,
                    "drop_uid": False, "patch_socket": False}
        return {"prefix": [], "private_tmp": False, "drop_uid": root, "patch_socket": True}

    def _python_candidates(self) -> list[str]:
        if self.python:
            return [self.python]
        cands = [sys.executable, os.path.realpath(sys.executable), getattr(sys, "_base_executable", ""),
                 "/usr/bin/python3", shutil.which("python3") or ""]
        return [c for i, c in enumerate(cands) if c and os.path.exists(c) and c not in cands[:i]]

    def resolve(self) -> tuple[str, str]:
        """(mode, interpreter) that this machine supports, probing once per process and setting."""
        key = (self.isolation, os.geteuid(), self.python, self.sandbox_uid)
        if key not in _PROBE_CACHE:
            modes = MODES if self.isolation == "auto" else (self.isolation,)
            tried = []
            for mode in modes:
                settings = self._mode_settings(mode)
                if settings is None:
                    tried.append(f"{mode}: not applicable")
                    continue
                for python in self._python_candidates():
                    res = self._run(f"print({mode!r})", 0, mode, python, probe=True)
                    if res.passed:
                        _PROBE_CACHE[key] = (mode, python)
                        break
                    tried.append(f"{mode} with {python}: {res.status} rc={res.returncode} {res.stderr[-300:]!r}")
                if key in _PROBE_CACHE:
                    break
            if key not in _PROBE_CACHE:
                raise SandboxUnavailable("no sandbox mode works here:\n  " + "\n  ".join(tried))
            mode, python = _PROBE_CACHE[key]
            level = logging.WARNING if mode == "none" else logging.INFO
            log.log(level, "code sandbox: isolation=%s python=%s%s", mode, python,
                    " (no namespaces: network refused only at Python level)" if mode == "none" else "")
        return _PROBE_CACHE[key]

    @property
    def mode(self) -> str:
        return self.resolve()[0]

    @property
    def protects_host_files(self) -> bool:
        """Whether the program is kept from deleting files outside its work dir that the caller owns."""
        mode = self.mode
        return mode == "namespaces" or (mode == "none" and os.geteuid() == 0)

    # ------------------------------------------------------------------ running
    def run(self, program: str, slot: int = 0) -> SandboxResult:
        mode, python = self.resolve()
        return self._run(program, slot, mode, python)

    def run_many(self, programs: Sequence[str]) -> list[SandboxResult]:
        """Run each program in its own sandbox, `num_workers` at a time; results in input order."""
        if not programs:
            return []
        mode, python = self.resolve()
        slots: queue.Queue[int] = queue.Queue()
        for s in range(self.num_workers):
            slots.put(s)

        def work(program: str) -> SandboxResult:
            slot = slots.get()  # a slot = a distinct uid, so parallel programs' RLIMIT_NPROC do not mix
            try:
                return self._run(program, slot, mode, python)
            finally:
                slots.put(slot)

        from tqdm.auto import tqdm

        with ThreadPoolExecutor(max_workers=self.num_workers) as pool:
            it = pool.map(work, programs)
            return list(tqdm(it, total=len(programs), desc=f"code tests ({mode})", unit="prog",
                             disable=not self.show_progress or len(programs) < 2, leave=False))

    def _run(self, program: str, slot: int, mode: str, python: str, probe: bool = False) -> SandboxResult:
        settings = self._mode_settings(mode)
        assert settings is not None
        base = Path(tempfile.mkdtemp(prefix="kx_sbx_", dir=self.tmp_root))
        nonce = "KX_SANDBOX_DONE_" + secrets.token_hex(16)
        # a uid per worker slot, offset by our pid so two grading processes rarely share one
        uid = self.sandbox_uid + (os.getpid() + slot) % self.sandbox_uid_range if settings["drop_uid"] else None
        spec = {
            "prog_path": str(base / "source.py"),
            "host_root": str(base),
            "private_tmp": settings["private_tmp"],
            "tmpfs_mb": self.tmpfs_mb,
            "uid": uid,
            "gid": uid,
            "patch_socket": settings["patch_socket"],
            "python": python,
            "nonce": nonce,
            "rlimits": {
                "cpu_s": self.cpu_time_s,
                "address_space_bytes": self.memory_mb * 2**20,
                "nproc": self.max_processes,
                "file_size_bytes": self.max_file_mb * 2**20,
                "nofile": self.max_open_files,
            },
        }
        for name, text in (("source.py", program), ("spec.json", json.dumps(spec))):
            (base / name).write_text(text, encoding="utf-8")
            os.chmod(base / name, 0o600)  # read by the launcher before it drops privileges
        cmd = [*settings["prefix"], sys.executable, "-I", "-B", str(LAUNCHER), str(base / "spec.json")]
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LANG": "C.UTF-8"}
        timeout = self.timeout_s if not probe else max(self.timeout_s, 30.0)
        t0 = time.monotonic()
        timed_out = False
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=base, env=env,
                                        start_new_session=True, close_fds=True)
                try:
                    rc = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
                finally:
                    # the group holds unshare, the launcher and whatever the program forked without setsid;
                    # in a pid namespace the rest dies with the launcher (--kill-child)
                    _kill_group(proc.pid)
                    rc = proc.wait()
            except OSError as e:
                _rmtree(base)
                return SandboxResult("error", None, "", f"sandbox start failed: {e!r}", time.monotonic() - t0)
            if uid is not None:
                _reap_uid(uid)  # stragglers that left the group (setsid); also frees the uid's RLIMIT_NPROC count
            duration = time.monotonic() - t0
            stdout, stderr = self._tail(out), self._tail(err)
        _rmtree(base)
        if timed_out:
            status = "timeout"
        elif rc == 0 and stdout.rstrip().endswith(nonce):
            status = "passed"
            stdout = stdout.rstrip()[: -len(nonce)].rstrip("\n")
        elif (rc in (125, 126) and "sandbox: " in stderr) or (rc != 0 and stderr.startswith("unshare:")):
            status = "error"
        else:
            status = "failed"
        return SandboxResult(status, rc, stdout, stderr, duration)

    def _tail(self, f) -> str:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - self.max_output_bytes))
        return f.read().decode("utf-8", errors="replace")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _uid_pids(uid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/status", "rb") as f:
                    for line in f:
                        if line.startswith(b"Uid:"):
                            if int(line.split()[1]) == uid:
                                pids.append(int(entry.name))
                            break
            except (OSError, ValueError, IndexError):
                continue
    return pids


def _reap_uid(uid: int, wait_s: float = 5.0) -> None:
    """SIGKILL every process of the (dedicated) sandbox uid and wait until the kernel has reaped them."""
    deadline = time.monotonic() + wait_s
    while True:
        pids = _uid_pids(uid)
        if not pids or time.monotonic() > deadline:
            if pids:
                log.warning("sandbox uid %d still has processes %s after %.0f s", uid, pids[:10], wait_s)
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.02)


def _rmtree(path: Path) -> None:
    def make_writable_and_retry(func, p, _exc):  # a program may leave read-only dirs behind
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable_and_retry)
