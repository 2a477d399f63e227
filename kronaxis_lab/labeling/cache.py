"""Resumable labelling: every finished backend call is committed to SQLite before it counts as done.

One row per call, keyed by ``sha256(canonical JSON of {model, backend identity, request})`` where the
request is the full prompt/messages and every generation parameter (max_tokens, temperature, stop,
extra). So a run killed at any point (SIGKILL included) and restarted with the same cache file repeats
no finished call, and a changed prompt, parameter or backend is a miss rather than a stale hit.

The database is in WAL mode (readers never block the writer; a crash mid-write leaves the last committed
state) with ``synchronous=NORMAL``, which in WAL mode is durable against process crashes (an OS crash may
lose the last transactions, never corrupt the file). Writes come from one thread (the runner's event loop).

Errored calls are stored too (for the record) but by default a lookup ignores them, so a resumed run
retries what failed (``retry_errors``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from kronaxis_lab.backends.base import GenRequest, GenResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request_id TEXT,
    request TEXT NOT NULL,
    text TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    latency_s REAL,
    error TEXT,
    meta TEXT,
    created_at REAL NOT NULL
)
"""
_CHUNK = 500  # keys per SELECT ... IN (...) (SQLite's default variable limit is 32766; stay small)


def canonical(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace variance) for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def request_payload(req: GenRequest) -> dict[str, Any]:
    """What of a request determines the answer: every field but the opaque request_id."""
    d = dict(vars(req))
    d.pop("request_id", None)
    return d


def key_maker(model: str, backend_identity: Mapping[str, Any]) -> Callable[[GenRequest], str]:
    """`req → cache key` for one (model, backend): sha256 over the canonical JSON of the model and backend
    identity, a NUL, then the canonical JSON of the request (the first part is hashed once per model)."""
    base = hashlib.sha256(canonical({"model": model, "backend": backend_identity}).encode() + b"\0")

    def key(req: GenRequest) -> str:
        h = base.copy()
        h.update(canonical(request_payload(req)).encode())
        return h.hexdigest()

    return key


def call_key(model: str, backend_identity: Mapping[str, Any], req: GenRequest) -> str:
    return key_maker(model, backend_identity)(req)


