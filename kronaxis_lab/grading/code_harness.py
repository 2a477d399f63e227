"""Tests side of the code grader: the main script of a sandbox of its own that never holds candidate code
(stdlib only; read as text by `code_exec`, never imported on the host).

``argv: REQ_FD RESP_FD VERDICT_FD``; beside it in /sandbox: ``tests.json`` and ``code_wire.py``.
tests.json = {"setup": run first (HumanEval: the prompt with its helpers; MBPP: imports + setup code),
"tests": the test code, compiled with ``==`` / ``!=`` made type-strict, "functions": names bound to remote
calls into the candidate's sandbox, "call": "check" or null (HumanEval: ``check(<entry point>)``),
"entry_point", "max_message_bytes"}.

The candidate can only answer calls, and only with plain values (`code_wire.loads`); an exception it
raised comes back as a builtin ``Exception`` subclass of that name (never SystemExit & co.) or as
`CandidateError`. The verdict ``["verdict", passed, error]`` goes to VERDICT_FD, which the tests' own
prints cannot reach, once: passed only after the whole test code returned.
"""

import builtins
import json
import linecache
import os
import sys
import traceback
import types

HERE = os.path.dirname(__file__)


def _load_wire():
    """code_wire.py beside this script (read directly: python -I keeps the script's dir off sys.path)."""
    wire = types.ModuleType("code_wire")
    with open(os.path.join(HERE, "code_wire.py"), encoding="utf-8") as f:
        exec(compile(f.read(), "code_wire.py", "exec"), wire.__dict__)
    return wire


wire = _load_wire()


class CandidateError(Exception):
    """The candidate raised, died, or answered with something that is not plain data."""


class Channel:
    def __init__(self, req_fd: int, resp_fd: int, max_bytes: int) -> None:
        self.req_fd, self.max_bytes = req_fd, max_bytes
        self.replies = os.fdopen(resp_fd, "rb")

    def send(self, msg: list) -> None:
        data = (wire.dumps(msg) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.req_fd, data):]
        except OSError as e:
            raise CandidateError(f"the candidate's process is gone ({e})") from None

    def recv(self) -> list:
        line = self.replies.readline(self.max_bytes + 1)
        if not line:
            raise CandidateError("the candidate's process ended")
        try:
            msg = wire.loads(line, self.max_bytes)
        except wire.WireError as e:
            raise CandidateError(f"the candidate answered something that is not plain data: {e}") from None
        if type(msg) is not list or not msg or type(msg[0]) is not str:
            raise CandidateError("malformed reply")
        return msg

    def call(self, name: str, args: tuple, kwargs: dict):
        try:
            payload = ["call", name, wire.encode(list(args)), wire.encode(dict(kwargs))]
        except wire.WireError as e:
            raise CandidateError(f"the tests pass an argument that is not plain data: {e}") from None
        self.send(payload)
        msg = self.recv()
        if msg[0] == "ok" and len(msg) == 2:
            return msg[1]
        if msg[0] == "raise" and len(msg) == 3 and type(msg[1]) is str and type(msg[2]) is str:
            exc = getattr(builtins, msg[1], None)
            if isinstance(exc, type) and issubclass(exc, Exception):
                try:
                    error = exc(msg[2])
                except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError wants five arguments
                    error = CandidateError(f"{msg[1]}: {msg[2]}")
                raise error
            raise CandidateError(f"{msg[1]}: {msg[2]}")
        raise CandidateError(f"malformed reply {msg[0][:20]!r}")


class Remote:
    """Stands in for a candidate function: calls it in the candidate's sandbox, returns plain values."""

    def __init__(self, channel: Channel, name: str) -> None:
        self._channel, self.__name__ = channel, name

    def __call__(self, *args, **kwargs):
        return self._channel.call(self.__name__, args, kwargs)


def run_tests(spec: dict, channel: Channel) -> None:
    ready = channel.recv()
    if ready[0] != "ready" or len(ready) != 3:
        raise CandidateError("no ready message from the candidate")
    if ready[1] is not True:
        raise CandidateError(f"the candidate's code did not load: {str(ready[2])[:500]}")
    for filename in ("setup.py", "tests.py"):  # so that a failure's traceback shows the failing line
        src = spec["setup" if filename == "setup.py" else "tests"]
        linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    g = {"__name__": "__kx_tests__", wire.EQ_NAME: wire.strict_eq}
    exec(compile(spec["setup"], "setup.py", "exec"), g)
    for name in spec["functions"]:
        g[name] = Remote(channel, name)
    exec(wire.compile_strict(spec["tests"], "tests.py"), g)
    if spec["call"]:
        g[spec["call"]](g[spec["entry_point"]])


def main() -> int:
    req_fd, resp_fd, verdict_fd = (int(a) for a in sys.argv[1:4])
    with open(os.path.join(HERE, "tests.json"), encoding="utf-8") as f:
        spec = json.load(f)
    passed, error = False, ""
    try:
        run_tests(spec, Channel(req_fd, resp_fd, int(spec["max_message_bytes"])))
        passed = True
    except BaseException as e:  # noqa: BLE001 - any way out of the tests but returning is a failure
        lines = traceback.format_exception(type(e), e, e.__traceback__)
        error = "".join(lines[-4:])[-2000:]
    sys.stdout.flush()
    os.write(verdict_fd, (wire.dumps(["verdict", passed, error]) + "\n").encode())
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
