"""Host-side limits of the code sandbox: uids handed out under a lock, per-run cgroups, process sweeps.

- `UidPool`: as root, every sandboxed process runs as its own host uid, leased from
  ``first .. first + count - 1`` under an exclusive `flock` on ``<lock_dir>/<uid>.lock``. The lock is held
  until the run's processes are gone, so two runs (threads or separate grading processes) never share a
  uid, and sweeping "every process of this uid" after a run can only hit that run's own processes.
- `CgroupSupport` / `Cgroup`: a fresh cgroup per run caps the *total* memory (``memory.max`` /
  ``memory.limit_in_bytes``, swap included) and process count (``pids.max``) of everything the run starts,
  and is emptied with SIGKILL (``cgroup.kill`` on v2) before it is removed. cgroup v2 is used where our own
  cgroup already delegates the memory and pids controllers to children, else cgroup v1 where its memory and
  pids hierarchies are writable; `discover_cgroups` returns None where neither works (then only the
  per-process rlimits apply: total memory <= max_processes x memory_mb).
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import random
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

UID_LOCK_DIR = Path("/run/kx_sandbox_uids")  # one place for every grading process of this host (root only)
_CG_PREFIX = "kx_sbx_"
_cg_counter = itertools.count()


# ---------------------------------------------------------------------------------------------- processes
def uid_pids(uid: int) -> list[int]:
    """Live (non-zombie) pids whose real or effective uid is `uid`.

    Zombies are skipped: they run nothing, and bwrap's pid-namespace init can be left as one for the host's
    init to reap."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"State:") and line.split()[1] == b"Z":
                        break
                    if line.startswith(b"Uid:"):
                        if uid in (int(x) for x in line.split()[1:3]):
                            pids.append(int(entry.name))
                        break
        except (OSError, ValueError, IndexError):
            continue
    return pids


def uid_task_count(uid: int) -> int:
    """Threads (what RLIMIT_NPROC counts) of all processes whose real uid is `uid`."""
    n = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                fields = dict(line.split(b":", 1) for line in f if line.startswith((b"Uid:", b"Threads:")))
            if int(fields[b"Uid"].split()[0]) == uid:
                n += int(fields[b"Threads"])
        except (OSError, ValueError, KeyError):
            continue
    return n


def kill_pids_until_gone(list_pids, what: str, wait_s: float = 5.0) -> None:
    """SIGKILL whatever `list_pids()` returns until it returns nothing (a fork racing the kill is caught next round)."""
    deadline = time.monotonic() + wait_s
    while True:
        pids = list_pids()
        if not pids:
            return
        if time.monotonic() > deadline:
            log.warning("%s still has processes %s after %.0f s", what, pids[:10], wait_s)
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------- uid pool
@dataclass
class UidLease:
    uid: int
    _fd: int

    def release(self) -> None:
        """Kill what is left under the uid (it is ours alone while the lock is held), then free it."""
        if self._fd < 0:
            return
        kill_pids_until_gone(lambda: uid_pids(self.uid), f"sandbox uid {self.uid}")
        os.close(self._fd)  # closing the last fd of the lock file drops the flock
        self._fd = -1


