"""Run untrusted Python in a contained process: bubblewrap namespaces, a read-only minimal root, seccomp,
a leased uid, a cgroup and rlimits.

``isolation: bwrap`` (what ``auto`` means; it never falls back silently)
    `bwrap` (Debian's bubblewrap) puts the program in new user, mount, pid, network, IPC, UTS and cgroup
    namespaces (``--unshare-all --disable-userns --cap-drop ALL --new-session --die-with-parent``), on a
    read-only root that holds only the interpreter, its stdlib and the shared libraries those need
    (`sandbox_root.python_root`: no repo, venv, data files, /etc, /run or /var), with size-capped private
    tmpfs on /tmp (its cwd and HOME) and /dev/shm, no network at all (only a downed loopback), SysV IPC and
    abstract unix sockets of its own, and a seccomp filter (`sandbox_root.seccomp_filter`) after
    no_new_privs. Its files arrive as read-only copies under /sandbox (``--ro-bind-data``), its argv as given.
``isolation: none``
    a plain subprocess (rlimits, own session, and as root a leased uid): for trusted code or machines
    without bubblewrap only; it does not keep a program from reading host files or the network.

Always, per sandboxed process (`_sandbox_launcher.py` applies them before exec): as root, its own host uid
leased under a lock (`sandbox_limits.UidPool`: two concurrent runs never share one, so the sweep of that
uid after a run cannot touch another run); a fresh cgroup capping total memory (``memory_mb``, tmpfs and
swap included) and processes (``max_processes``) where this host lets us make one (`discover_cgroups`),
else only the rlimits; RLIMIT_CPU / AS / NPROC / FSIZE (stdout and stderr too) / NOFILE, no core dumps;
stdin = /dev/null; a wall-clock timeout, after which (and after every run) everything it started is
SIGKILLed (pid namespace, cgroup, uid) and its files are removed.

A run's status only reports the program's exit code ("passed" = 0). That is the program's own word: a
verdict about untrusted code must come from a process it cannot reach (see `code_exec`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from tqdm.auto import tqdm

from kronaxis_lab.grading.sandbox_limits import (
    Cgroup,
    CgroupSupport,
    UidLease,
    UidPool,
    discover_cgroups,
    uid_task_count,
)
from kronaxis_lab.grading.sandbox_root import PythonRoot, python_root, seccomp_filter

log = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("_sandbox_launcher.py")
MODES = ("bwrap", "none")
PROGRAM_NAME = "kx_sandbox_prog.py"  # the main script's name; also what tests look for in /proc/*/cmdline
SANDBOX_DIR = "/sandbox"  # where a bwrap sandbox finds its program and files
OVERHEAD_PROCESSES = {"bwrap": 2, "none": 0}  # bwrap's monitor and its pid namespace's init count too
_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
# isolation "none": run the main script by a path relative to the work dir (Python would make a script path
# absolute, and the leased uid may not search the dirs above the staging dir)
_PLAIN_BOOT = (f"import sys\np = '../{PROGRAM_NAME}'\nsys.argv[0] = p\n"
               "g = {'__name__': '__main__', '__file__': p, '__builtins__': __builtins__}\n"
               "exec(compile(open(p, encoding='utf-8').read(), p, 'exec'), g)")
_PROBE_CACHE: dict[tuple, _Setup] = {}
_PROBE_LOCK = threading.Lock()
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class SandboxResult:
    status: str  # "passed" (exit 0) | "failed" | "timeout" | "error" (the sandbox itself could not run it)
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class SandboxUnavailable(RuntimeError):
    """The requested isolation cannot run a trivial program on this machine."""


@dataclass(frozen=True)
class _Setup:
    mode: str
    python: str
    root: PythonRoot | None
    bwrap: str | None
    bpf: bytes | None
    cgroups: CgroupSupport | None
    uid_pool: UidPool | None


@functools.lru_cache(maxsize=1)
def _cgroups() -> CgroupSupport | None:
    support, why = discover_cgroups()
    if support is None:
        log.warning("code sandbox: no usable cgroup (%s); total memory and processes are capped only per "
                    "process by rlimits", why)
    return support


class Sandbox:
    """Executes programs one per sandboxed process; see the module docstring for what contains them.

    `run(program, files, args)` → SandboxResult; `run_many(programs)` runs them on `num_workers` slots;
    `start(...)` returns a running `SandboxProcess` (for programs that talk to each other over pipes).
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
        seccomp: bool = True,
        sandbox_uid: int = 64000,
        sandbox_uid_range: int = 1000,
        python: str | None = None,
        tmp_root: str | None = None,
        num_workers: int = 2,
        show_progress: bool = True,
    ) -> None:
        if isolation not in ("auto", *MODES):
            raise ValueError(f"isolation must be one of auto, {', '.join(MODES)}; got {isolation!r}")
        if timeout_s <= 0 or memory_mb <= 0 or tmpfs_mb <= 0 or max_processes < 1 or num_workers < 1:
            raise ValueError("timeout_s, memory_mb, tmpfs_mb must be > 0 and max_processes, num_workers >= 1")
        self.timeout_s = float(timeout_s)
        self.cpu_time_s = int(cpu_time_s) if cpu_time_s else max(1, int(timeout_s) + 1)
        self.memory_mb = int(memory_mb)
        self.max_processes = int(max_processes)
        self.max_file_mb = int(max_file_mb)
        self.max_open_files = int(max_open_files)
        self.max_output_bytes = int(max_output_bytes)
        self.tmpfs_mb = int(tmpfs_mb)
        self.isolation = "bwrap" if isolation == "auto" else isolation
        self.seccomp = bool(seccomp)
        self.sandbox_uid = int(sandbox_uid)
        self.sandbox_uid_range = max(1, int(sandbox_uid_range))
        self.python = python
        self.tmp_root = tmp_root
        self.num_workers = int(num_workers)
        self.show_progress = show_progress

    # ------------------------------------------------------------------ setup
    def _python_candidates(self) -> list[str]:
        if self.python:
            return [self.python]
        cands = [os.path.realpath(sys.executable), "/usr/bin/python3", shutil.which("python3") or ""]
        return [c for i, c in enumerate(cands) if c and os.path.exists(c) and c not in cands[:i]]

    def _setup(self) -> _Setup:
        key = (self.isolation, self.seccomp, os.geteuid(), self.python, self.sandbox_uid, self.sandbox_uid_range)
        with _PROBE_LOCK:
            if key not in _PROBE_CACHE:
                _PROBE_CACHE[key] = self._probe()
        return _PROBE_CACHE[key]

    def _probe(self) -> _Setup:
        tried = []
        uid_pool = UidPool(self.sandbox_uid, self.sandbox_uid_range) if os.geteuid() == 0 else None
        bwrap = bpf = None
        if self.isolation == "bwrap":
            bwrap = shutil.which("bwrap")
            if bwrap is None:
                raise SandboxUnavailable("isolation 'bwrap' needs bubblewrap: `make setup-system` (apt-get install "
                                         "bubblewrap), or set isolation: none to run code unconfined")
            if self.seccomp:
                try:
                    bpf = seccomp_filter()
                except (ImportError, OSError, RuntimeError) as e:
                    raise SandboxUnavailable(f"cannot build the seccomp filter ({e!r}): install pyseccomp and "
                                             "libseccomp2, or set seccomp: false") from e
        cgroups = _cgroups()
        for python in self._python_candidates():
            root = None
            if bwrap:
                try:
                    root = python_root(python)
                except (OSError, ValueError, subprocess.SubprocessError) as e:
                    tried.append(f"{python}: cannot map its files: {e}")
                    continue
            setup = _Setup(self.isolation, python, root, bwrap, bpf, cgroups, uid_pool)
            res = self._run(setup, "import sys\nprint('ok', sys.version_info[0])", {}, (), timeout_s=30.0)
            if res.passed and res.stdout.split() == ["ok", "3"]:
                level = logging.WARNING if self.isolation == "none" else logging.INFO
                log.log(level, "code sandbox: isolation=%s python=%s seccomp=%s cgroup=%s uids=%s",
                        self.isolation, python, bpf is not None, f"v{cgroups.version}" if cgroups else "none",
                        f"{self.sandbox_uid}+{self.sandbox_uid_range}" if uid_pool else "caller's")
                return setup
            tried.append(f"{python}: {res.status} rc={res.returncode} {res.stderr[-300:]!r}")
        raise SandboxUnavailable(f"isolation {self.isolation!r} cannot run Python here:\n  " + "\n  ".join(tried))

    def resolve(self) -> tuple[str, str]:
        """(mode, interpreter) this machine runs programs with (probed once per process and setting)."""
        s = self._setup()
        return s.mode, s.python

    @property
    def mode(self) -> str:
        return self.resolve()[0]

    @property
    def protects_host_files(self) -> bool:
        """Whether a program is kept from host files (bwrap: it sees none; none: only as root, by uid)."""
        return self.mode == "bwrap" or os.geteuid() == 0

    # ------------------------------------------------------------------ running
    def start(self, program: str, files: Mapping[str, str] | None = None, args: Sequence[str] = (),
              pass_fds: Sequence[int] = ()) -> SandboxProcess:
        """Start `program` (run as the main script, ``__name__ == "__main__"``) with `files` beside it and `args`
        as sys.argv[1:]; `pass_fds` are inherited under the same numbers. Call `finish` (or use `with`)."""
        return SandboxProcess(self, self._setup(), program, dict(files or {}), tuple(args), tuple(pass_fds))

    def run(self, program: str, files: Mapping[str, str] | None = None, args: Sequence[str] = ()) -> SandboxResult:
        return self._run(self._setup(), program, files or {}, args)

    def _run(self, setup: _Setup, program: str, files: Mapping[str, str], args: Sequence[str],
             timeout_s: float | None = None) -> SandboxResult:
        with SandboxProcess(self, setup, program, dict(files), tuple(args), ()) as proc:
            exited = proc.wait(timeout_s or self.timeout_s)
            return proc.finish(timed_out=not exited)

    def map(self, fn: Callable[[T], R], items: Sequence[T], desc: str = "sandbox") -> list[R]:
        """`fn` over `items` on `num_workers` threads (each call runs its own sandboxes); results in order."""
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=self.num_workers) as pool:
            it = pool.map(fn, items)
            return list(tqdm(it, total=len(items), desc=f"{desc} ({self.mode})", unit="prog",
                             disable=not self.show_progress or len(items) < 2, leave=False))

    def run_many(self, programs: Sequence[str]) -> list[SandboxResult]:
        """Run each program in its own sandbox, `num_workers` at a time; results in input order."""
        return self.map(self.run, programs, desc="sandbox") if programs else []


