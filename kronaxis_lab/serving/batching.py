"""Micro-batching of classifier inference (and the policy after it) across concurrent requests.

Requests put their texts on an asyncio queue; one worker takes the first item, gathers more until it holds
`max_batch` texts or `max_wait_ms` has passed since that first item, and runs in a thread (the event loop keeps
accepting requests meanwhile):

    P = predict_fn(all texts)                       # one ONNX call for the whole micro-batch
    for each distinct key among the items:          # e.g. the policy operating point of the request
        extra[rows] = post_fn(P[rows], texts[rows], key)

and hands each caller its rows `(P_rows, extra_rows)`. One ONNX call on 64 texts costs far less than 64 calls
on one text, and the policy (cost model, lock) runs once per batch instead of once per request, so under load
the router is bounded by inference FLOPs rather than per-call overhead; idle, a request waits ≤ `max_wait_ms`.

A text that makes predict_fn raise fails only its own request: a failed call over several requests is split in
halves and retried (bisection), so one bad request among k costs about 2·log2(k) extra calls and every other
request gets the rows it would get alone.

With `enabled=False` every request runs predict_fn + post_fn on its own texts (in the default thread pool).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Hashable, Sequence

import numpy as np

log = logging.getLogger(__name__)

PredictFn = Callable[[list[str]], np.ndarray]
PostFn = Callable[[np.ndarray, list[str], Any], np.ndarray]
_Item = tuple[list[str], Hashable, asyncio.Future]


class InferenceBatcher:
    """`await batcher.predict(texts, key) -> (P (n, m), post_fn result (n,) or None)` with cross-request batching.

    Args:
        predict_fn: batch function, list of n texts → (n, m) array (e.g. `bundle.predict_proba`).
        post_fn: optional `(P, texts, key) -> (n,) array` run per key group on the batch (e.g. the policy);
            an exception there fails only that group's requests.
        max_batch: most texts per `predict_fn` call; a request with at least this many texts runs alone, in its
            own thread, without waiting for the batcher.
        max_wait_ms: longest wait for more texts after the first one arrived.
        enabled: False = no batching across requests.
        on_batch: callback(n_texts) per `predict_fn` call (metrics).
        workers: batches in flight at once (each in its own thread): with single-threaded ONNX sessions,
            one worker per core keeps every core busy.
    """

    def __init__(
        self,
        predict_fn: PredictFn,
        post_fn: PostFn | None = None,
        max_batch: int = 64,
        max_wait_ms: float = 2.0,
        enabled: bool = True,
        on_batch: Callable[[int], None] | None = None,
        workers: int = 1,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0 or workers < 1:
            raise ValueError(f"batching needs max_batch >= 1, max_wait_ms >= 0 and workers >= 1, got {max_batch}, "
                             f"{max_wait_ms}, {workers}")
        self.workers = int(workers)
        self.predict_fn, self.post_fn = predict_fn, post_fn
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.enabled = bool(enabled)
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item] | None = None
        self._tasks: list[asyncio.Task] = []
        self._gather_lock: asyncio.Lock | None = None  # one worker gathers at a time: batches fill in turn
        self._carry: _Item | None = None  # item that did not fit the last batch: it leads the next one
        self.calls = 0  # predict_fn calls so far (tests, metrics)

    async def start(self) -> None:
        if self.enabled and not self._tasks:
            self._queue, self._gather_lock = asyncio.Queue(), asyncio.Lock()
            self._tasks = [asyncio.create_task(self._run(), name=f"kronaxis-inference-batcher-{i}")
                           for i in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []
        if self._queue is not None:  # nobody waits forever on a stopped batcher
            left = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
            left += [self._carry] if self._carry is not None else []
            self._carry = None
            for _, _, fut in left:
                if not fut.done():
                    fut.set_exception(RuntimeError("inference batcher stopped"))
            self._queue = None

    async def predict(self, texts: Sequence[str], key: Hashable = None) -> tuple[np.ndarray, np.ndarray | None]:
        texts = list(texts)
        if not texts:
            raise ValueError("InferenceBatcher.predict: empty batch")
        if not self.enabled or len(texts) >= self.max_batch:
            # a request that fills a batch would run alone anyway: in its own thread, beside the batcher, so big
            # requests overlap (tokenizers and numpy release the GIL) instead of queueing behind one another
            return await asyncio.to_thread(self._solo, texts, key)
        if not self._tasks or self._queue is None:
            await self.start()
        assert self._queue is not None
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((texts, key, fut))
        return await fut

    # -- worker ------------------------------------------------------------------------------------
    def _predict(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        if self.on_batch is not None:
            self.on_batch(len(texts))
        P = np.asarray(self.predict_fn(texts))
        if P.ndim != 2 or P.shape[0] != len(texts):
            raise RuntimeError(f"classifier returned shape {P.shape} for {len(texts)} texts, expected (n, m)")
        return P

    def _solo(self, texts: list[str], key: Hashable) -> tuple[np.ndarray, np.ndarray | None]:
        P = self._predict(texts)
        return P, (None if self.post_fn is None else np.asarray(self.post_fn(P, texts, key)))

    def _isolated(self, items: list[_Item]) -> list[np.ndarray | BaseException]:
        """P̂ per item from one predict call; if it raises, each half again, down to the failing items alone."""
        texts = [t for ts, _, _ in items for t in ts]
        try:
            P = self._predict(texts)
        except Exception as e:  # noqa: BLE001 - a bad text fails its own request only, found by bisection
            if len(items) == 1:
                log.warning("classifier failed on a request of %d text(s): %s", len(texts), type(e).__name__)
                return [e]
            mid = len(items) // 2
            return self._isolated(items[:mid]) + self._isolated(items[mid:])
        out, start = [], 0
        for ts, _, _ in items:
            out.append(P[start:start + len(ts)])
            start += len(ts)
        return out

    def _batch(self, items: list[_Item]) -> list[tuple[np.ndarray, np.ndarray | None] | BaseException]:
        """Runs in a worker thread: one predict over every item (isolating failures), then post_fn once per key
        group over the items that have P̂."""
        Ps = self._isolated(items)
        out: list[Any] = [P if isinstance(P, BaseException) else (P, None) for P in Ps]
        ok = [k for k, P in enumerate(Ps) if not isinstance(P, BaseException)]
        if self.post_fn is None or not ok:
            return out
        P = np.concatenate([Ps[k] for k in ok])
        texts: list[str] = []
        bounds, start = {}, 0
        for k in ok:
            texts += items[k][0]
            bounds[k] = (start, start + len(items[k][0]))
            start += len(items[k][0])
        groups: dict[Hashable, list[int]] = {}
        for k in ok:
            groups.setdefault(items[k][1], []).append(k)
        for key, ks in groups.items():
            rows = np.concatenate([np.arange(*bounds[k]) for k in ks])
            try:
                extra = np.asarray(self.post_fn(P[rows], [texts[r] for r in rows], key))
            except Exception as e:  # noqa: BLE001 - this key's requests fail, the rest of the batch does not
                for k in ks:
                    out[k] = e
                continue
            pos = 0
            for k in ks:
                n = bounds[k][1] - bounds[k][0]
                out[k] = (P[bounds[k][0]:bounds[k][1]], extra[pos:pos + n])
                pos += n
        return out

    async def _gather(self) -> list[_Item]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        first, self._carry = self._carry, None
        items = [first if first is not None else await self._queue.get()]
        n = len(items[0][0])
        deadline = loop.time() + self.max_wait_s
        while n < self.max_batch:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            else:
                item = self._queue.get_nowait()
            if n + len(item[0]) > self.max_batch:
                self._carry = item
                break
            items.append(item)
            n += len(item[0])
        return items

    async def _run(self) -> None:
        assert self._gather_lock is not None
        while True:
            async with self._gather_lock:
                items = await self._gather()
            try:
                results = await asyncio.to_thread(self._batch, items)
            except asyncio.CancelledError:
                for _, _, fut in items:
                    if not fut.done():
                        fut.set_exception(RuntimeError("inference batcher stopped"))
                raise
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error, none hangs
                # the type only: an exception's message may quote the text it failed on
                log.error("classifier batch of %d texts failed: %s", sum(len(t) for t, _, _ in items),
                          type(e).__name__)
                results = [e] * len(items)
            for (_, _, fut), res in zip(items, results):
                if fut.done():  # the caller went away (client disconnected)
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
