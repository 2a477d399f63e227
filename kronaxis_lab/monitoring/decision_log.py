"""The router's decision log: every decision, written off the request path into a rotated, bounded SQLite log.

    log = DecisionLog(DecisionLogSettings(path="logs/router"), redact=policy.redact, bundle_id=bundle.bundle_id)
    log.start()
    log.record({"id": ..., "model": "gpt-4o", "tier": 1, ...}, text=classifier_input, category="math")
    log.record_shadow({...})                       # a shadow-evaluation row (monitoring/shadow.py)
    log.close()
    data = read_decision_log("logs/router")        # DataFrames: decisions, shadow (every file, oldest first)

How it stays off the request path: `record` only puts the fields (and the raw text, in memory) on a bounded
queue and returns; a writer thread redacts the texts with the governance policy (`GovernancePolicy.redact`),
sketches them (`sketch.text_sketch`, of the redacted text), and inserts batches in one transaction each. A full
queue drops the record; a write error (disk full, file-size limit, I/O error) drops the batch; both are counted
(`stats`, and the Prometheus counter `on_drop` feeds) and no request ever sees them.

What is stored: the columns of `DECISION_COLUMNS` / `SHADOW_COLUMNS`. The text only with `store_text`, and only
redacted; the request's metadata category only when its redacted value is a short label (`CATEGORY`); never
headers, API keys, session keys, request bodies or answers. Reasons and data classes hold model and class names
only (the engine writes no matched value into them).

Bounds: the live file `decisions.sqlite` (journal_mode=WAL, WAL truncated after checkpoints) rotates to
`decisions-<ns>.sqlite` when db + WAL exceed `max_file_mb`; at most `max_files` files are kept (oldest deleted),
and `PRAGMA max_page_count` caps each file at twice the rotation size should a rotation fail.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from kronaxis_lab.monitoring.settings import DecisionLogSettings
from kronaxis_lab.monitoring.sketch import SKETCH_DIM, text_sketch

log = logging.getLogger(__name__)

LIVE_FILE = "decisions.sqlite"
ROTATED_GLOB = "decisions-*.sqlite"
# request metadata category/task: a label, not content. Kept only when the redacted value is a short label
# (letters, digits, space, _ . - /): anything else, a redaction marker included, is not stored
CATEGORY = re.compile(r"\w[\w .\-/]{0,63}")

# name → SQLite type; JSON columns hold lists/dicts as JSON text
DECISION_COLUMNS: dict[str, str] = {
    "id": "TEXT PRIMARY KEY", "ts": "REAL", "bundle_id": "TEXT", "endpoint": "TEXT", "model": "TEXT",
    "tier": "INTEGER", "policy": "TEXT", "param": "REAL", "scores": "TEXT", "reasons": "TEXT", "sticky": "INTEGER",
    "governance": "TEXT", "fallback": "INTEGER", "data_classes": "TEXT", "input_tokens": "INTEGER",
    "output_tokens": "INTEGER", "decision_latency_s": "REAL", "upstream_latency_s": "REAL",
    "upstream_status": "INTEGER", "cost_usd": "REAL", "premium_cost_usd": "REAL", "category": "TEXT",
    "text": "TEXT", "sketch": "BLOB", "shadow": "INTEGER",
}
SHADOW_COLUMNS: dict[str, str] = {
    "decision_id": "TEXT PRIMARY KEY", "ts": "REAL", "bundle_id": "TEXT", "status": "TEXT", "mode": "TEXT",
    "reference_model": "TEXT", "routed_model": "TEXT", "routed_tier": "INTEGER", "routed_score": "REAL",
    "other_model": "TEXT", "other_tier": "INTEGER", "other_score": "REAL", "pass_score": "REAL",
    "routed_cost_usd": "REAL", "other_cost_usd": "REAL", "routed_input_tokens": "INTEGER",
    "routed_output_tokens": "INTEGER", "other_input_tokens": "INTEGER", "other_output_tokens": "INTEGER",
    "other_latency_s": "REAL", "shadow_cost_usd": "REAL",
}
JSON_COLUMNS = ("scores", "reasons", "data_classes")
TABLES = {"decisions": DECISION_COLUMNS, "shadow": SHADOW_COLUMNS}


@dataclass
class _Item:
    table: str
    row: dict[str, Any]
    text: str | None = None  # raw; redacted by the writer
    category: str | None = None


def _create(conn: sqlite3.Connection) -> None:
    for table, cols in TABLES.items():
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'{c} {t}' for c, t in cols.items())})")
    conn.execute("CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts)")


class DecisionLog:
    """Bounded queue + writer thread into the rotated SQLite log (module docstring).

    Args:
        settings: `DecisionLogSettings` (its `path` must be set).
        redact: texts → redacted texts (`GovernancePolicy.redact`); required when text or sketches are stored.
        bundle_id: the served bundle's id, stored on every row.
        on_drop: called with (reason, n) for every dropped record: "queue_full" | "write_error".
        observers: called in the writer thread with each written batch of decision rows (sketch as an array):
            e.g. the server's drift gauges.
        clock: the wall clock rows are stamped with.
    """

    def __init__(self, settings: DecisionLogSettings, redact: Callable[[list[str]], list[str]] | None = None,
                 bundle_id: str = "", on_drop: Callable[[str, int], None] | None = None,
                 observers: Sequence[Callable[[list[dict[str, Any]]], None]] = (),
                 clock: Callable[[], float] = time.time) -> None:
        if not settings.path:
            raise ValueError("DecisionLog needs settings.path (the log directory)")
        if (settings.store_text or settings.store_sketch) and redact is None:
            raise ValueError("DecisionLog stores texts or sketches only after redaction: pass redact=")
        self.settings, self.redact, self.bundle_id, self.clock = settings, redact, bundle_id, clock
        self.dir = Path(settings.path).expanduser()
        self.on_drop, self.observers = on_drop, list(observers)
        self.max_bytes = int(settings.max_file_mb * 1024 * 1024)
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=settings.queue_size)
        self._cond = threading.Condition()
        self._enqueued = self._processed = 0
        self._stats = {"written": 0, "shadow_written": 0, "dropped_queue_full": 0, "dropped_write_error": 0,
                       "rotations": 0}
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._errors = 0

    # -- the request side: O(1), never raises ------------------------------------------------------
    def record(self, row: Mapping[str, Any], text: str | None = None, category: str | None = None) -> bool:
        """Queue one decision row (`DECISION_COLUMNS` keys; `text`/`category` raw, redacted by the writer).
        False when it was dropped (queue full)."""
        return self._put(_Item("decisions", dict(row), text, category))

    def record_shadow(self, row: Mapping[str, Any]) -> bool:
        """Queue one shadow-evaluation row (`SHADOW_COLUMNS` keys)."""
        return self._put(_Item("shadow", dict(row)))

    def _put(self, item: _Item) -> bool:
        try:
            with self._cond:
                self._queue.put_nowait(item)
                self._enqueued += 1
            return True
        except queue.Full:
            self._drop("queue_full", 1)
            return False

    def _drop(self, reason: str, n: int) -> None:
        with self._cond:
            self._stats[f"dropped_{reason}"] += n
        if self.on_drop is not None:
            try:
                self.on_drop(reason, n)
            except Exception:  # noqa: BLE001 - a metrics hook must not break logging
                pass

    @property
    def stats(self) -> dict[str, int]:
        with self._cond:
            return {**self._stats, "queued": self._enqueued - self._processed}

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "DecisionLog":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kronaxis-decision-log", daemon=True)
            self._thread.start()
        return self

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._enqueued
            while self._processed < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    return self._processed >= target
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer (a full queue: what does not fit is dropped, counted)."""
        if self._thread is None:
            return
        self.flush(timeout)
        try:
            self._queue.put(None, timeout=1.0)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._thread = None
        self._close_conn()

    # -- the writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        s = self.settings
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=s.flush_interval_s)
            except queue.Empty:
                continue
            batch: list[_Item] = []
            if first is None:
                stop = True
            else:
                batch.append(first)
            while len(batch) < s.batch_size and not stop:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                else:
                    batch.append(nxt)
            if batch:
                self._write(batch)
                with self._cond:
                    self._processed += len(batch)
                    self._cond.notify_all()

    def _prepare(self, batch: list[_Item]) -> list[_Item]:
        """Redact texts and categories, compute sketches (of the redacted text), encode JSON columns."""
        s = self.settings
        decisions = [it for it in batch if it.table == "decisions"]
        raw = [it.text or "" for it in decisions]
        cats = [it.category for it in decisions]
        redacted = self.redact(raw) if (s.store_text or s.store_sketch) and self.redact and raw else raw
        cat_in = [c for c in cats if c]
        cat_red = iter(self.redact(cat_in) if cat_in and self.redact else cat_in)
        sketches = text_sketch(redacted, SKETCH_DIM) if s.store_sketch and redacted else None
        for k, it in enumerate(decisions):
            row = it.row
            row.setdefault("bundle_id", self.bundle_id)
            row.setdefault("ts", self.clock())
            row["text"] = redacted[k] if s.store_text and it.text is not None else None
            row["sketch"] = sketches[k] if sketches is not None and it.text else None
            cat = next(cat_red) if cats[k] else None
            row["category"] = cat if cat and CATEGORY.fullmatch(cat) else None
            for c in JSON_COLUMNS:
                if c in row and not isinstance(row[c], str) and row[c] is not None:
                    row[c] = json.dumps(row[c], ensure_ascii=False)
        for it in batch:
            if it.table == "shadow":
                it.row.setdefault("bundle_id", self.bundle_id)
                it.row.setdefault("ts", self.clock())
        return batch

    def _write(self, batch: list[_Item]) -> None:
        try:
            batch = self._prepare(batch)
        except Exception as e:  # noqa: BLE001 - a bad record must not kill the writer
            log.error("decision log: could not prepare %d record(s): %s", len(batch), type(e).__name__)
            self._drop("write_error", len(batch))
            return
        try:
            conn = self._connection()
            with conn:
                for table, cols in TABLES.items():
                    rows = [it.row for it in batch if it.table == table]
                    if rows:
                        names = list(cols)
                        conn.executemany(f"INSERT OR REPLACE INTO {table} ({', '.join(names)}) VALUES "
                                         f"({', '.join('?' * len(names))})",
                                         [tuple(_sql(r.get(c)) for c in names) for r in rows])
        except (sqlite3.Error, OSError) as e:
            self._errors += 1
            if self._errors == 1 or self._errors % 1000 == 0:  # the first and then every 1000th: no log flood
                log.warning("decision log: write failed (%s: %s); %d record(s) dropped (counted)",
                            type(e).__name__, e, len(batch))
            self._drop("write_error", len(batch))
            self._close_conn()  # reopened (and re-checked) on the next batch
            return
        n_dec = sum(it.table == "decisions" for it in batch)
        with self._cond:
            self._stats["written"] += n_dec
            self._stats["shadow_written"] += len(batch) - n_dec
        rows = [it.row for it in batch if it.table == "decisions"]
        for obs in self.observers:
            try:
                obs(rows)
            except Exception as e:  # noqa: BLE001 - gauges are best effort
                log.warning("decision log observer failed: %s", type(e).__name__)
        try:
            self._maybe_rotate()
        except (sqlite3.Error, OSError) as e:
            log.warning("decision log: rotation failed (%s: %s)", type(e).__name__, e)
            self._close_conn()

    # -- files -------------------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.dir / LIVE_FILE, timeout=5.0, isolation_level="DEFERRED",
                                   check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(f"PRAGMA journal_size_limit={max(self.max_bytes // 4, 1 << 20)}")
                page = int(conn.execute("PRAGMA page_size").fetchone()[0])
                conn.execute(f"PRAGMA max_page_count={max(64, math.ceil(2 * self.max_bytes / page))}")
                _create(conn)
                conn.commit()
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _close_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def size_bytes(self) -> int:
        """db + WAL of the live file."""
        live = self.dir / LIVE_FILE
        return sum(p.stat().st_size for p in (live, live.with_name(LIVE_FILE + "-wal")) if p.exists())

    def _maybe_rotate(self) -> None:
        if self.size_bytes() <= self.max_bytes:
            return
        if self._conn is not None:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._close_conn()
        live = self.dir / LIVE_FILE
        os.replace(live, self.dir / f"decisions-{time.time_ns():020d}.sqlite")
        for suffix in ("-wal", "-shm"):
            live.with_name(LIVE_FILE + suffix).unlink(missing_ok=True)
        rotated = sorted(self.dir.glob(ROTATED_GLOB))
        for old in rotated[: max(0, len(rotated) - (self.settings.max_files - 1))]:
            old.unlink(missing_ok=True)
        with self._cond:
            self._stats["rotations"] += 1