class CallCache:
    """SQLite store of finished calls. `get_many(keys)` → {key: GenResult}; `put_many(rows)` commits.

    Args:
        path: database file (created with its parent directory).
        retry_errors: lookups skip rows that hold an error (they are called again).
        read_only_fallbacks: further database files consulted on a miss (e.g. a shared cache dir);
            hits found there are copied into this cache so the run dir is self-contained.
    """

    def __init__(self, path: str | Path, retry_errors: bool = True,
                 read_only_fallbacks: Sequence[str | Path] = ()):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retry_errors = retry_errors
        self._conn = self._open(self.path)
        self._lock = threading.Lock()
        self._fallbacks = [Path(p) for p in read_only_fallbacks if p and Path(p) != self.path]
        self.hits = self.misses = self.writes = 0

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        try:
            # explicit transactions; check_same_thread=False: GroupCommitter writes from a worker thread, and
            # every use of the connection is serialised by `self._lock`
            conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{path}: not a usable label cache ({e}); move it away or use another run dir") from e
        return conn

    # -- reading -------------------------------------------------------------------------------------
    def _select(self, conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, tuple]:
        out: dict[str, tuple] = {}
        where = "" if not self.retry_errors else " AND error IS NULL"
        for i in range(0, len(keys), _CHUNK):
            chunk = list(keys[i:i + _CHUNK])
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                f"SELECT key, model, request_id, request, text, input_tokens, output_tokens, latency_s, error, meta, "
                f"created_at FROM calls WHERE key IN ({marks}){where}", chunk
            ):
                out[row[0]] = row
        return out

    def get_many(self, keys: Sequence[str]) -> dict[str, GenResult]:
        with self._lock:
            rows = self._select(self._conn, keys)
        missing = [k for k in keys if k not in rows]
        for fb in self._fallbacks:
            if not missing or not fb.is_file():
                continue
            conn = sqlite3.connect(f"file:{fb}?mode=ro", uri=True, timeout=30.0)
            try:
                found = self._select(conn, missing)
            finally:
                conn.close()
            if found:
                self._insert(list(found.values()))
                rows.update(found)
                missing = [k for k in missing if k not in found]
        self.hits += len(rows)
        self.misses += len(set(keys) - set(rows))
        return {k: self._result(r) for k, r in rows.items()}

    @staticmethod
    def _result(row: tuple) -> GenResult:
        meta = json.loads(row[9]) if row[9] else {}
        meta["cached"] = True
        return GenResult(text=row[4] or "", input_tokens=int(row[5] or 0), output_tokens=int(row[6] or 0),
                         latency_s=float(row[7] or 0.0), error=row[8], meta=meta)

    # -- writing -------------------------------------------------------------------------------------
    def put_many(self, model: str, items: Iterable[tuple[str, GenRequest, GenResult]]) -> int:
        """Commit finished calls (one transaction); returns how many were written."""
        return self.put_groups([(model, items)])

    def put_groups(self, groups: Iterable[tuple[str, Iterable[tuple[str, GenRequest, GenResult]]]]) -> int:
        """Commit finished calls of several (model, items) groups in one transaction."""
        now = time.time()
        rows = [(key, model, req.request_id, canonical(request_payload(req)), res.text, int(res.input_tokens),
                 int(res.output_tokens), float(res.latency_s), res.error, canonical(res.meta or {}), now)
                for model, items in groups for key, req, res in items]
        self._insert(rows)
        self.writes += len(rows)
        return len(rows)

    def _insert(self, rows: list[tuple]) -> None:
        if not rows:
            return
        with self._lock, _transaction(self._conn):
            self._conn.executemany("INSERT OR REPLACE INTO calls VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)

    def export_to(self, path: str | Path) -> int:
        """Copy this cache's successful calls into another cache file (e.g. a shared cache dir); rows it
        already has are kept. Returns the number of rows added."""
        target = CallCache(path, retry_errors=self.retry_errors)
        try:
            before = target.count()
            target._conn.execute("ATTACH DATABASE ? AS src", (str(self.path),))
            try:
                with _transaction(target._conn):
                    target._conn.execute("INSERT OR IGNORE INTO main.calls SELECT * FROM src.calls WHERE error IS NULL")
            finally:
                target._conn.execute("DETACH DATABASE src")
            return target.count() - before
        finally:
            target.close()

    # -- housekeeping --------------------------------------------------------------------------------
    def count(self, model: str | None = None, errors: bool | None = None) -> int:
        sql, args = "SELECT COUNT(*) FROM calls WHERE 1=1", []
        if model is not None:
            sql += " AND model = ?"
            args.append(model)
        if errors is not None:
            sql += " AND error IS NOT NULL" if errors else " AND error IS NULL"
        with self._lock:
            return int(self._conn.execute(sql, args).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "CallCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _transaction:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error) on an autocommit-mode connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


class GroupCommitter:
    """Group commit for many coroutines: `await commit(model, items)` returns once those rows are committed.

    Rows that arrive while a transaction is being written (in a worker thread, so the event loop keeps
    receiving results) go into the next one: at high request rates one transaction carries many calls,
    at low rates each call is committed on its own. Nothing counts as done before its commit returns.
    """

    def __init__(self, cache: CallCache):
        self.cache = cache
        self._groups: list[tuple[str, list]] = []
        self._done: asyncio.Future | None = None
        self._worker: asyncio.Task | None = None
        self.transactions = 0

    async def commit(self, model: str, items: Iterable[tuple[str, GenRequest, GenResult]]) -> None:
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        self._groups.append((model, list(items)))
        done = self._done
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        await done  # re-raises a failed write

    async def _drain(self) -> None:
        while self._groups:
            groups, done = self._groups, self._done
            self._groups, self._done = [], None
            try:
                await asyncio.to_thread(self.cache.put_groups, groups)
            except BaseException as e:  # handed to every waiter of this batch
                assert done is not None
                done.set_exception(e)
                if not isinstance(e, Exception):
                    raise
            else:
                assert done is not None
                done.set_result(None)
            self.transactions += 1
