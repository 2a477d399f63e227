"""Sandbox launcher: ``python -I -S -B _sandbox_launcher.py SPEC_FD``, stdlib only, trusted.

`kronaxis_lab.grading.sandbox.Sandbox` starts this for every sandboxed process. It reads the spec (JSON)
from the inherited fd, then, in this order, so that nothing the program runs escapes them:
  1. enters the run's cgroup(s) (writes its pid to each ``cgroup.procs``: total memory + process caps);
  2. sets the rlimits (CPU, address space, processes, file size, open files, no core dumps);
  3. sets no_new_privs where asked (bwrap sets it itself before its seccomp filter);
  4. drops to the run's leased uid/gid with no supplementary groups (as root);
  5. execs the command: ``bwrap ...`` (which builds the namespaces and the read-only root) or, in
     isolation "none", the interpreter directly, in `cwd` with exactly `env`.
Exit 125 with ``sandbox: ...`` on stderr when a step fails.
"""

import json
import os
import resource
import sys

RLIMITS = {
    "cpu_s": resource.RLIMIT_CPU,
    "address_space_bytes": resource.RLIMIT_AS,
    "nproc": resource.RLIMIT_NPROC,
    "file_size_bytes": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE,
}
PR_SET_NO_NEW_PRIVS = 38


def _read_spec(fd: int) -> dict:
    chunks = []
    while True:
        b = os.read(fd, 1 << 16)
        if not b:
            break
        chunks.append(b)
    os.close(fd)
    return json.loads(b"".join(chunks))


def _no_new_privs() -> None:
    import ctypes  # only in isolation "none"; ctypes costs ~5 ms of start-up

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")


def main() -> int:
    try:
        spec = _read_spec(int(sys.argv[1]))
        for procs in spec["cgroup_procs"]:
            with open(procs, "w", encoding="ascii") as f:
                f.write(str(os.getpid()))
        for key, value in spec["rlimits"].items():
            resource.setrlimit(RLIMITS[key], (int(value), int(value) + (1 if key == "cpu_s" else 0)))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if spec["no_new_privs"]:
            _no_new_privs()
        # enter the work dir through an fd opened before dropping privileges: the uid then needs no search
        # permission on the dirs above it (e.g. a 0700 tmp_root); the program is named relative to it
        cwd_fd = os.open(spec["cwd"], os.O_RDONLY | os.O_DIRECTORY)
        if spec["uid"] is not None:
            os.setgroups([])
            os.setgid(spec["uid"])
            os.setuid(spec["uid"])
        os.fchdir(cwd_fd)
        os.close(cwd_fd)
        argv = spec["argv"]
    except Exception as e:  # noqa: BLE001 - any setup failure is reported to the sandbox as exit 125
        os.write(2, f"sandbox: setup failed: {e!r}\n".encode())
        return 125
    try:
        os.execve(argv[0], argv, spec["env"])
    except OSError as e:
        os.write(2, f"sandbox: cannot start {argv[0]}: {e!r}\n".encode())
    return 125


if __name__ == "__main__":
    sys.exit(main())
