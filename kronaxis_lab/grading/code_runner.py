"""Candidate side of the code grader: the main script of the candidate's sandbox (stdlib only; read as text
by `code_exec`, never imported on the host).

``argv: REQ_FD RESP_FD NAME...``; beside it in /sandbox: ``candidate.py`` (the model's code, prompt
included) and ``code_wire.py``. Runs candidate.py as module "candidate" (``if __name__ == "__main__":``
blocks stay out), answers ``["ready", ok, error]`` (ok = it ran and defines every NAME as a callable), then
serves ``["call", name, args, kwargs]`` with ``["ok", value]`` or ``["raise", type name, message]`` until the
tests close the pipe. Once candidate code runs, all of this is in its reach: the tests' side believes no
more of it than the plain values it decodes.
"""

import os
import sys
import types

HERE = os.path.dirname(__file__)


def _load_wire():
    """code_wire.py beside this script (read directly: python -I keeps the script's dir off sys.path)."""
    wire = types.ModuleType("code_wire")
    with open(os.path.join(HERE, "code_wire.py"), encoding="utf-8") as f:
        exec(compile(f.read(), "code_wire.py", "exec"), wire.__dict__)
    return wire


wire = _load_wire()

MAX_REQUEST_BYTES = 1 << 30  # requests come from the trusted tests' side


def _describe(e: BaseException) -> list:
    try:
        return [type(e).__name__, str(e)[:500]]
    except BaseException:  # noqa: BLE001 - a candidate's exception may fail even to print itself
        return ["Exception", "<unprintable>"]


def main() -> int:
    req_fd, resp_fd, names = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]

    def send(msg: list) -> None:
        data = (wire.dumps(msg) + "\n").encode()
        while data:
            data = data[os.write(resp_fd, data):]

    path = os.path.join(HERE, "candidate.py")
    ns = {"__name__": "candidate", "__file__": path, "__builtins__": __builtins__}
    try:
        with open(path, encoding="utf-8") as f:
            code = compile(f.read(), "candidate.py", "exec")
        exec(code, ns)
        missing = [n for n in names if not callable(ns.get(n))]
        error = f"not defined as functions: {', '.join(missing)}" if missing else ""
    except BaseException as e:  # noqa: BLE001 - SystemExit / KeyboardInterrupt at import are failures too
        error = ": ".join(_describe(e))
    send(["ready", not error, error])
    if error:
        return 1
    with os.fdopen(req_fd, "rb") as requests:
        for line in requests:
            try:
                _, name, args, kwargs = wire.loads(line, MAX_REQUEST_BYTES)
                reply = wire.dumps(["ok", wire.encode(ns[name](*args, **kwargs))])
            except BaseException as e:  # noqa: BLE001 - whatever the call raised (SystemExit too) is its answer
                reply = wire.dumps(["raise", *_describe(e)])
            data = (reply + "\n").encode()
            while data:
                data = data[os.write(resp_fd, data):]
    return 0


if __name__ == "__main__":
    sys.exit(main())
