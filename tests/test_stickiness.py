"""Session stickiness: agreement across processes, no de-escalation, tokens, TTL, bounded memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from kronaxis_lab.serving.stickiness import MISSING, StickinessConfigError, StickinessGuard

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "governance"


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class CountingTiers:
    """A deterministic stand-in for classifier+policy: tier = f(last user turn), counting calls."""

    def __init__(self, table: dict[str, int]) -> None:
        self.table, self.calls, self.items = table, 0, 0

    def __call__(self, prefixes):
        self.calls += 1
        self.items += len(prefixes)
        return np.array([self.table[p[-1]] for p in prefixes])


def _guard(clock=None, salt="s3cret-salt", **kw) -> StickinessGuard:
    args = dict(ttl_s=60, max_entries=1000, salt=salt)
    args.update(kw)
    return StickinessGuard(**args, clock=clock or FakeClock())


def test_config_instantiates(monkeypatch):
    monkeypatch.setenv("KRONAXIS_STICKY_SALT", "from-env")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        g = instantiate(compose(config_name="stickiness"))
    assert isinstance(g, StickinessGuard) and g.max_entries > 0 and g.ttl_s > 0
    assert g.session_ids(["u"], ["hi"]) == StickinessGuard(1, 1, "from-env").session_ids(["u"], ["hi"])


def test_session_ids_are_salted_hashes():
    a, b = _guard(), _guard()
    ids = a.session_ids(["user-42", "user-42", None, ""], ["hello", "other chat", "hello", "x"])
    assert ids == b.session_ids(["user-42", "user-42", None, ""], ["hello", "other chat", "hello", "x"])
    assert ids[0] != ids[1]  # same user, two conversations
    assert ids[2] is None and ids[3] is None
    assert "user-42" not in ids[0] and len(ids[0]) == 64
    assert _guard(salt="other").session_ids(["user-42"], ["hello"])[0] != ids[0]


def test_rule_sticks_and_escalates_but_never_below_initial():
    g = _guard()
    keys = ["a", "b", "c", None]
    out = g.apply(keys, ["q"] * 4, proposed_tiers=[0, 2, 1, 0], initial_tiers=[1, 1, 1, 1])
    np.testing.assert_array_equal(out, [1, 2, 1, 0])  # keep, escalate, keep; no key → proposed


def test_two_processes_agree_with_warm_and_cold_caches():
    """Process A serves turn 1 (cache warm); process B serves turn 2 cold: same answers."""
    tiers = {"Prove the Riemann hypothesis step by step": 2, "thanks!": 0, "hi": 0, "and in French?": 1}
    a, b = _guard(), _guard()
    fa, fb = CountingTiers(tiers), CountingTiers(tiers)
    keys = ["sess-1", "sess-2"]
    firsts = ["Prove the Riemann hypothesis step by step", "hi"]
    floor_a = a.floor(keys, [[f] for f in firsts], fa)
    floor_b = b.floor(keys, [[f] for f in firsts], fb)
    np.testing.assert_array_equal(floor_a, floor_b)
    np.testing.assert_array_equal(floor_a, [2, 0])
    a.floor(keys, [[f] for f in firsts], fa)  # warm: memoised, no new classifier call
    assert fa.calls == 1 and fb.calls == 1
    proposed = np.array([0, 1])  # turn 2: "thanks!" → 0 (sticks at 2), "and in French?" → 1 (escalates)
    out_a = a.apply(keys, firsts, proposed, [MISSING, MISSING])  # A answers from its cache
    out_b = b.apply(keys, firsts, proposed, floor_b)
    np.testing.assert_array_equal(out_a, out_b)
    np.testing.assert_array_equal(out_a, [2, 1])
    # a third process that never saw the session cannot use the cache: it must compute, not guess
    with pytest.raises(ValueError, match="rows \\[0, 1\\]"):
        _guard().apply(keys, firsts, proposed, [MISSING, MISSING])


def test_strong_scheme_never_deescalates_across_alternating_processes():
    turns = ["summarise this", "now prove lemma 3 formally", "ok", "rewrite as a poem", "bye"]
    per_turn = {"summarise this": 0, "now prove lemma 3 formally": 2, "ok": 0, "rewrite as a poem": 1, "bye": 0}
    procs = [_guard(), _guard()]
    fn = CountingTiers(per_turn)
    routed = []
    for t in range(len(turns)):
        g = procs[t % 2]  # the load balancer alternates processes
        floor = g.floor(["conv"], [turns[:t]] if t else [[turns[0]]], fn)
        proposed = np.array([per_turn[turns[t]]])
        routed.append(int(g.apply(["conv"], [turns[0]], proposed, floor)[0]))
    assert routed == [0, 2, 2, 2, 2]
    assert all(x <= y for x, y in zip(routed, routed[1:]))


def test_routing_tokens_carry_escalations_between_processes():
    clock = FakeClock()
    a, b = _guard(clock), _guard(clock)
    keys, firsts = ["s1", "s2"], ["hello", "hello"]
    tok = a.issue_tokens(keys, firsts, [2, 1])
    np.testing.assert_array_equal(b.verify_tokens(keys, firsts, tok), [2, 1])
    # cheap scheme (first-message floor 0) + echoed token: stays at the escalated tier
    np.testing.assert_array_equal(b.apply(keys, firsts, [0, 0], [0, 0], tokens=tok), [2, 1])
    forged = tok[1].replace("v1.1.", "v1.3.")
    swapped = [tok[1], tok[0]]  # a token of another conversation
    checks = b.verify_tokens(keys + ["s2"], firsts + ["hello"], swapped + [forged])
    np.testing.assert_array_equal(checks, [MISSING, MISSING, MISSING])
    np.testing.assert_array_equal(b.verify_tokens(keys, firsts, [None, "garbage"]), [MISSING, MISSING])
    assert _guard(clock, salt="other").verify_tokens(keys, firsts, tok).tolist() == [MISSING, MISSING]
    clock.t += 61  # token TTL is the guard's ttl_s (60 s)
    np.testing.assert_array_equal(b.verify_tokens(keys, firsts, tok), [MISSING, MISSING])
    np.testing.assert_array_equal(b.apply(keys, firsts, [0, 0], [0, 0], tokens=tok), [0, 0])
    assert a.issue_tokens([None], ["x"], [1]) == [None]


def test_ttl_expiry_of_cache_entries():
    clock = FakeClock()
    g = _guard(clock, ttl_s=10)
    fn = CountingTiers({"q": 1})
    g.floor(["k"], [["q"]], fn)
    clock.t += 9
    assert g.cached_initial(["k"], ["q"]).tolist() == [1]  # used at t+9: sliding expiry to t+19
    clock.t += 9
    assert g.cached_initial(["k"], ["q"]).tolist() == [1]
    clock.t += 10.5
    assert g.cached_initial(["k"], ["q"]).tolist() == [MISSING]
    assert g.cache_size() == 0
    g.floor(["k"], [["q"]], fn)
    assert fn.calls == 2  # recomputed after expiry


def test_memory_is_bounded_and_lru():
    g = _guard(max_entries=50)
    fn = CountingTiers({f"m{i}": i % 3 for i in range(500)})
    for i in range(500):
        g.floor([f"user{i}"], [[f"m{i}"]], fn)
        if i >= 10:
            g.cached_initial(["user0"], ["m0"])  # keep one hot entry
        assert g.cache_size() <= 50
    assert g.cache_size() == 50
    assert g.cached_initial(["user0"], ["m0"]).tolist() == [0]  # recently used survives
    assert g.cached_initial(["user1"], ["m1"]).tolist() == [MISSING]  # least recently used evicted


def test_floor_batches_missing_prefixes_in_one_call():
    g = _guard()
    fn = CountingTiers({"a": 0, "b": 2, "c": 1})
    out = g.floor(["k1", "k2", None, "k3"], [["a", "b"], ["c"], ["b"], []], fn)
    np.testing.assert_array_equal(out, [2, 1, MISSING, MISSING])
    assert fn.calls == 1 and fn.items == 3


def test_bad_settings_and_inputs():
    with pytest.raises(StickinessConfigError, match="ttl_s"):
        StickinessGuard(0, 10, "s")
    with pytest.raises(StickinessConfigError, match="max_entries"):
        StickinessGuard(1, 0, "s")
    with pytest.raises(StickinessConfigError, match="salt"):
        StickinessGuard(1, 10, "")
    with pytest.raises(ValueError, match="lengths differ"):
        _guard().apply(["a"], ["q", "r"], [0], [0])
    with pytest.raises(ValueError, match="2 prefixes"):
        _guard().floor(["a"], [["x", "y"]], lambda p: np.array([1]))
