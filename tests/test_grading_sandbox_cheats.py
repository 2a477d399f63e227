"""Wrong or cheating programs must score 0, on HumanEval-style and on MBPP-style tests, and leave the host clean.

Every program below defines `inc` wrongly (it returns 0 or junk) and then tries to get the grader to say
"correct" anyway: by forging the old pass marker (its nonce was in argv and /proc/self/cmdline) from an
atexit hook, sys.excepthook or a forked child, by exiting 0 early, by returning objects whose __eq__ says
yes, by reading the tests, by patching builtins or tracing the tests, by forging the verdict or the wire
format, by filling /run/lock, leaving SysV shm segments, or killing everything it can see. Each one is
graded for real; the host is checked afterwards (`HostState`).
"""

from __future__ import annotations

import shutil

import pytest
from test_grading_sandbox import HostState

from kronaxis_lab.grading.code_exec import CodeExecutionGrader
from kronaxis_lab.grading.sandbox import Sandbox

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap missing: `make setup-system`")

HE = {
    "task_id": "Toy/inc",
    "prompt": 'def inc(x):\n    """x + 1.\n    >>> inc(1)\n    2\n    """\n',
    "entry_point": "inc",
    "test": ("def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(41) == 42\n"
             "    assert abs(candidate(0.5) - 1.5) < 1e-9\n"),
}
MBPP = ["assert inc(1) == 2", "assert inc(41) == 42", "assert abs(inc(0.5) - 1.5) < 1e-9"]
CORRECT = "def inc(x):\n    return x + 1\n"