def _sql(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.astype(np.float16).tobytes()
    if isinstance(v, (np.integer, np.bool_)):
        return int(v)
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(float(v)) else None
    return v


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------
@dataclass
class DecisionLogData:
    """Everything in a log directory: `decisions` (JSON columns decoded, `sketch` as float32 arrays or None) and
    `shadow` rows, oldest first; `files` read."""

    decisions: pd.DataFrame
    shadow: pd.DataFrame
    files: list[Path]


def log_files(directory: str | Path) -> list[Path]:
    """The rotated files (oldest first), then the live one."""
    d = Path(directory).expanduser()
    files = sorted(d.glob(ROTATED_GLOB))
    return files + ([d / LIVE_FILE] if (d / LIVE_FILE).is_file() else [])


def read_decision_log(directory: str | Path) -> DecisionLogData:
    """Read every file of a log directory (a live server may keep writing: WAL readers never block it)."""
    files = log_files(directory)
    if not files:
        raise FileNotFoundError(f"{directory}: no decision log ({LIVE_FILE} or {ROTATED_GLOB})")
    frames: dict[str, list[pd.DataFrame]] = {t: [] for t in TABLES}
    for f in files:
        conn = sqlite3.connect(f, timeout=5.0)
        try:
            for t in TABLES:
                frames[t].append(pd.read_sql_query(f"SELECT * FROM {t}", conn))
        finally:
            conn.close()
    dec = pd.concat(frames["decisions"], ignore_index=True) if frames["decisions"] else pd.DataFrame()
    sh = pd.concat(frames["shadow"], ignore_index=True) if frames["shadow"] else pd.DataFrame()
    dec = dec.reindex(columns=list(DECISION_COLUMNS)).sort_values("ts", kind="stable").reset_index(drop=True)
    sh = sh.reindex(columns=list(SHADOW_COLUMNS)).sort_values("ts", kind="stable").reset_index(drop=True)
    for c in JSON_COLUMNS:
        dec[c] = [json.loads(v) if isinstance(v, str) else None for v in dec[c]]
    dec["sketch"] = [np.frombuffer(v, dtype=np.float16).astype(np.float32) if isinstance(v, (bytes, memoryview))
                     else None for v in dec["sketch"]]
    return DecisionLogData(dec, sh, files)