class SandboxProcess:
    """One running sandboxed process; `wait(timeout)`, then `finish()` kills what is left and cleans up."""

    def __init__(self, sb: Sandbox, setup: _Setup, program: str, files: dict[str, str], args: tuple[str, ...],
                 pass_fds: tuple[int, ...]) -> None:
        for name in files:
            if _safe_name(name) == PROGRAM_NAME:
                raise ValueError(f"{PROGRAM_NAME} is the program itself")
        self.sb, self.setup = sb, setup
        self.t0 = time.monotonic()
        self.proc: subprocess.Popen | None = None
        self.start_error = ""
        self.result: SandboxResult | None = None
        self.lease: UidLease | None = None
        self.cgroup: Cgroup | None = None
        self.staging: Path | None = None
        self.out = tempfile.TemporaryFile(dir=sb.tmp_root)
        self.err = tempfile.TemporaryFile(dir=sb.tmp_root)
        fds: list[int] = []
        try:
            if setup.uid_pool is not None:
                self.lease = setup.uid_pool.acquire()
            nproc = sb.max_processes + OVERHEAD_PROCESSES[setup.mode]
            if self.lease is None:
                # no uid of its own (not root): RLIMIT_NPROC counts every task of the caller's uid, so allow for those
                nproc += uid_task_count(os.getuid())
            if setup.cgroups is not None:
                self.cgroup = Cgroup.create(setup.cgroups, sb.memory_mb * 2**20, nproc)
            uid = self.lease.uid if self.lease else None
            if setup.mode == "bwrap":
                argv, cwd, env = self._bwrap_argv({PROGRAM_NAME: program, **files}, args, fds)
            else:
                argv, cwd, env = self._plain_argv({PROGRAM_NAME: program, **files}, args, uid)
            spec = {
                "argv": argv, "env": env, "cwd": cwd, "uid": uid, "no_new_privs": setup.mode == "none",
                "cgroup_procs": self.cgroup.procs_files if self.cgroup else [],
                "rlimits": {
                    "cpu_s": sb.cpu_time_s,
                    "address_space_bytes": sb.memory_mb * 2**20,
                    "nproc": nproc,
                    "file_size_bytes": sb.max_file_mb * 2**20,
                    "nofile": sb.max_open_files,
                },
            }
            spec_fd = _memfd("spec", json.dumps(spec).encode())
            fds.append(spec_fd)
            cmd = [sys.executable, "-I", "-S", "-B", str(LAUNCHER), str(spec_fd)]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err, cwd="/",
                                         env={}, pass_fds=(*fds, *pass_fds), start_new_session=True, close_fds=True)
        except (OSError, TimeoutError) as e:
            self.start_error = f"sandbox start failed: {e!r}"
        finally:
            for fd in fds:
                os.close(fd)

    def _bwrap_argv(self, files: dict[str, str], args: tuple[str, ...], fds: list[int]) -> tuple[list, str, dict]:
        sb, setup = self.sb, self.setup
        tmpfs = str(sb.tmpfs_mb * 2**20)
        argv = [setup.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                "--new-session", "--cap-drop", "ALL", "--hostname", "kx-sandbox", *setup.root.bwrap_args,
                "--proc", "/proc", "--dev", "/dev", "--size", tmpfs, "--tmpfs", "/tmp",
                "--size", tmpfs, "--tmpfs", "/dev/shm", "--dir", SANDBOX_DIR]
        for name, text in files.items():
            fds.append(_memfd(name, text.encode("utf-8")))
            argv += ["--ro-bind-data", str(fds[-1]), f"{SANDBOX_DIR}/{_safe_name(name)}"]
        argv += ["--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
        for k, v in {**_ENV, "HOME": "/tmp", "TMPDIR": "/tmp"}.items():
            argv += ["--setenv", k, v]
        if setup.bpf is not None:
            fds.append(_memfd("seccomp", setup.bpf))
            argv += ["--seccomp", str(fds[-1])]
        argv += ["--", setup.python, "-I", "-S", "-B", f"{SANDBOX_DIR}/{PROGRAM_NAME}", *args]
        return argv, "/", {}

    def _plain_argv(self, files: dict[str, str], args: tuple[str, ...], uid: int | None) -> tuple[list, str, dict]:
        self.staging = Path(tempfile.mkdtemp(prefix="kx_sbx_", dir=self.sb.tmp_root))
        for name, text in files.items():
            path = self.staging / _safe_name(name)
            path.write_text(text, encoding="utf-8")
            path.chmod(0o644)
        work = self.staging / "work"
        work.mkdir(mode=0o700)
        self.staging.chmod(0o711)  # the uid may enter (to reach work/) and read the files it is named, not list
        if uid is not None:
            os.chown(work, uid, uid)
        env = {**_ENV, "HOME": str(work), "TMPDIR": str(work)}
        return [self.setup.python, "-I", "-S", "-B", "-c", _PLAIN_BOOT, *args], str(work), env

    def wait(self, timeout_s: float | None) -> bool:
        """True once the process has exited; False if it is still running after `timeout_s`."""
        if self.proc is None:
            return True
        if timeout_s is not None and self.proc.poll() is None:
            # a pidfd turns readable the moment the process exits (Popen.wait(timeout) polls with up to 50 ms sleeps)
            fd = os.pidfd_open(self.proc.pid)
            try:
                if not select.select([fd], [], [], max(0.0, timeout_s))[0]:
                    return False
            finally:
                os.close(fd)
        self.proc.wait()
        return True

    def kill(self) -> None:
        """SIGKILL the process group: bwrap's death kills its pid namespace (the program and all it forked)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def finish(self, timed_out: bool = False) -> SandboxResult:
        """Kill everything left, free the uid and cgroup, remove the files; the result (computed once)."""
        if self.result is not None:
            return self.result
        rc = None
        try:
            self.kill()
            if self.proc is not None:
                rc = self.proc.wait()
            if self.cgroup is not None:
                self.cgroup.remove()
            if self.lease is not None:
                self.lease.release()
            if self.staging is not None:
                _rmtree(self.staging)
            duration = time.monotonic() - self.t0
            stdout, stderr = self._tail(self.out), self._tail(self.err)
        finally:
            self.out.close()
            self.err.close()
        if self.start_error:
            self.result = SandboxResult("error", None, "", self.start_error, duration)
            return self.result
        if timed_out:
            status = "timeout"
        elif rc == 0:
            status = "passed"
        elif (rc == 125 and "sandbox: " in stderr) or (rc == 1 and stderr.startswith("bwrap: ")):
            status = "error"
        else:
            status = "failed"
        self.result = SandboxResult(status, rc, stdout, stderr, duration)
        return self.result

    def _tail(self, f) -> str:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - self.sb.max_output_bytes))
        return f.read().decode("utf-8", errors="replace")

    def __enter__(self) -> SandboxProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish(timed_out=self.proc is not None and self.proc.poll() is None)


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(f"kx_{name}")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _safe_name(name: str) -> str:
    if not name or "/" in name or name in (".", "..") or name == "work":
        raise ValueError(f"sandbox file names are plain names; got {name!r}")
    return name


def _rmtree(path: Path) -> None:
    def make_writable_and_retry(func, p, _exc):  # a program may leave read-only dirs behind
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable_and_retry)
