"""What a bubblewrap sandbox sees: a read-only root holding one Python interpreter and its stdlib, and the
seccomp filter its processes run under.

`python_root(python)` runs the interpreter once on the host (trusted code), imports every extension module
of its ``lib-dynload`` and reads ``/proc/self/maps``: the root is then exactly the interpreter, its ELF loader,
the shared libraries those modules map, and the stdlib directory (third-party ``site-packages`` inside it
masked by an empty tmpfs), each bound read-only at its host path, with the symlinks on the way (``/lib ->
usr/lib``) recreated. Nothing else of the host (repo, venv, data files, /etc, /run, /var) exists inside.

`seccomp_filter()` is a classic-BPF program (built with libseccomp through `pyseccomp`, handed to
``bwrap --seccomp``): everything is allowed except the syscalls below, which fail with EPERM; ``clone``
with any namespace flag fails too, and ``clone3`` reports ENOSYS so that libc falls back to the filterable
``clone`` (what Docker's and Flatpak's profiles do). bwrap sets no_new_privs before loading it.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import struct
import subprocess
import tempfile
from dataclasses import dataclass

# kernel attack surface a test program never needs: tracing/reading other processes, mounts and namespaces,
# kernel keyrings, eBPF, perf, userfaultfd, io_uring, modules, clocks, swap, reboot, handle-based opens
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "unshare", "setns",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog", "iopl", "ioperm", "uselib",
    "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "fanotify_init", "nfsservctl",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "vhangup",
    "personality", "mbind", "migrate_pages", "move_pages", "set_mempolicy",
)
_CLONE_NS_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x80)
_TIOCSTI = 0x5412  # push characters into the controlling terminal's input

# run by the interpreter under test, on the host, to learn which files it needs
_PROBE = r"""
import importlib, json, os, sys, sysconfig
paths = sysconfig.get_paths()
dynload = [p for p in sys.path if p.rstrip("/").endswith("lib-dynload")]
for d in dynload:
    for name in sorted(os.listdir(d)):
        if name.endswith(".so") and not name.startswith("_tkinter"):  # Tk would drag in X11
            try:
                importlib.import_module(name.split(".")[0])
            except BaseException:
                pass
maps = set()
with open("/proc/self/maps") as f:
    for line in f:
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            maps.add(parts[5].rstrip("\n"))
print(json.dumps({"executable": sys.executable, "stdlib": paths["stdlib"], "platstdlib": paths["platstdlib"],
                  "site": [paths["purelib"], paths["platlib"]], "dynload": dynload, "maps": sorted(maps),
                  "version": sys.version.split()[0]}))
"""


@dataclass(frozen=True)
class PythonRoot:
    python: str  # the path to run inside the sandbox (the same as on the host)
    version: str
    bwrap_args: tuple[str, ...]  # --ro-bind / --symlink / --tmpfs arguments that build the root


def _elf_interpreter(path: str) -> str | None:
    """PT_INTERP of a 64-bit little-endian ELF (the dynamic loader it asks for), else None."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return None
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type, _, p_offset, _, _, p_filesz = struct.unpack("<IIQQQQ", f.read(40))
            if p_type == 3:
                f.seek(p_offset)
                return f.read(p_filesz).rstrip(b"\0").decode()
    return None


class _RootBuilder:
    """Collects bwrap ops that make host paths resolve inside: symlinks recreated, files/dirs bound read-only."""

    def __init__(self) -> None:
        self.symlinks: dict[str, str] = {}  # link path -> target
        self.binds: set[str] = set()

    def add(self, path: str, depth: int = 0) -> None:
        if depth > 40:
            raise OSError(errno.ELOOP, "symlink loop", path)
        parts = os.path.normpath(path).split("/")[1:]
        cur = "/"
        for i, part in enumerate(parts):
            nxt = os.path.join(cur, part)
            if os.path.islink(nxt):
                target = os.readlink(nxt)
                self.symlinks[nxt] = target
                self.add(os.path.join(os.path.normpath(os.path.join(cur, target)), *parts[i + 1:]), depth + 1)
                return
            cur = nxt
        if not os.path.exists(cur):
            raise FileNotFoundError(errno.ENOENT, "needed by the sandboxed interpreter but missing", cur)
        self.binds.add(cur)

    def add_library(self, path: str) -> None:
        """A mapped shared library (its real file) plus the links in its dir that name it (the SONAME the
        loader searches for, e.g. libz.so.1 -> libz.so.1.2.13)."""
        self.add(path)
        real = os.path.realpath(path)
        for entry in _dir_entries(os.path.dirname(real)):
            if entry.is_symlink() and os.path.realpath(entry.path) == real:
                self.symlinks[entry.path] = os.readlink(entry.path)

    def args(self, masks: list[str]) -> tuple[str, ...]:
        dirs = sorted(b for b in self.binds if os.path.isdir(b))
        out: list[str] = []
        for p in sorted(self.binds):  # a file or dir inside a bound dir is there already
            if not any(p.startswith(d + "/") for d in dirs):
                out += ["--ro-bind", p, p]
        for d in sorted({os.path.dirname(link) for link in self.symlinks} - {"/"}):
            out += ["--dir", d]
        for link, target in sorted(self.symlinks.items()):
            out += ["--symlink", target, link]
        for m in masks:  # e.g. pyenv's lib/python3.X/site-packages: hidden behind an empty read-only tmpfs
            out += ["--tmpfs", m, "--remount-ro", m]
        return tuple(out)


@functools.lru_cache(maxsize=64)
def _dir_entries(d: str) -> list[os.DirEntry]:
    return list(os.scandir(d))


@functools.lru_cache(maxsize=8)
def python_root(python: str) -> PythonRoot:
    """The minimal root for `python` (an absolute path); raises OSError / ValueError if it cannot be built."""
    out = subprocess.run([python, "-I", "-S", "-c", _PROBE], capture_output=True, text=True, timeout=60, env={},
                         stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise ValueError(f"{python} probe failed (rc={out.returncode}): {out.stderr[-500:]}")
    info = json.loads(out.stdout.strip().splitlines()[-1])
    b = _RootBuilder()
    b.add(python)
    real = os.path.realpath(python)
    interp = _elf_interpreter(real)
    if interp:
        b.add(interp)
    for p in [info["stdlib"], info["platstdlib"], *info["dynload"]]:
        b.add(p)
    for p in info["maps"]:
        if os.path.isfile(p):
            b.add_library(p)
    stdlib_dirs = [os.path.realpath(p) for p in (info["stdlib"], info["platstdlib"])]
    masks = sorted({os.path.realpath(s) for s in info["site"] if os.path.isdir(s)
                    and any(os.path.realpath(s).startswith(d + "/") for d in stdlib_dirs)})
    return PythonRoot(python, info["version"], b.args(masks))


@functools.lru_cache(maxsize=1)
def seccomp_filter() -> bytes:
    """The BPF program (see module docstring); raises ImportError / OSError where libseccomp is missing."""
    import pyseccomp as sc  # ctypes binding: loads libseccomp.so.2 on import

    f = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED_SYSCALLS:
        if sc.resolve_syscall(sc.Arch.NATIVE, name) >= 0:  # negative: not a syscall on this architecture
            f.add_rule(sc.ERRNO(errno.EPERM), name)
    for flag in _CLONE_NS_FLAGS:
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    if sc.resolve_syscall(sc.Arch.NATIVE, "clone3") >= 0:
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    f.add_rule(sc.ERRNO(errno.EPERM), "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, _TIOCSTI))
    with tempfile.TemporaryFile() as t:
        f.export_bpf(t)
        t.seek(0)
        return t.read()