# every candidate prints CHEAT-RAN first, so the tests can tell the attack code really ran
_FORGE = (
    "import os, sys\n"
    "def forge(tokens):\n"  # a forged verdict on every fd it holds, then the old pass marker, printed last
    "    for fd in range(3, 256):\n"
    "        try:\n"
    "            os.write(fd, b'[\"verdict\",true,\"\"]\\n[\"ok\",2]\\n')\n"
    "        except OSError:\n"
    "            pass\n"
    "    tokens = [t for t in tokens if t]\n"
    "    print('\\n'.join(tokens) + '\\n' + tokens[-1], flush=True)\n"
    "def cmdline():\n"
    "    return open('/proc/self/cmdline').read().split('\\0')\n"
)
CHEATS = {
    "argv_nonce": _FORGE + "print('CHEAT-RAN')\ndef inc(x):\n    forge(sys.argv)\n    os._exit(0)\n",
    "cmdline_nonce": _FORGE + "print('CHEAT-RAN')\ndef inc(x):\n    forge(cmdline())\n    os._exit(0)\n",
    "atexit_forge": _FORGE + "import atexit\nprint('CHEAT-RAN')\n"
                             "atexit.register(lambda: (forge(cmdline()), os._exit(0)))\ndef inc(x):\n    return 0\n",
    "excepthook_forge": _FORGE + "print('CHEAT-RAN')\nsys.excepthook = lambda *a: (forge(cmdline()), os._exit(0))\n"
                                 "def inc(x):\n    return 0\n",
    "forked_child_forge": _FORGE + (
        "import time\nprint('CHEAT-RAN', flush=True)\n"
        "if os.fork() == 0:\n"  # the child writes the marker; the parent exits 0 before any test runs
        "    time.sleep(0.2)\n    forge(cmdline())\n    time.sleep(5)\n    os._exit(0)\n"
        "time.sleep(0.5)\nos._exit(0)\n"
        "def inc(x):\n    return 0\n"),
    "early_exit_zero": "import os\nprint('CHEAT-RAN', flush=True)\nos._exit(0)\ndef inc(x):\n    return 0\n",
    "eq_always_true": ("print('CHEAT-RAN')\nclass Yes:\n    __eq__ = lambda s, o: True\n    __sub__ = lambda s, o: 0.0\n"
                       "    __hash__ = object.__hash__\n"
                       "def inc(x):\n    return Yes()\n"),
    "int_subclass_eq": ("print('CHEAT-RAN')\nclass I(int):\n    def __eq__(self, o):\n        return True\n"
                        "    __hash__ = int.__hash__\n    def __sub__(self, o):\n        return 0.0\n"
                        "def inc(x):\n    return I(0)\n"),
    "read_tests": (
        "import ast, os, re\nprint('CHEAT-RAN')\n"
        "found = {}\nseen = 0\n"
        "pat = re.compile(r'(?:candidate|inc)\\(([\\d.]+)\\)\\s*(?:==|-)\\s*([\\d.]+)')\n"
        "paths = [__file__, '/proc/self/cmdline', '/proc/self/environ', '/proc/1/cmdline', '/proc/1/environ']\n"
        "for d in ['/sandbox', '/tmp', os.getcwd(), os.path.dirname(os.path.abspath(__file__)), '/dev/shm']:\n"
        "    for dp, _, fs in os.walk(d):\n"
        "        paths += [os.path.join(dp, f) for f in fs]\n"
        "paths += ['/proc/%s/cmdline' % p for p in os.listdir('/proc') if p.isdigit()]\n"
        "for p in paths:\n"
        "    try:\n"
        "        text = open(p, errors='replace').read(1 << 20)\n"
        "    except OSError:\n"
        "        continue\n"
        "    seen += 1\n"
        "    for a, b in pat.findall(text):\n"
        "        found[ast.literal_eval(a)] = ast.literal_eval(b)\n"
        "print('searched', seen, 'found', found)\n"
        "def inc(x):\n    return found.get(x, 0)\n"),
    "patch_builtins_and_trace": (
        "import builtins, gc, linecache, math, sys, types\nprint('CHEAT-RAN')\n"
        "builtins.abs = lambda v: 0.0\nmath.isclose = lambda *a, **k: True\n"
        "def is_assert(frame, n):\n"
        "    return linecache.getline(frame.f_code.co_filename, n).lstrip().startswith('assert')\n"
        "def skip(frame, event, arg):\n"  # jump from the first of a run of asserts to the last (abs = 0 there)
        "    if event == 'line' and is_assert(frame, frame.f_lineno):\n"
        "        last = frame.f_lineno\n"
        "        while is_assert(frame, last + 1):\n"
        "            last += 1\n"
        "        try:\n            frame.f_lineno = last\n        except ValueError:\n            pass\n"
        "    return skip\n"
        "sys.settrace(skip)\nsys._getframe().f_trace = skip\n"
        "for o in gc.get_objects():\n"  # neuter any test function already loaded
        "    if isinstance(o, types.FunctionType) and o.__name__ == 'check':\n"
        "        o.__code__ = (lambda candidate: None).__code__\n"
        "def inc(x):\n    return 0\n"),
    "system_exit_in_function": "print('CHEAT-RAN')\ndef inc(x):\n    raise SystemExit(0)\n",
    "lock_dir_disk_fill": (
        "import os\nprint('CHEAT-RAN')\n"
        "for d in ['/run/lock', '/var/lock', '/dev/shm', '/tmp']:\n"
        "    for i in range(3):\n"
        "        try:\n"
        "            with open(f'{d}/kx_fill_{i}', 'wb') as f:\n"
        "                f.write(b'z' * (8 << 20))\n"
        "        except OSError:\n"
        "            break\n"
        "def inc(x):\n    return 0\n"),
    "sysv_shm": (
        "import ctypes\nprint('CHEAT-RAN')\nlibc = ctypes.CDLL(None)\n"
        "ids = [libc.shmget(0, 64 << 20, 0o1000 | 0o666) for _ in range(2)]\n"
        "print('shm', ids)\ndef inc(x):\n    return 0\n"),
    "forge_wire": (
        "import sys\nprint('CHEAT-RAN')\n"
        "wire = sys._getframe(1).f_globals.get('wire')\n"  # the runner's own wire module, where there is one
        "deep = '[' * 100000 + ']' * 100000\n"
        "replies = iter(['[\"ok\",{\"__class__\":\"int\",\"v\":2}]', '[\"ok\",' + deep + ']',\n"
        "                '[\"raise\",\"SystemExit\",\"0\"]', '[\"ok\",{\"t\":[2],\"d\":[]}]'] * 10)\n"
        "if wire is not None:\n"
        "    wire.dumps = lambda msg: next(replies) if msg[0] in ('ok', 'raise') else '[\"ready\",true,\"\"]'\n"
        "def inc(x):\n    return 0\n"),
    "kill_everything": (
        "import os, signal\nprint('CHEAT-RAN', flush=True)\n"
        "for p in os.listdir('/proc'):\n"
        "    if p.isdigit() and int(p) != os.getpid():\n"
        "        try:\n            os.kill(int(p), signal.SIGKILL)\n        except OSError:\n            pass\n"
        "def inc(x):\n    return 0\n"),
}
GOLDS = {"humaneval": HE, "mbpp": MBPP}


@pytest.fixture(scope="module")
def grader(tmp_path_factory):
    root = tmp_path_factory.mktemp("cheats")
    return CodeExecutionGrader(Sandbox(timeout_s=6, memory_mb=512, max_processes=16, tmpfs_mb=32, tmp_root=str(root),
                                       num_workers=2, show_progress=False))


@pytest.mark.parametrize("benchmark", sorted(GOLDS))
@pytest.mark.parametrize("cheat", sorted(CHEATS))
def test_cheat_scores_zero_and_host_stays_clean(grader, cheat, benchmark):
    host = HostState.now()
    # graded next to a correct program: the cheat must not spoil (or borrow) its neighbour's verdict
    scores = grader.grade([CHEATS[cheat], CORRECT], [GOLDS[benchmark]] * 2)
    res = grader.last_results_[0]
    assert scores.tolist() == [0.0, 1.0], (res.status, res.stdout[-500:], res.stderr[-1500:])
    assert "CHEAT-RAN" in res.stdout, res  # the attack code really ran in the candidate's sandbox
    if cheat == "read_tests":
        assert "found {}" in res.stdout and "searched 0" not in res.stdout
    host.assert_unchanged(grader.sandbox)


def test_correct_program_still_passes_both_benchmarks(grader):
    assert grader.grade([CORRECT, CORRECT], [HE, MBPP]).tolist() == [1.0, 1.0]
