"""Session stickiness without shared state: a conversation does not bounce between tiers.

Rule: a conversation stays on the tier chosen for it unless the policy now proposes a *higher* tier
(escalation is allowed, de-escalation within a session is not):

    routed_t = max(floor_t, proposed_t)

The server runs as several processes behind a load balancer with no shared memory, so `floor_t` must be
derivable from the request itself. Two sources, both stateless, combined by max:

1. **Derived floor** (always): the policy's tier for the conversation's earlier user turns, recomputed
   from the request (OpenAI requests carry the whole conversation). Cheap form: the tier of the *first*
   user message (`floor(..., user_turns=[[first]])`). Strong form: the max over *all* earlier user turns
   (`user_turns=[[u1, u2, ...]]`): by induction routed_t = max(policy(u_1..u_t)), which never decreases —
   no de-escalation at all, at the price of classifying earlier turns (batched; memoised, see below).
2. **Routing token** (optional, for escalations under the cheap form): the server returns
   `issue_tokens(...)` in a response header (e.g. `x-kronaxis-route`); a client that echoes it proves the
   tier it was last routed to. Format `v1.<tier>.<expires_unix>.<mac>` with
   mac = HMAC-SHA256(secret, "v1|<session id>|<tier>|<expires>") truncated to 128 bits: bound to this
   conversation, unforgeable (a client cannot buy itself a higher tier), expiring after `ttl_s`. A client
   that drops the token only loses escalations; it never gets below the derived floor.

Session id = HMAC-SHA256(salt, session key ‖ SHA-256(first user message)): the raw session key (a header
value or the OpenAI `user` field) is never stored or logged, and two conversations of the same user are
separate sessions. Requests without a session key are not sticky (`proposed` passes through).

**The in-process cache is an optimisation only.** It memoises `session id × conversation prefix → tier`,
values that every process computes identically from the request (given the same bundle), so a hit saves
a classifier call but never changes an answer: two processes with the same salt agree whether or not
their caches are warm. The cache is an LRU bounded by `max_entries` whose entries expire `ttl_s` after
their last use. The salt must be identical in every process and kept secret (set it from an environment
variable); rotate it (e.g. mix in the bundle hash) when the classifier changes, so memoised tiers and
tokens of the old bundle stop applying.

Order in the router: policy → stickiness → governance (governance last, so it can always veto a model).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np

TOKEN_VERSION = "v1"
MISSING = -1  # tier value for "unknown / not applicable" in the integer arrays below


class StickinessConfigError(ValueError):
    """Invalid StickinessGuard settings."""


class _TTLCache:
    """LRU cache of at most `max_entries` items; an item expires `ttl_s` after its last get/set."""

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float]) -> None:
        self.ttl_s, self.max_entries, self._clock = ttl_s, max_entries, clock
        self._data: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key -> (expires_at, value)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._purge(self._clock())
            return len(self._data)

    def _purge(self, now: float) -> None:
        # entries are ordered by last use, i.e. by expiry: expired ones sit at the front
        while self._data:
            k, (exp, _) = next(iter(self._data.items()))
            if exp > now:
                break
            del self._data[k]

    def get(self, key: str) -> int | None:
        with self._lock:
            now = self._clock()
            item = self._data.get(key)
            if item is None or item[0] <= now:
                self._data.pop(key, None)
                return None
            self._data[key] = (now + self.ttl_s, item[1])
            self._data.move_to_end(key)
            return item[1]

    def set(self, key: str, value: int) -> None:
        with self._lock:
            now = self._clock()
            self._data[key] = (now + self.ttl_s, value)
            self._data.move_to_end(key)
            self._purge(now)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)


class StickinessGuard:
    """Keep each conversation at or above the tier chosen for it, statelessly across processes.

    Args:
        ttl_s: lifetime of cache entries (after last use) and of routing tokens (after issue), seconds.
        max_entries: bound on the in-process cache (LRU eviction beyond it).
        salt: secret shared by all server processes; keys the session hash and (by default) token MACs.
        token_secret: separate HMAC key for routing tokens (default: derived from `salt`).
        clock: wall-clock seconds (tokens carry absolute expiry, so all processes must share the clock).
    """

    def __init__(
        self,
        ttl_s: float,
        max_entries: int,
        salt: str,
        token_secret: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not ttl_s > 0:
            raise StickinessConfigError(f"stickiness.ttl_s must be > 0, got {ttl_s!r}")
        if int(max_entries) < 1:
            raise StickinessConfigError(f"stickiness.max_entries must be >= 1, got {max_entries!r}")
        if not salt:
            raise StickinessConfigError("stickiness.salt is empty: set it (identically) for every server process")
        self.ttl_s = float(ttl_s)
        self.max_entries = int(max_entries)
        self._salt = str(salt).encode()
        secret = token_secret if token_secret else "kronaxis-sticky-token|" + str(salt)
        self._token_key = hashlib.sha256(str(secret).encode()).digest()
        self._clock = clock
        self._cache = _TTLCache(self.ttl_s, self.max_entries, clock)

    # -- identities --------------------------------------------------------------------------------
    def session_ids(self, session_keys: Sequence[str | None], first_messages: Sequence[str]) -> list[str | None]:
        """HMAC-SHA256(salt, key ‖ SHA-256(first user message)) as hex; None where there is no key."""
        _check_lengths(session_keys=session_keys, first_messages=first_messages)
        out: list[str | None] = []
        for i, (k, first) in enumerate(zip(session_keys, first_messages)):
            if k is None or k == "":
                out.append(None)
                continue
            if not isinstance(first, str):
                raise ValueError(f"stickiness: first_messages[{i}] is {type(first).__name__}, expected str")
            msg = str(k).encode() + b"\x00" + hashlib.sha256(first.encode()).digest()
            out.append(hmac.new(self._salt, msg, hashlib.sha256).hexdigest())
        return out

    @staticmethod
    def _prefix_key(sid: str, turns: Sequence[str]) -> str:
        h = hashlib.sha256(sid.encode())
        for t in turns:
            h.update(b"\x00" + hashlib.sha256(t.encode()).digest())
        return h.hexdigest()

    # -- derived floor -----------------------------------------------------------------------------
    def floor(
        self,
        session_keys: Sequence[str | None],
        user_turns: Sequence[Sequence[str]],
        tier_fn: Callable[[list[tuple[str, ...]]], np.ndarray | Sequence[int]],
    ) -> np.ndarray:
        """Derived sticky floor per request: max over prefixes p_k = (u_1..u_k) of `tier_fn(p_k)`.

        `user_turns[i]` = the earlier user turns of conversation i (at least the first; pass only the
        first for the cheap scheme, all earlier ones for the strong scheme). `tier_fn` maps a batch of
        prefixes to policy tiers; it is called once, only for prefixes not memoised in the cache.
        Rows without a session key (or without turns) get MISSING (-1).
        """
        _check_lengths(session_keys=session_keys, user_turns=user_turns)
        firsts = [turns[0] if len(turns) else "" for turns in user_turns]
        sids = self.session_ids(session_keys, firsts)
        out = np.full(len(sids), MISSING, dtype=np.int64)
        todo: list[tuple[int, str, tuple[str, ...]]] = []
        for i, (sid, turns) in enumerate(zip(sids, user_turns)):
            if sid is None or not len(turns):
                continue
            for k in range(1, len(turns) + 1):
                prefix = tuple(turns[:k])
                key = self._prefix_key(sid, prefix)
                hit = self._cache.get(key)
                if hit is None:
                    todo.append((i, key, prefix))
                else:
                    out[i] = max(out[i], hit)
        if todo:
            tiers = np.asarray(tier_fn([p for _, _, p in todo]), dtype=np.int64).reshape(-1)
            if tiers.shape != (len(todo),):
                raise ValueError(f"stickiness.floor: tier_fn returned {tiers.shape[0]} tiers for {len(todo)} prefixes")
            if (tiers < 0).any():
                raise ValueError("stickiness.floor: tier_fn returned a negative tier")
            for (i, key, _), t in zip(todo, tiers):
                self._cache.set(key, int(t))
                out[i] = max(out[i], int(t))
        return out

    def cached_initial(self, session_keys: Sequence[str | None], first_messages: Sequence[str]) -> np.ndarray:
        """Memoised tier of each conversation's first message, MISSING where not cached (compute those)."""
        sids = self.session_ids(session_keys, first_messages)
        out = np.full(len(sids), MISSING, dtype=np.int64)
        for i, (sid, first) in enumerate(zip(sids, first_messages)):
            if sid is not None:
                hit = self._cache.get(self._prefix_key(sid, (first,)))
                out[i] = MISSING if hit is None else hit
        return out

    # -- routing tokens ----------------------------------------------------------------------------
    def _mac(self, sid: str, tier: int, expires: int) -> str:
        msg = f"{TOKEN_VERSION}|{sid}|{tier}|{expires}".encode()
        return hmac.new(self._token_key, msg, hashlib.sha256).hexdigest()[:32]

    def issue_tokens(
        self, session_keys: Sequence[str | None], first_messages: Sequence[str], tiers: np.ndarray | Sequence[int]
    ) -> list[str | None]:
        """Signed routing tokens recording the tier each request was routed to (None without a key)."""
        tiers = np.asarray(tiers, dtype=np.int64).reshape(-1)
        _check_lengths(session_keys=session_keys, first_messages=first_messages, tiers=tiers)
        expires = int(self._clock() + self.ttl_s)
        return [
            None if sid is None or t < 0 else f"{TOKEN_VERSION}.{int(t)}.{expires}.{self._mac(sid, int(t), expires)}"
            for sid, t in zip(self.session_ids(session_keys, first_messages), tiers)
        ]

    def verify_tokens(
        self, session_keys: Sequence[str | None], first_messages: Sequence[str], tokens: Sequence[str | None]
    ) -> np.ndarray:
        """Tier carried by each valid token; MISSING for absent, malformed, foreign, forged or expired ones."""
        _check_lengths(session_keys=session_keys, first_messages=first_messages, tokens=tokens)
        now = self._clock()
        out = np.full(len(tokens), MISSING, dtype=np.int64)
        for i, (sid, tok) in enumerate(zip(self.session_ids(session_keys, first_messages), tokens)):
            if sid is None or not tok:
                continue
            parts = str(tok).split(".")
            if len(parts) != 4 or parts[0] != TOKEN_VERSION or not parts[1].isdigit() or not parts[2].isdigit():
                continue
            tier, expires = int(parts[1]), int(parts[2])
            if expires > now and hmac.compare_digest(parts[3], self._mac(sid, tier, expires)):
                out[i] = tier
        return out

    # -- the rule ----------------------------------------------------------------------------------
    def apply(
        self,
        session_keys: Sequence[str | None],
        first_messages: Sequence[str],
        proposed_tiers: np.ndarray | Sequence[int],
        initial_tiers: np.ndarray | Sequence[int],
        tokens: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """routed[i] = max(proposed[i], initial[i], token tier[i]) for requests with a session key, else proposed[i].

        `initial_tiers[i]` is the derived floor (the policy's tier for the first user message, or the max
        over earlier user turns — see `floor`). MISSING (-1) there means "take the memoised first-message
        tier from the cache"; a keyed row that is MISSING and not cached raises ValueError (compute it
        with `floor`). The result is a pure function of the request and the salt.
        """
        proposed = np.asarray(proposed_tiers, dtype=np.int64).reshape(-1)
        initial = np.asarray(initial_tiers, dtype=np.int64).reshape(-1).copy()
        _check_lengths(session_keys=session_keys, first_messages=first_messages, proposed_tiers=proposed,
                       initial_tiers=initial, **({"tokens": tokens} if tokens is not None else {}))
        keyed = np.array([k is not None and k != "" for k in session_keys], dtype=bool)
        need = keyed & (initial < 0)
        if need.any():
            idx = np.flatnonzero(need)
            cached = self.cached_initial([session_keys[i] for i in idx], [first_messages[i] for i in idx])
            if (cached < 0).any():
                bad = idx[cached < 0].tolist()
                raise ValueError(
                    f"stickiness.apply: initial_tiers missing (-1) and not cached for rows {bad}; "
                    "compute them with StickinessGuard.floor(...)"
                )
            initial[idx] = cached
        floor = initial
        if tokens is not None:
            floor = np.maximum(floor, self.verify_tokens(session_keys, first_messages, tokens))
        return np.where(keyed, np.maximum(proposed, floor), proposed)

    def cache_size(self) -> int:
        """Entries currently held (≤ max_entries)."""
        return len(self._cache)


def _check_lengths(**arrays: Sequence | np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"stickiness: batch lengths differ: {lengths}")
