"""Sandbox containment: hostile programs must leave the machine unharmed.

Each attack runs for real; the assertions check the host afterwards (`HostState`: files in /run/lock,
/var/lock, /dev/shm, SysV shm segments, leftover sandbox processes and cgroups, the work dir), and that the
attack code actually ran to its end inside the sandbox where that matters.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kronaxis_lab.grading.code_exec import CodeExecutionGrader
from kronaxis_lab.grading.sandbox import PROGRAM_NAME, Sandbox
from kronaxis_lab.grading.sandbox_limits import UidPool, discover_cgroups

TIMEOUT = 4.0
ROOT = Path(__file__).resolve().parents[1]
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap missing: `make setup-system`")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="uid leasing needs root")


# ---------------------------------------------------------------------------------------------- host checks
def _procs_with(marker: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains `marker`."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if marker.encode() in (p / "cmdline").read_bytes():
                state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    pids.append(int(p.name))
        except OSError:
            continue
    return pids


def _listing(d: str) -> set[str]:
    try:
        return set(os.listdir(d))
    except OSError:
        return set()


def _shm_segments() -> set[str]:
    """SysV shared memory segment ids on the host (what `ipcs -m` lists)."""
    try:
        return {line.split()[1] for line in Path("/proc/sysvipc/shm").read_text().splitlines()[1:] if line.strip()}
    except OSError:
        return set()


def _sandbox_cgroups() -> set[str]:
    support, _ = discover_cgroups()
    if support is None:
        return set()
    return {str(p) for parent in support.parents for p in parent.glob(f"kx_sbx_{os.getpid()}_*")}


@dataclass
class HostState:
    run_lock: set[str]
    var_lock: set[str]
    dev_shm: set[str]
    shm: set[str]
    cgroups: set[str]

    @classmethod
    def now(cls) -> HostState:
        return cls(_listing("/run/lock"), _listing("/var/lock"), _listing("/dev/shm"), _shm_segments(), _sandbox_cgroups())

    def assert_unchanged(self, sb: Sandbox | None = None) -> None:
        deadline = time.monotonic() + 3
        while (_procs_with(PROGRAM_NAME) or _procs_with("kx-sandbox")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _procs_with(PROGRAM_NAME) == [] and _procs_with("kx-sandbox") == [], "sandbox processes left"
        after = HostState.now()
        assert after.run_lock == self.run_lock and after.var_lock == self.var_lock, "files left in /run/lock"
        assert after.dev_shm == self.dev_shm, "files left in /dev/shm"
        assert after.shm == self.shm, "SysV shm segments left (ipcs -m)"
        assert after.cgroups == self.cgroups, "sandbox cgroups left"
        if sb is not None and sb.tmp_root:
            assert list(Path(sb.tmp_root).iterdir()) == [], "per-run files left"


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def make_sandbox(tmp_path):
    def make(**kw) -> Sandbox:
        root = tmp_path / "sbx"
        root.mkdir(exist_ok=True)
        params = dict(timeout_s=TIMEOUT, memory_mb=512, max_processes=16, max_file_mb=4, tmp_root=str(root),
                      show_progress=False)
        params.update(kw)
        return Sandbox(**params)

    return make


@pytest.fixture(params=["bwrap", "none"])
def isolation(request):
    """For the checks both modes must pass (bwrap is what auto means; none is the unconfined fallback)."""
    if request.param == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap missing: `make setup-system`")
    return request.param


@pytest.fixture
def host():
    return HostState.now()


# ---------------------------------------------------------------------------------------------- both modes
def test_basic_run_exit_status_and_output(make_sandbox, isolation, host):
    sb = make_sandbox(isolation=isolation)
    res = sb.run("import sys\nprint('hello from the sandbox', sys.argv[1:])", args=["a", "b"])
    assert res.passed and res.returncode == 0 and res.stdout.strip() == "hello from the sandbox ['a', 'b']"
    res = sb.run("raise SystemExit(3)")
    assert res.status == "failed" and res.returncode == 3
    files = sb.run("import os\nprint(open(os.path.join(os.path.dirname(__file__), 'data.txt')).read())",
                   files={"data.txt": "payload"})
    assert files.passed and files.stdout.strip() == "payload"
    host.assert_unchanged(sb)


def test_fork_bomb_is_contained(make_sandbox, isolation, host):
    if isolation == "none" and os.geteuid() != 0:
        pytest.skip("without a leased uid RLIMIT_NPROC counts the caller's own processes")
    sb = make_sandbox(isolation=isolation)
    counting = (
        "import os, time\n"
        "n = 0\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
        "print(n)\n"
    )
    res = sb.run(counting)
    assert res.passed, res.stderr
    assert 0 < int(res.stdout.strip()) < sb.max_processes
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    t0 = time.monotonic()
    assert sb.run(bomb).status == "timeout"
    assert time.monotonic() - t0 < TIMEOUT + 8
    pid = os.fork()  # the test process itself can still fork
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    host.assert_unchanged(sb)


def test_infinite_loop_and_sleep_time_out(make_sandbox, isolation, host):
    sb = make_sandbox(isolation=isolation, timeout_s=2.0)
    results = sb.run_many(["while True:\n    pass\n", "import time\ntime.sleep(1000)\n"])
    assert [r.status for r in results] == ["timeout", "timeout"]
    host.assert_unchanged(sb)


def test_no_new_privs(make_sandbox, isolation):
    res = make_sandbox(isolation=isolation).run("print(open('/proc/self/status').read())")
    status = dict(line.split(":\t", 1) for line in res.stdout.splitlines() if ":\t" in line)
    assert status["NoNewPrivs"].strip() == "1"
    if isolation == "bwrap":
        assert status["Seccomp"].strip() == "2" and int(status["CapEff"], 16) == 0


# ---------------------------------------------------------------------------------------------- bwrap
@needs_bwrap
def test_minimal_read_only_root_without_host_paths(make_sandbox, host, monkeypatch):
    monkeypatch.setenv("KX_SECRET_TOKEN", "s3cr3t")
    sb = make_sandbox()
    probes = [str(ROOT), str(ROOT / ".venv"), str(ROOT / "data"), str(ROOT.parent / "shared"), "/etc", "/run",
              "/var", "/root", "/home", "/run/lock", "/var/lock", "/usr/local", "/opt", "/srv", "/mnt"]
    prog = (
        "import os, sys\n"
        "assert os.environ['HOME'] == os.getcwd() == '/tmp', (os.environ['HOME'], os.getcwd())\n"
        "assert 'KX_SECRET_TOKEN' not in os.environ\n"
        "assert sys.stdin.read() == ''\n"
        f"for p in {probes!r}:\n"
        "    assert not os.path.exists(p), p\n"
        "print(sorted(os.listdir('/')))\n"
        "print([p for p in sys.path if 'packages' in p])\n"
        "for mod in ('numpy', 'torch', 'kronaxis_lab', 'pip'):\n"
        "    try:\n"
        "        __import__(mod)\n"
        "        print('imported', mod)\n"
        "    except ImportError:\n"
        "        pass\n"
        "import ctypes, json, hashlib, decimal, sqlite3\n"  # the stdlib works, C extensions included
        "for target in ['/usr/x', '/x', '/sandbox/x', sys.executable]:\n"
        "    try:\n"
        "        open(target, 'a').close()\n"
        "        print('wrote', target)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    res = sb.run(prog)
    assert res.passed, res.stderr
    top, site, *rest = res.stdout.splitlines()
    assert set(eval(top)) <= {"dev", "proc", "tmp", "sandbox", "usr", "lib", "lib64", "bin", "sbin"}
    assert site == "[]" and rest == []
    host.assert_unchanged(sb)


@needs_bwrap
def test_namespaces_differ_from_the_host(make_sandbox):
    names = ["ipc", "uts", "cgroup", "net", "pid", "mnt", "user"]
    res = make_sandbox().run(f"import os, socket\nprint([os.readlink('/proc/self/ns/' + n) for n in {names!r}])\n"
                             "print(socket.gethostname(), os.getuid(), os.getpid())")
    assert res.passed, res.stderr
    inside, (hostname, uid, pid) = eval(res.stdout.splitlines()[0]), res.stdout.splitlines()[1].split()
    for name, ns in zip(names, inside):
        assert ns != os.readlink(f"/proc/self/ns/{name}"), name
    assert hostname == "kx-sandbox" and hostname != socket.gethostname()
    assert int(uid) != 0 and int(pid) <= 3  # its own pid namespace


@needs_bwrap
def test_seccomp_denies_kernel_attack_surface(make_sandbox):
    prog = (
        "import ctypes, errno, os, subprocess, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def err(rc):\n"
        "    return errno.errorcode.get(ctypes.get_errno(), '?') if rc == -1 else 'allowed'\n"
        "out = {}\n"
        "out['ptrace'] = err(libc.ptrace(0, 0, 0, 0))\n"  # PTRACE_TRACEME
        "out['unshare'] = err(libc.unshare(0x10000000))\n"  # CLONE_NEWUSER
        "out['mount'] = err(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))\n"
        "out['keyctl'] = err(libc.syscall(250, 0, 0, 0, 0, 0))\n"  # x86_64 keyctl
        "out['bpf'] = err(libc.syscall(321, 0, 0, 0))\n"
        "out['userfaultfd'] = err(libc.syscall(323, 0))\n"
        "out['io_uring_setup'] = err(libc.syscall(425, 1, 0))\n"
        "pid = os.fork()\n"  # plain fork and spawning still work (clone3 -> ENOSYS -> clone)
        "if pid == 0:\n"
        "    os._exit(7)\n"
        "out['fork'] = os.WEXITSTATUS(os.waitpid(pid, 0)[1])\n"
        "out['spawn'] = subprocess.run([sys.executable, '-c', 'print(42)'], capture_output=True).stdout.strip()\n"
        "print(out)\n"
    )
    res = make_sandbox().run(prog)
    assert res.passed, res.stderr
    out = eval(res.stdout)
    import platform

    denied = ["ptrace", "unshare", "mount"] + (["keyctl", "bpf", "userfaultfd", "io_uring_setup"]
                                               if platform.machine() == "x86_64" else [])
    assert {k: out[k] for k in denied} == {k: "EPERM" for k in denied}
    assert out["fork"] == 7 and out["spawn"] == b"42"


@needs_bwrap
def test_orphaned_background_process_is_killed(make_sandbox, host):
    sb = make_sandbox()
    prog = ("import subprocess, sys\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(987654)'], start_new_session=True)\n"
            "print('spawned')")
    res = sb.run(prog)
    assert res.passed and "spawned" in res.stdout
    assert _procs_with("987654") == []
    host.assert_unchanged(sb)


@needs_bwrap
def test_rmtree_of_everything_leaves_host_files(make_sandbox, tmp_path, monkeypatch, host):
    real_home = tmp_path / "home"
    real_home.mkdir()
    (real_home / "sentinel.txt").write_text("keep")
    monkeypatch.setenv("HOME", str(real_home))
    sb = make_sandbox()
    prog = (
        "import os, shutil\n"
        f"for target in [os.getcwd(), '/', {str(tmp_path)!r}, {str(real_home)!r}, {str(ROOT)!r}]:\n"
        "    shutil.rmtree(target, ignore_errors=True)\n"
        "print('attacks done')\n"
    )
    res = sb.run(prog)
    assert res.passed and "attacks done" in res.stdout, res.stderr  # the attack really ran to its end
    assert (real_home / "sentinel.txt").read_text() == "keep"
    assert (ROOT / "pyproject.toml").exists()
    host.assert_unchanged(sb)


@needs_bwrap
def test_memory_limits(make_sandbox):
    sb = make_sandbox(memory_mb=256)
    t0 = time.monotonic()
    res = sb.run("x = bytearray(8 * 1024**3)\nprint(len(x))")
    assert res.status == "failed" and "MemoryError" in res.stderr
    assert time.monotonic() - t0 < TIMEOUT
    assert sb.run("x = bytearray(32 * 1024**2)\nassert len(x) == 32 * 1024**2").passed  # under the limit: fine


@needs_bwrap
@pytest.mark.skipif(discover_cgroups()[0] is None, reason="no writable cgroup: only per-process rlimits here")
def test_total_memory_of_all_processes_is_capped(make_sandbox, host):
    """6 children × 150 MB (each under RLIMIT_AS) must not all live at once under memory_mb=256.

    Counted as children alive *together* after allocating (not as children that ever finished allocating:
    when the OOM killer kills one holder, the next child's allocation succeeds, so under load two can have
    allocated one after the other without ever coexisting)."""
    sb = make_sandbox(memory_mb=256, timeout_s=12)
    prog = (
        "import os, time\n"
        "r, w = os.pipe()\n"
        "pids = []\n"
        "for i in range(6):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        block = b'x' * (150 * 2**20)\n"  # really touched: bytes() * n writes every page
        "        os.write(w, bytes([i]))\n"
        "        time.sleep(6)\n"
        "        os._exit(0)\n"
        "    pids.append(pid)\n"
        "os.close(w)\n"
        "time.sleep(2)\n"
        "os.set_blocking(r, False)\n"
        "try:\n"
        "    allocated = set(os.read(r, 100))\n"
        "except BlockingIOError:\n"
        "    allocated = set()\n"
        # holding 150 MB right now: allocated, and neither exited nor killed since
        "print(sum(os.waitpid(pids[i], os.WNOHANG) == (0, 0) for i in allocated))\n"
    )
    res = sb.run(prog)
    alive = int(res.stdout.strip() or 0) if res.passed else 0
    assert alive <= 1, (alive, res)
    host.assert_unchanged(sb)


@needs_bwrap
def test_no_network_even_to_localhost(make_sandbox):
    sb = make_sandbox()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(5)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        prog = (
            "import _socket\n"
            "s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n"
            "s.settimeout(2)\n"
            f"print(s.connect_ex(('127.0.0.1', {port})))\n"
        )
        res = sb.run(prog)
        assert res.passed and res.stdout.strip() != "0"
        with pytest.raises(socket.timeout):
            server.accept()


@needs_bwrap
def test_files_tmpfs_and_output_floods_are_capped(make_sandbox, host):
    sb = make_sandbox(max_file_mb=4, tmpfs_mb=16)
    prog = ("chunk = b'x' * 2**20\nwith open('big.bin', 'wb') as f:\n    for _ in range(1024):\n"
            "        f.write(chunk)\nprint('wrote 1 GiB')\n")
    t0 = time.monotonic()
    res = sb.run(prog)
    assert res.status == "failed" and "wrote 1 GiB" not in res.stdout
    assert time.monotonic() - t0 < TIMEOUT
    # many files under the per-file limit: the tmpfs size stops them (no disk fill via /tmp or /dev/shm)
    fill = ("import errno\nfor d in ['/tmp', '/dev/shm']:\n    n = 0\n    try:\n        for i in range(100):\n"
            "            with open(f'{d}/f{i}', 'wb') as f:\n                f.write(b'y' * 3 * 2**20)\n"
            "            n += 1\n    except OSError as e:\n        assert e.errno == errno.ENOSPC, e\n    print(d, n)\n")
    res = sb.run(fill)
    assert res.passed, res.stderr
    assert all(int(line.split()[1]) <= 16 // 3 for line in res.stdout.splitlines())
    assert sb.run("import sys\nfor _ in range(10**6):\n    sys.stdout.write('y' * 1000)\n").status in ("failed", "timeout")
    host.assert_unchanged(sb)


@needs_bwrap
def test_lock_dirs_and_sysv_shm_stay_private(make_sandbox, host):
    prog = (
        "import ctypes, os\n"
        "for d in ['/run/lock', '/var/lock', '/dev/shm', '/tmp']:\n"
        "    try:\n"
        "        with open(d + '/kx_probe', 'wb') as f:\n"
        "            f.write(b'z' * 2**20)\n"
        "        print('wrote', d)\n"
        "    except OSError:\n"
        "        print('refused', d)\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "ids = [libc.shmget(0, 64 * 2**20, 0o1000 | 0o600) for _ in range(2)]\n"  # IPC_PRIVATE, IPC_CREAT
        "print('shm', ids)\n"
    )
    sb = make_sandbox()
    res = sb.run(prog)
    assert res.passed, res.stderr
    lines = res.stdout.splitlines()
    assert "refused /run/lock" in lines and "refused /var/lock" in lines and "wrote /dev/shm" in lines
    assert all(i >= 0 for i in eval(lines[-1].split(" ", 1)[1]))  # the segments existed inside...
    host.assert_unchanged(sb)  # ...and are gone with its IPC namespace


@needs_bwrap
def test_two_concurrent_sandboxes_cannot_talk(make_sandbox, host):
    server = (
        "import socket, time\n"
        "a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "a.bind('\\0kx_sandbox_probe')\n"
        "a.listen(1)\n"
        "p = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "p.bind('/tmp/kx_probe.sock')\n"
        "p.listen(1)\n"
        "print('listening', flush=True)\n"
        "time.sleep(3)\n"
    )
    client = (
        "import socket, time\n"
        "time.sleep(1)\n"
        "for addr in ['\\0kx_sandbox_probe', '/tmp/kx_probe.sock', '/run/lock/kx_probe.sock']:\n"
        "    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "    try:\n"
        "        s.connect(addr)\n"
        "        print('connected', repr(addr))\n"
        "    except OSError:\n"
        "        print('refused')\n"
    )
    sb = make_sandbox(num_workers=2)
    res_server, res_client = sb.run_many([server, client])
    assert res_server.passed and "listening" in res_server.stdout, res_server.stderr
    assert res_client.passed and res_client.stdout.split() == ["refused"] * 3, res_client.stdout
    host.assert_unchanged(sb)


@needs_bwrap
@needs_root
def test_concurrent_runs_get_distinct_uids_and_cleanup_spares_the_other(make_sandbox, host):
    """Two Sandbox objects share a 2-uid pool: the long run keeps its uid; the short runs' cleanups spare it."""
    long_sb = make_sandbox(sandbox_uid=64900, sandbox_uid_range=2, timeout_s=10)
    short_sb = make_sandbox(sandbox_uid=64900, sandbox_uid_range=2, num_workers=1)
    uid_prog = "import os, time\nprint(os.getuid())\n"
    out = {}

    def long_run():
        out["long"] = long_sb.run(uid_prog + "time.sleep(2.5)\nprint('survived')\n")

    t = threading.Thread(target=long_run)
    t.start()
    time.sleep(0.8)
    shorts = short_sb.run_many([uid_prog] * 4)
    t.join()
    assert out["long"].passed and out["long"].stdout.split()[-1] == "survived", out["long"]
    long_uid = int(out["long"].stdout.split()[0])
    assert all(r.passed for r in shorts)
    assert {int(r.stdout.split()[0]) for r in shorts} == {64900, 64901} - {long_uid}
    host.assert_unchanged(long_sb)


