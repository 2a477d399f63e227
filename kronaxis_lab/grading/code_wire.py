"""Plain-data wire format and type-strict equality of the code grader. Stdlib only: the sandboxed runner
and harness (`code_runner.py`, `code_harness.py`) load this file as ``code_wire`` from /sandbox.

Values cross between the candidate's sandbox and the tests' sandbox only as JSON, one message per line.
`encode` accepts exactly these types (``type(x) is ...``, so no subclass with its own ``__eq__``, ``__hash__``
or ``__repr__`` gets through): None, bool, int, float, str, list and, tagged as one-key JSON objects, NaN /
inf ``{"f": "nan"}``, tuple ``{"t": [...]}``, dict ``{"d": [[k, v], ...]}``, set ``{"s": [...]}``, frozenset
``{"fs": [...]}``, bytes ``{"b": "<hex>"}``, complex ``{"c": [re, im]}``. Messages are JSON arrays whose first
item names them (``["call", name, args, kwargs]``, ``["ok", value]``, ...), so every JSON object is a tag.
`loads` rebuilds builtin values only, whatever the bytes (unknown tags, unhashable keys or oversize input
raise `WireError`): what the tests compare can never be an object of the candidate's making.

`strict_eq` is the ``==`` of the rewritten tests (`compile_strict`): like ``==`` on builtin values, except that
a bool equals only a bool (``True != 1``, ``[0] != [False]``, also as dict keys and set members).
"""

from __future__ import annotations

import ast
import json
import math
from typing import Any

EQ_NAME = "__kx_strict_eq__"
_TAGS = {"f", "t", "d", "s", "fs", "b", "c"}
_NUM = (int, float, complex)


class WireError(ValueError):
    """A value that is not plain data, or a message that does not decode to plain data."""


def encode(x: Any, _depth: int = 0) -> Any:
    if _depth > 200:
        raise WireError("value nested deeper than 200 levels")
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return x
    if t is float:
        return x if math.isfinite(x) else {"f": repr(x)}
    if t is list:
        return [encode(v, _depth + 1) for v in x]
    if t is tuple:
        return {"t": [encode(v, _depth + 1) for v in x]}
    if t is dict:
        return {"d": [[encode(k, _depth + 1), encode(v, _depth + 1)] for k, v in x.items()]}
    if t is set or t is frozenset:
        return {"s" if t is set else "fs": [encode(v, _depth + 1) for v in x]}
    if t is bytes:
        return {"b": x.hex()}
    if t is complex:
        return {"c": [encode(x.real), encode(x.imag)]}
    raise WireError(f"not plain data: {t.__module__}.{t.__qualname__}")


def _tagged(obj: dict) -> Any:
    if len(obj) != 1:
        raise WireError(f"tagged value must have one key; got {sorted(obj)[:5]}")
    (tag, v), = obj.items()
    if tag not in _TAGS:
        raise WireError(f"unknown tag {tag!r}")
    if tag == "f":
        if v not in ("nan", "inf", "-inf"):
            raise WireError(f"bad float {v!r}")
        return float(v)
    if tag == "b":
        if type(v) is not str:
            raise WireError("bytes must be hex text")
        return bytes.fromhex(v)
    if type(v) is not list:
        raise WireError(f"tag {tag!r} needs a list")
    if tag == "t":
        return tuple(v)
    if tag == "d":
        if not all(type(p) is list and len(p) == 2 for p in v):
            raise WireError("dict items must be [key, value] pairs")
        try:
            return {k: val for k, val in v}
        except TypeError as e:
            raise WireError(f"unhashable dict key: {e}") from e
    if tag == "c":
        if len(v) != 2 or not all(type(p) in (int, float) for p in v):
            raise WireError("complex needs [re, im]")
        return complex(v[0], v[1])
    try:
        return set(v) if tag == "s" else frozenset(v)
    except TypeError as e:
        raise WireError(f"unhashable set member: {e}") from e


def dumps(x: Any) -> str:
    """One line of JSON (never contains a newline)."""
    return json.dumps(x, allow_nan=False, separators=(",", ":"))


def loads(line: bytes | str, max_bytes: int) -> Any:
    """Decode one message; raises WireError for anything but plain data within `max_bytes`."""
    if len(line) > max_bytes:
        raise WireError(f"message of {len(line)} bytes exceeds the {max_bytes}-byte limit")
    try:
        return json.loads(line, object_hook=_tagged, parse_constant=_no_constant)
    except WireError:
        raise
    except (ValueError, RecursionError, TypeError) as e:
        raise WireError(f"undecodable message: {type(e).__name__}: {str(e)[:200]}") from e


def _no_constant(name: str) -> Any:
    raise WireError(f"bare {name} is not allowed (floats travel as {{'f': ...}})")


# ---------------------------------------------------------------------------------------------- equality
def _key(x: Any) -> tuple:
    return ("bool", x) if type(x) is bool else ("", x)


def strict_eq(a: Any, b: Any) -> bool:
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return ta is tb and a == b
    if ta in _NUM and tb in _NUM:
        return a == b
    if ta is not tb:
        plain = (str, bytes, list, tuple, dict, set, frozenset, type(None), *_NUM)
        return False if ta in plain and tb in plain else bool(a == b)
    if ta is list or ta is tuple:
        return len(a) == len(b) and all(strict_eq(x, y) for x, y in zip(a, b))
    if ta is dict:
        ka, kb = {_key(k): v for k, v in a.items()}, {_key(k): v for k, v in b.items()}
        return ka.keys() == kb.keys() and all(strict_eq(v, kb[k]) for k, v in ka.items())
    if ta is set or ta is frozenset:
        return {_key(x) for x in a} == {_key(x) for x in b}
    return bool(a == b)


class _StrictEquality(ast.NodeTransformer):
    """``a == b`` -> ``__kx_strict_eq__(a, b)``, ``a != b`` -> ``not __kx_strict_eq__(a, b)`` (single comparisons)."""

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if len(node.ops) != 1 or not isinstance(node.ops[0], (ast.Eq, ast.NotEq)):
            return node
        call: ast.expr = ast.Call(ast.Name(EQ_NAME, ast.Load()), [node.left, node.comparators[0]], [])
        if isinstance(node.ops[0], ast.NotEq):
            call = ast.UnaryOp(ast.Not(), call)
        return ast.copy_location(call, node)


def compile_strict(source: str, filename: str):
    """Compile test code with its ``==`` / ``!=`` made type-strict (bind `strict_eq` as `EQ_NAME`)."""
    tree = ast.fix_missing_locations(_StrictEquality().visit(ast.parse(source, filename)))
    return compile(tree, filename, "exec")