class UidPool:
    def __init__(self, first: int, count: int, lock_dir: Path = UID_LOCK_DIR) -> None:
        if first < 1000 or count < 1:
            raise ValueError(f"sandbox uids must be >= 1000 and count >= 1; got {first} + {count}")
        self.first, self.count, self.lock_dir = int(first), int(count), Path(lock_dir)

    def _lock_dir(self) -> Path:
        try:
            self.lock_dir.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass
        st = os.lstat(self.lock_dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise PermissionError(f"{self.lock_dir} must be a dir of uid {os.geteuid()}, not group/world-writable")
        return self.lock_dir

    def acquire(self, timeout_s: float = 60.0) -> UidLease:
        """Lease a free uid (waits while all are taken); stale processes of a crashed holder are killed first."""
        lock_dir = self._lock_dir()
        deadline = time.monotonic() + timeout_s
        while True:
            start = random.randrange(self.count)
            for i in range(self.count):
                uid = self.first + (start + i) % self.count
                fd = os.open(lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                kill_pids_until_gone(lambda u=uid: uid_pids(u), f"stale sandbox uid {uid}")
                return UidLease(uid, fd)
            if time.monotonic() > deadline:
                raise TimeoutError(f"all {self.count} sandbox uids from {self.first} busy for {timeout_s:.0f} s")
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- cgroups
@dataclass(frozen=True)
class CgroupSupport:
    version: int  # 1 or 2
    parents: tuple[Path, ...]  # v2: (our cgroup,); v1: (memory parent, pids parent)


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(fstype, mount point, super options) of the cgroup mounts."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, post_fields = pre.split(), post.split()
            if len(post_fields) >= 3 and post_fields[0] in ("cgroup", "cgroup2"):
                out.append((post_fields[0], fields[4], set(post_fields[2].split(","))))
    return out


def _own_cgroups() -> dict[str, str]:
    """controller -> our cgroup path ("" for the v2 hierarchy)."""
    own = {}
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                own[c] = path
    return own


def _candidates() -> list[CgroupSupport]:
    mounts, own = _mounts(), _own_cgroups()
    found = []
    for fstype, mnt, _ in mounts:
        if fstype == "cgroup2" and "" in own:
            base = Path(mnt + own[""])
            try:
                enabled = (base / "cgroup.subtree_control").read_text().split()
            except OSError:
                continue
            if {"memory", "pids"} <= set(enabled):
                found.append(CgroupSupport(2, (base,)))
    v1 = {}
    for fstype, mnt, opts in mounts:
        for c in ("memory", "pids"):
            if fstype == "cgroup" and c in opts and c in own:
                v1[c] = Path(mnt + own[c])
    if len(v1) == 2:
        found.append(CgroupSupport(1, (v1["memory"], v1["pids"])))
    return found


def discover_cgroups() -> tuple[CgroupSupport | None, str]:
    """The first cgroup setup in which a test child can be made and limited here, and why if none."""
    reasons = []
    try:
        candidates = _candidates()
    except OSError as e:
        return None, f"cannot read cgroup mounts: {e}"
    for support in candidates:
        try:
            Cgroup.create(support, 64 * 2**20, 8).remove()
            return support, f"cgroup v{support.version}"
        except OSError as e:
            reasons.append(f"v{support.version} at {support.parents[0]}: {e}")
    return None, "; ".join(reasons) or "no cgroup hierarchy with memory + pids controllers we can write"


class Cgroup:
    """One run's cgroup (v2: one dir; v1: a dir in the memory and in the pids hierarchy)."""

    def __init__(self, version: int, dirs: tuple[Path, ...]) -> None:
        self.version, self.dirs = version, dirs

    @classmethod
    def create(cls, support: CgroupSupport, memory_bytes: int, max_pids: int) -> Cgroup:
        name = f"{_CG_PREFIX}{os.getpid()}_{next(_cg_counter)}"
        made: list[Path] = []
        try:
            for parent in support.parents:
                d = parent / name
                d.mkdir()
                made.append(d)
            cg = cls(support.version, tuple(made))
            cg._limit(memory_bytes, max_pids)
            return cg
        except OSError:
            for d in made:
                _rmdir(d)
            raise

    def _limit(self, memory_bytes: int, max_pids: int) -> None:
        if self.version == 2:
            d = self.dirs[0]
            _write(d / "memory.max", memory_bytes)
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", 0)
            _write(d / "pids.max", max_pids)
        else:
            mem, pids = self.dirs
            _write(mem / "memory.limit_in_bytes", memory_bytes)
            if (mem / "memory.memsw.limit_in_bytes").exists():  # swap accounting on: cap memory + swap too
                _write(mem / "memory.memsw.limit_in_bytes", memory_bytes)
            _write(pids / "pids.max", max_pids)

    @property
    def procs_files(self) -> list[str]:
        """What a process writes its pid to, to enter this cgroup (all of them, before it starts the program)."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> list[int]:
        out: set[int] = set()
        for d in self.dirs:
            try:
                out.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                continue
        return sorted(out)

    def kill(self) -> None:
        if self.version == 2 and (self.dirs[0] / "cgroup.kill").exists():
            try:
                _write(self.dirs[0] / "cgroup.kill", 1)
            except OSError:
                pass
        kill_pids_until_gone(self.pids, f"cgroup {self.dirs[0]}")

    def remove(self) -> None:
        self.kill()
        for d in self.dirs:
            _rmdir(d)


def _write(path: Path, value: int) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(str(int(value)))


def _rmdir(d: Path) -> None:
    for _ in range(100):  # the kernel frees a cgroup a moment after its last process is reaped
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                log.warning("cannot remove cgroup %s: %s", d, e)
                return
            time.sleep(0.01)
    log.warning("cgroup %s still busy; left in place", d)