@needs_root
def test_uid_lease_is_exclusive_across_processes(tmp_path):
    lock_dir = tmp_path / "locks"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom pathlib import Path\nfrom kronaxis_lab.grading.sandbox_limits import UidPool\n"
         f"lease = UidPool(64990, 1, Path({str(lock_dir)!r})).acquire()\nprint(lease.uid, flush=True)\ntime.sleep(30)\n"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "64990"
        with pytest.raises(TimeoutError):
            UidPool(64990, 1, lock_dir).acquire(timeout_s=0.3)
    finally:
        holder.kill()
        holder.wait()
    lease = UidPool(64990, 1, lock_dir).acquire(timeout_s=5)  # freed when its holder died
    assert lease.uid == 64990
    lease.release()


def test_grader_end_to_end_with_a_fork_bomb(make_sandbox, isolation, host):
    if isolation == "none" and os.geteuid() != 0:
        pytest.skip("without a leased uid RLIMIT_NPROC counts the caller's own processes")
    sb = make_sandbox(isolation=isolation, timeout_s=3)
    grader = CodeExecutionGrader(sb)
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    scores = grader.grade([bomb, "def square(x):\n    return x * x\n"], [["assert square(3) == 9"]] * 2)
    assert scores.tolist() == [0.0, 1.0] and grader.last_stats_["timeout"] == 1
    host.assert_unchanged(sb)


def test_parallel_workers_bounded_and_ordered(make_sandbox, isolation, host):
    sb = make_sandbox(isolation=isolation, num_workers=2)
    progs = [f"print({i} * {i})" for i in range(6)] + ["assert False"]
    results = sb.run_many(progs)
    assert [r.stdout.strip() for r in results[:6]] == [str(i * i) for i in range(6)]
    assert [r.passed for r in results] == [True] * 6 + [False]
    host.assert_unchanged(sb)


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="isolation"):
        Sandbox(isolation="docker")
    with pytest.raises(ValueError):
        Sandbox(timeout_s=0)
    with pytest.raises(ValueError):
        UidPool(0, 10)
    with pytest.raises(ValueError, match="plain names"):
        Sandbox(isolation="none", show_progress=False).run("pass", files={"../x": ""})
