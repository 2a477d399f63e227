"""Sandbox launcher: run as a script (``python -I _sandbox_launcher.py spec.json``), stdlib only.

`kronaxis_lab.grading.sandbox.Sandbox` starts this, inside fresh net/pid/mount namespaces where it can
(`unshare`), as root or as the namespace's root. It
  1. reads the spec and the program from the host (before anything is mounted over them);
  2. optionally mounts private tmpfs over /tmp, /var/tmp and /dev/shm (so nothing the program writes
     there reaches the host and the host's temp files are out of its sight), and builds the work dir;
  3. forks the program's process: rlimits, then drops to the sandbox uid/gid, cd to the work dir,
     HOME = work dir, exec of the interpreter with a minimal environment;
  4. waits and exits with the program's status (128 + signal if it was killed). When this process
     exits it is the pid namespace's init, so the kernel kills everything the program left behind.
"""

import json
import os
import resource
import sys

PROG_NAME = "kx_sandbox_prog.py"  # also the marker the tests look for in /proc/*/cmdline

# Runs the program under a name other than "__main__" (so `if __name__ == "__main__":` blocks that read
# stdin or call sys.exit stay out), and reports success on a private copy of stdout only after the
# program returned: an early sys.exit(0) / os._exit(0) therefore does not count as passing.
BOOTSTRAP = r"""
import os, sys
_fd = os.dup(1)
_patch = __PATCH__
if _patch:
    exec(_patch)
del _patch
with open(sys.argv[1], encoding="utf-8") as _f:
    _code = compile(_f.read(), sys.argv[1], "exec")
exec(_code, {"__name__": "__sandbox__", "__file__": sys.argv[1], "__builtins__": __builtins__})
try:
    sys.stdout.flush()
except Exception:
    pass
os.write(_fd, ("\n" + sys.argv[2] + "\n").encode())
"""

# Fallback when no network namespace is available: refuse socket use from Python. (A namespace is the
# real guard; this stops ordinary library calls, not a determined program.)
SOCKET_PATCH = r"""
import socket as _s
def _no_net(*a, **k):
    raise OSError(101, "network disabled in sandbox")
for _name in ("connect", "connect_ex", "bind", "sendto", "sendmsg", "listen"):
    setattr(_s.socket, _name, _no_net)
_s.create_connection = _no_net
_s.getaddrinfo = _no_net
_s.socketpair = _no_net
del _s, _name
"""

RLIMITS = {
    "cpu_s": resource.RLIMIT_CPU,
    "address_space_bytes": resource.RLIMIT_AS,
    "nproc": resource.RLIMIT_NPROC,
    "file_size_bytes": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE,
}


def _mount_tmpfs(target: str, size_mb: int, mode: str) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    opts = f"size={int(size_mb)}m,mode={mode}".encode()
    if libc.mount(b"tmpfs", target.encode(), b"tmpfs", 0, opts) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {target}: {os.strerror(err)}")


def _prepare(spec: dict) -> tuple[str, str]:
    """Make the work dir and program file; returns (program path, work dir)."""
    with open(spec["prog_path"], encoding="utf-8") as f:
        source = f.read()
    uid, gid = spec.get("uid"), spec.get("gid")
    if spec.get("private_tmp"):
        for d in ("/tmp", "/var/tmp", "/dev/shm"):
            if os.path.isdir(d):
                _mount_tmpfs(d, spec["tmpfs_mb"], "1777")
        root = "/tmp/kx_sandbox"
        os.mkdir(root, 0o755)
    else:
        root = spec["host_root"]
    work = os.path.join(root, "work")
    os.makedirs(work, mode=0o700, exist_ok=True)
    prog = os.path.join(root, PROG_NAME)
    with open(prog, "w", encoding="utf-8") as f:
        f.write(source)
    os.chmod(prog, 0o644)
    os.chmod(root, 0o755)  # readable, not writable: the program cannot delete its own parent dir
    if uid is not None:
        os.chown(work, uid, gid)
    return prog, work


def _child(spec: dict, prog: str, work: str) -> None:
    os.umask(0o077)
    for key, value in spec["rlimits"].items():
        if value is not None:
            resource.setrlimit(RLIMITS[key], (int(value), int(value) + (1 if key == "cpu_s" else 0)))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # enter the work dir through an fd opened before dropping privileges: the uid then needs no search
    # permission on the dirs above it (e.g. a 0700 tmp_root); the program is named relative to it
    work_fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    if spec.get("uid") is not None:
        os.setgroups([])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
    os.fchdir(work_fd)
    os.close(work_fd)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": work,
        "TMPDIR": "/tmp" if spec.get("private_tmp") else work,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }
    bootstrap = BOOTSTRAP.replace("__PATCH__", repr(SOCKET_PATCH if spec.get("patch_socket") else ""))
    argv = [spec["python"], "-I", "-B", "-c", bootstrap, os.path.join("..", os.path.basename(prog)), spec["nonce"]]
    os.closerange(3, 65536)
    os.execve(spec["python"], argv, env)


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    try:
        prog, work = _prepare(spec)
    except Exception as e:
        os.write(2, f"sandbox: setup failed: {e!r}\n".encode())
        return 125
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            _child(spec, prog, work)
        except BaseException as e:  # exec failed: report and never fall back into the launcher
            os.write(2, f"sandbox: cannot start program: {e!r}\n".encode())
        os._exit(126)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


if __name__ == "__main__":
    sys.exit(main())
