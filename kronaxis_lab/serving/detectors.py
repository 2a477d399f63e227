"""Sensitive-data detection that format tricks cannot bypass, in linear time (issue 11).

    from kronaxis_lab.serving.detectors import BodyScanner
    scanner = BodyScanner(policy)        # a GovernancePolicy (configs/governance/strict.yaml) or its detectors
    scanner.classes(body)                # {"credit_card", "email"}: every class found in a request body
    scanner.count(body)                  # {"credit_card": 1, "email": 2} (safe to log: no values)

Three stages, each linear in the size of the body:

1. **What is scanned** (`body_leaves`, `body_texts`): every dict key, string and number (as decimal text) of the
   forwarded JSON body — messages, roles, names, tool descriptions and parameters, response_format schemas,
   `user`, `metadata`, `stop`, the legacy `prompt` — walked iteratively. A string that holds JSON (tool-call
   arguments) is decoded and walked too. The leaves become three texts: all leaves apart (`SEP`), the value
   leaves glued ("4111 1111" + "1111 1111" → one number) and their digit runs glued (a card split over turns
   with words in between); findings in the two joined texts count only where they span a leaf boundary.
2. **Normalise** (`normalise`): per code point, NFKC (full-width, super/subscript, circled digits, ＠, ﬁ),
   every Unicode decimal digit → ASCII (Arabic-Indic, Devanagari, mathematical 𝟒, ...), invisible characters
   deleted (Cf: zero-width space/joiners, bidi controls, soft hyphen, BOM, tag characters; C0/C1 controls
   except whitespace; lone surrogates; variation selectors; combining marks on ASCII, as in Zalgo "4̲1̲1̲1̲"),
   every space → " ", every dash/minus → "-", dot-likes → ".", slash-likes → "/", apostrophes → "'";
   "%40" → "@". The map is vectorised (numpy over code points) and keeps an index back to the original text,
   so spans (redaction, overlap priority) refer to the caller's text.
3. **Detect** on the normalised UTF-8 bytes. Digit-chain detectors (cards, phones) are numpy passes: a chain is
   digit groups joined by runs of ≤ 4 separator characters (space, tab, newline, - . _ / \\ ' ,), so dots,
   slashes, double spaces, underscores, tabs and line breaks all group a number; digits glued to letters
   ("4111111111111111exp1227") are a chain too. Luhn + card-network prefix run on all group-aligned windows
   of 13–19 digits at once (prefix sums). Everything else is RE2 (`google-re2`: automata, no backtracking) with
   bounded repetition only, followed by validation: python-stdnum for IBANs (ISO 7064 + each country's BBAN
   format), libphonenumber (`phonenumbers`) for phone numbers, SSA rules for SSNs, HMRC prefix rules for UK
   National Insurance numbers, entropy and placeholder rules for credentials.

Linear time, by construction (tests/test_detectors.py checks the construction; benchmarks/governance.py the
speed): RE2 scans in time linear in the text, and because no pattern repeats without a bound (widest
match W), each `finditer` step re-reads at most W bytes past the previous match: O(n·W). Python-level work per
text is bounded by `max_candidates` per detector: a text carrying more candidate-shaped values than that is
reported as carrying the class (fail closed: the rest is one span), so a flood of decoys can neither slow the
router nor hide a value behind them.

Not caught (stated, not hidden): values spelled out in words ("four one one one"), encoded (base64, ROT13,
HTML entities other than %40), homoglyph letters inside key names (Cyrillic "раssword"), and digit groups that
are glued to *other digits* (a card inside a longer digit run is ambiguous by construction).
"""

from __future__ import annotations

import functools
import json
import threading
import unicodedata
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import phonenumbers
import re2
from stdnum import iban as stdnum_iban

from kronaxis_lab.serving.governance import (
    CARD_IIN_RANGES,
    IBAN_LENGTHS,
    Detector,
    Finding,
    GovernanceConfigError,
    GovernancePolicy,
    shannon_entropy,
    ssn_valid,
)

# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------
_TABLE_SIZE = 0x40000  # planes 0-3 are tabulated; above: plane 14 (tags, variation selectors) deleted, rest kept
_TAGS = (0xE0000, 0xE1000)
_WHITESPACE = "\t\n\r\x0b\x0c"
# invisible though not Cf: combining grapheme joiner, Hangul fillers, Khmer inherent vowels, Mongolian selectors
_INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u3164\uffa0")
_DASHES = frozenset("\u2212\u2043\u2796\ufe63\uff0d\u02d7\u2010\u2011\u2012\u2013\u2014\u2015\u2e3a\u2e3b")
_DOTS = frozenset("\u00b7\u2024\u2027\u2219\u22c5\u30fb\uff65\u2022\u0387\u16eb\u2e31\u2981")
_SLASHES = frozenset("\u2044\u2215\u29f8\uff0f\u2571\u27cb")
_QUOTES = frozenset("\u2018\u2019\u201a\u201b\u2032\u02bc\u02b9\u00b4\u0060\uff07")
_ATS = frozenset("\uff20\ufe6b\u0040")


def _fold(ch: str) -> str:
    """Canonical form of one NFKC output character (digits, spaces, dashes, dots, slashes, quotes, @)."""
    cat = unicodedata.category(ch)
    if cat == "Nd":
        return str(unicodedata.decimal(ch))
    if cat == "Zs" or ch == "\u2800":
        return " "
    if cat in ("Zl", "Zp") or ch == "\x85":
        return "\n"
    if cat == "Pd" or ch in _DASHES:
        return "-"
    if ch in _DOTS:
        return "."
    if ch in _SLASHES:
        return "/"
    if ch in _QUOTES:
        return "'"
    if ch in _ATS:
        return "@"
    return ch


def map_char(ch: str) -> str:
    """The context-free part of `normalise` for one character: "" (deleted), itself, or its canonical text."""
    if ch in _WHITESPACE:
        return ch
    c = ord(ch)
    if _TAGS[0] <= c < _TAGS[1]:
        return ""
    cat = unicodedata.category(ch)
    if cat in ("Cf", "Cc", "Cs") and ch != "\x85" or ch in _INVISIBLE:
        return ""
    if cat == "Cn" or c < 0x80:
        return ch
    return "".join(_fold(x) for x in unicodedata.normalize("NFKC", ch))


def is_ascii_mark(ch: str) -> bool:
    """A combining mark (Mn/Me): deleted when it sits on an ASCII character (or starts the text)."""
    return unicodedata.category(ch) in ("Mn", "Me")


@dataclass(frozen=True)
class _Tables:
    length: np.ndarray  # uint8: output length per code point (0 = deleted)
    single: np.ndarray  # uint32: output code point where length == 1
    start: np.ndarray  # int32: offset into `flat` where length > 1
    flat: np.ndarray  # uint32: concatenated multi-character outputs
    mark: np.ndarray  # bool: combining mark


@functools.cache
def _tables() -> _Tables:
    """Built once per process (~0.2 s): the per-code-point map of planes 0-3."""
    length = np.ones(_TABLE_SIZE, np.uint8)
    single = np.arange(_TABLE_SIZE, dtype=np.uint32)
    start = np.zeros(_TABLE_SIZE, np.int32)
    mark = np.zeros(_TABLE_SIZE, bool)
    flat: list[int] = []
    for c in range(0x80, _TABLE_SIZE):
        ch = chr(c)
        out = map_char(ch)
        if len(out) == 1:
            single[c] = ord(out)
        else:
            length[c] = len(out)
            start[c] = len(flat)
            flat.extend(ord(x) for x in out)
        mark[c] = len(out) == 1 and out == ch and is_ascii_mark(ch)
    for c in range(0x80):
        length[c] = len(map_char(chr(c)))
    return _Tables(length, single, start, np.asarray(flat, np.uint32), mark)


_ASCII_DROP = np.array([len(map_char(chr(c))) == 0 for c in range(256)])


@dataclass(frozen=True)
class NormText:
    """A normalised text: `text`, its UTF-8 `data` (what the detectors scan) and the way back to the input.

    `origin[j]` is the index in the input of normalised character j (len(text) + 1 entries), None = identity.
    """

    text: str
    data: bytes
    origin: np.ndarray | None

    @functools.cached_property
    def arr(self) -> np.ndarray:
        return np.frombuffer(self.data, np.uint8)

    def spans(self, byte_spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """Byte spans in `data` → character spans in the original text."""
        if not byte_spans:
            return []
        b = np.asarray(byte_spans, np.int64).reshape(-1, 2)
        if len(self.data) != len(self.text):  # non-ASCII: count UTF-8 lead bytes before each offset
            lead = np.concatenate([[0], np.cumsum((self.arr & 0xC0) != 0x80)])
            b = lead[b]
        if self.origin is not None:
            s, e = b[:, 0], b[:, 1]
            b = np.stack([self.origin[s], np.where(e > s, self.origin[np.maximum(e - 1, 0)] + 1, self.origin[s])], 1)
        return [(int(s), int(e)) for s, e in b]


def _normalise_codepoints(cp: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    t = _tables()
    n = cp.size
    inside = cp < _TABLE_SIZE
    idx = np.where(inside, cp, 0)
    tags = (cp >= _TAGS[0]) & (cp < _TAGS[1])
    lens = np.where(inside, t.length[idx], np.where(tags, 0, 1)).astype(np.int64)
    out1 = np.where(inside, t.single[idx], cp).astype(np.uint32)
    mark = inside & t.mark[idx]
    if mark.any():  # a mark whose base (last non-mark before it) is ASCII, or that starts the text
        pos = np.arange(n)
        base = np.maximum.accumulate(np.where(mark, -1, pos))
        lens[mark & ((base < 0) | (cp[np.maximum(base, 0)] < 0x80))] = 0
    if (lens == 1).all():
        out, origin = out1, None
    else:
        ends = np.cumsum(lens)
        starts = ends - lens
        out = np.empty(int(ends[-1]) if n else 0, np.uint32)
        one = lens == 1
        out[starts[one]] = out1[one]
        many = np.flatnonzero(lens > 1)
        if many.size:
            ml = lens[many]
            within = np.arange(int(ml.sum())) - np.repeat(np.cumsum(ml) - ml, ml)
            out[np.repeat(starts[many], ml) + within] = t.flat[np.repeat(t.start[cp[many]], ml) + within]
        origin = np.repeat(np.arange(n), lens)
    if out.size >= 3:
        pct = np.flatnonzero((out[:-2] == 0x25) & (out[1:-1] == 0x34) & (out[2:] == 0x30))  # "%40" → "@"
        if pct.size:
            out = out.copy()
            out[pct] = 0x40
            keep = np.ones(out.size, bool)
            keep[pct + 1] = keep[pct + 2] = False
            out = out[keep]
            origin = (np.arange(n) if origin is None else origin)[keep]
    if origin is not None:
        origin = np.append(origin, n)
    return out, origin


def _build(text: str) -> NormText:
    if text.isascii():
        data = text.encode("ascii")
        arr = np.frombuffer(data, np.uint8)
        if not _ASCII_DROP[arr].any() and b"%40" not in data:
            return NormText(text, data, None)
        out, origin = _normalise_codepoints(arr.astype(np.uint32))
    else:
        out, origin = _normalise_codepoints(np.frombuffer(text.encode("utf-32-le", "surrogatepass"), "<u4"))
    norm = out.astype("<u4").tobytes().decode("utf-32-le")
    return NormText(norm, norm.encode("utf-8"), origin)


class _NormCache:
    """LRU of normalised texts bounded by total characters: every detector of a policy scans the same texts."""

    def __init__(self, max_chars: int = 4_000_000) -> None:
        self.max_chars, self.chars = max_chars, 0
        self._d: OrderedDict[str, NormText] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str) -> NormText:
        with self._lock:
            hit = self._d.get(text)
            if hit is not None:
                self._d.move_to_end(text)
                return hit
        nt = _build(text)
        if len(text) <= self.max_chars // 4:
            with self._lock:
                if text not in self._d:
                    self._d[text] = nt
                    self.chars += len(text)
                while self.chars > self.max_chars:
                    old, _ = self._d.popitem(last=False)
                    self.chars -= len(old)
        return nt


_CACHE = _NormCache()


def normalised(text: str) -> NormText:
    """`normalise` with the byte view the detectors scan (cached: a policy's detectors share it)."""
    return _CACHE.get(text)


def normalise(text: str) -> tuple[str, np.ndarray | None]:
    """(normalised text, origin): see the module docstring; `origin` maps normalised positions back (None = same)."""
    nt = normalised(text)
    return nt.text, nt.origin


# --------------------------------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------------------------------
SEP = "\n|\n"  # between leaves in the "apart" text: no detector joins values across it
_ENUM_KEYS = frozenset({"role", "type", "object", "finish_reason", "detail", "tool_choice"})
_MAX_JSON_DEPTH = 2  # JSON strings inside JSON strings decoded at most this deep


@dataclass(frozen=True)
class Leaf:
    """One scalar of a body: `text`; `value` False for dict keys and enum values (role/type), which are scanned
    but not glued to their neighbours when looking for values split across fields."""

    text: str
    value: bool = True


def _number_texts(x: int | float) -> list[str]:
    if isinstance(x, int):
        return [str(x)]
    if x != x or x in (float("inf"), float("-inf")):
        return []
    out = [repr(x)]
    if x.is_integer() and abs(x) < 1e21:
        out.append(str(int(x)))  # 4.111111111111111e15 → "4111111111111111"
    return out


def body_leaves(body: Any) -> list[Leaf]:
    """Every dict key, string and number of a JSON value in document order; iterative (no recursion limit)."""
    out: list[Leaf] = []
    stack: list[tuple[Iterator[tuple[Any, Any]], int]] = [(iter([(None, body)]), 0)]
    while stack:
        it, depth = stack[-1]
        try:
            key, v = next(it)
        except StopIteration:
            stack.pop()
            continue
        if isinstance(v, Mapping):
            stack.append((((k, x) for k, x in v.items() for _ in [out.append(Leaf(str(k), False))]), depth))
        elif isinstance(v, (list, tuple)):
            stack.append((((key, x) for x in v), depth))
        elif isinstance(v, str):
            enum = key in _ENUM_KEYS and len(v) <= 32 and v.replace("_", "").isalpha()
            out.append(Leaf(v, not enum))
            s = v.lstrip()
            if depth < _MAX_JSON_DEPTH and s[:1] in ("{", "[") and len(s) > 1:
                try:
                    decoded = json.loads(s)
                except ValueError:
                    continue
                if isinstance(decoded, (dict, list)):
                    stack.append((iter([(key, decoded)]), depth + 1))
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, (int, float)):
            out.extend(Leaf(t) for t in _number_texts(v))
        else:
            out.append(Leaf(str(v)))
    return out


def body_strings(body: Any) -> list[str]:
    """Every dict key, string and number (as decimal text) of a JSON value, in document order."""
    return [leaf.text for leaf in body_leaves(body)]


_DIGIT_RUNS = re2.compile(rb"[0-9](?:[0-9]|[ \t\r\n._/\\',-]{1,4}[0-9]){0,400}", re2.Options())


def _digit_runs(text: str) -> list[str]:
    return [m.group().decode("ascii") for m in _DIGIT_RUNS.finditer(normalised(text).data)]


@dataclass(frozen=True)
class BodyTexts:
    """The texts scanned for one body: `apart` (every leaf, separated by SEP) and the joined views, each with
    the boundaries (original-text offsets) a finding must straddle to count."""

    apart: str
    glued: str
    glued_cuts: tuple[int, ...]
    digits: str
    digits_cuts: tuple[int, ...]


def body_texts(body: Any) -> BodyTexts:
    leaves = body_leaves(body)
    values = [leaf.text for leaf in leaves if leaf.value and leaf.text]
    cuts, pos = [], 0
    for v in values[:-1]:
        pos += len(v)
        cuts.append(pos)
    # digits view: each value's digit runs, runs of one value kept apart by " | ", values joined by " "
    parts, dcuts, dpos = [], [], 0
    for v in values:
        runs = _digit_runs(v)
        if not runs:
            continue
        piece = " | ".join(runs)
        if parts:
            dcuts.append(dpos)
            parts.append(" ")
            dpos += 1
        parts.append(piece)
        dpos += len(piece)
    return BodyTexts(SEP.join(leaf.text for leaf in leaves), "".join(values), tuple(cuts), "".join(parts),
                     tuple(dcuts))


def _straddles(f: Finding, cuts: Sequence[int]) -> bool:
    i = int(np.searchsorted(cuts, f.start, side="right"))
    return i < len(cuts) and cuts[i] < f.end


class BodyScanner:
    """Data classes in whole request bodies, through a `GovernancePolicy` (its detectors and priority order).

    `count(body)` = findings in every leaf + findings of the joined views that straddle a leaf boundary (a value
    split across messages or fields); the joined views add a class's count only where they find more of it.
    """

    def __init__(self, policy: GovernancePolicy | Sequence[Detector] | Mapping[str, Detector]) -> None:
        self.policy = policy if isinstance(policy, GovernancePolicy) else GovernancePolicy(policy)

    def count_many(self, bodies: Sequence[Any]) -> list[dict[str, int]]:
        views = [body_texts(b) for b in bodies]
        texts = [t for v in views for t in (v.apart, v.glued, v.digits)]
        found = self.policy.scan(texts)
        out = []
        for i, v in enumerate(views):
            apart, glued, digits = found[3 * i : 3 * i + 3]
            counts = Counter(f.data_class for f in apart)
            extra_g = Counter(f.data_class for f in glued if _straddles(f, v.glued_cuts))
            extra_d = Counter(f.data_class for f in digits if _straddles(f, v.digits_cuts))
            for c in set(extra_g) | set(extra_d):
                counts[c] += max(extra_g[c], extra_d[c])
            out.append(dict(sorted(counts.items())))
        return out

    def count(self, body: Any) -> dict[str, int]:
        return self.count_many([body])[0]

    def classes(self, body: Any) -> set[str]:
        return set(self.count(body))


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.encoding = re2.Options.Encoding.LATIN1  # bytes of UTF-8: [\x80-\xff] = part of a non-ASCII char
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.max_mem = 64 << 20

PATTERNS: list[str] = []  # every pattern the detectors compile (tests check they repeat only with bounds)


def compile_re2(pattern: str) -> Any:
    """Compile for the detectors' byte view; non-ASCII literals are written as their UTF-8 bytes (`lit`)."""
    PATTERNS.append(pattern)
    try:
        return re2.compile(pattern.encode("latin-1"), _RE2_OPTIONS)
    except re2.error as exc:  # pragma: no cover - a pattern error is a programming error
        raise GovernanceConfigError(f"detectors: bad pattern {pattern[:60]!r}: {exc}") from exc


def lit(word: str) -> str:
    """A literal (any script) as a Latin-1 pattern matching its UTF-8 bytes; spaces match any 1–3 spaces."""
    out = []
    for b in word.encode("utf-8"):
        ch = chr(b)
        out.append(r"\s{1,3}" if ch == " " else (f"\\x{b:02x}" if b >= 0x80 or not ch.isalnum() else ch))
    return "".join(out)


def alternation(words: Sequence[str]) -> str:
    return "(?:" + "|".join(lit(w) for w in sorted(set(words), key=len, reverse=True)) + ")"


def _lut(chars: str) -> np.ndarray:
    t = np.zeros(256, bool)
    t[list(chars.encode("ascii"))] = True
    return t


_IS_DIGIT = _lut("0123456789")
_IS_ALNUM = _lut("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True)
class Chains:
    """Digit groups of a byte array: digits joined by runs of ≤ max_gap separator bytes form a chain.

    D: byte positions of the digits; per group: first (index into D), length, chain; per chain: first and last
    group index.
    """

    D: np.ndarray
    g_first: np.ndarray
    g_len: np.ndarray
    g_chain: np.ndarray
    c_first: np.ndarray
    c_last: np.ndarray


def digit_chains(arr: np.ndarray, sep: np.ndarray, max_gap: int) -> Chains:
    D = np.flatnonzero(_IS_DIGIT[arr])
    if D.size == 0:
        e = np.zeros(0, np.int64)
        return Chains(e, e, e, e, e, e)
    sepcum = np.concatenate([[0], np.cumsum(sep[arr])])
    gap = D[1:] - D[:-1] - 1
    linked = (gap == 0) | ((gap <= max_gap) & (sepcum[D[1:]] - sepcum[D[:-1] + 1] == gap))
    new_group = np.concatenate([[True], (gap > 0) | ~linked])
    new_chain = np.concatenate([[True], ~linked])
    g_first = np.flatnonzero(new_group)
    g_len = np.diff(np.append(g_first, D.size))
    chain_of_digit = np.cumsum(new_chain) - 1
    g_chain = chain_of_digit[g_first]
    c_first = np.flatnonzero(np.concatenate([[True], g_chain[1:] != g_chain[:-1]]))
    c_last = np.append(c_first[1:] - 1, g_first.size - 1)
    return Chains(D, g_first, g_len, g_chain, c_first, c_last)


class NormalisingDetector(Detector):
    """A detector that scans the normalised byte view (`find_bytes`) and reports spans of the original text.

    `max_candidates` bounds the Python-level validations per text; past it the rest of the text is one span
    (fail closed, see the module docstring).
    """

    def __init__(self, name: str | None = None, max_candidates: int = 1000) -> None:
        super().__init__(name)
        if max_candidates < 1:
            raise GovernanceConfigError(f"{type(self).__name__}: max_candidates must be ≥ 1, got {max_candidates}")
        self.max_candidates = max_candidates

    def find(self, text: str) -> list[tuple[int, int]]:
        nt = normalised(text)
        return nt.spans(self.find_bytes(nt))

    def find_bytes(self, nt: NormText) -> list[tuple[int, int]]:
        """(start, end) byte spans in `nt.data`."""
        raise NotImplementedError

    def _capped(self, pattern: Any, data: bytes, spans: list[tuple[int, int]]) -> Iterator[Any]:
        """`pattern.finditer(data)`, stopping after `max_candidates` matches with the rest appended as a span."""
        for k, m in enumerate(pattern.finditer(data)):
            if k >= self.max_candidates:
                spans.append((m.start(), len(data)))
                return
            yield m


# --------------------------------------------------------------------------------------------------
# Payment cards
# --------------------------------------------------------------------------------------------------
_CARD_SEP = _lut(" \t\r\n\x0b\x0c-._/\\',")
_LUHN_DOUBLE = np.array([0, 2, 4, 6, 8, 1, 3, 5, 7, 9], np.int64)


class CardDetector(NormalisingDetector):
    """Payment card numbers: 13–19 digits, Luhn-valid, known card-network prefix (governance.CARD_IIN_RANGES).

    Candidates are the group-aligned windows of 13–19 digits of every digit chain (so "4111 1111 1111 1111
    12/27" yields the card without the expiry, and "ref 1 4111-1111-1111-1111" without the 1). A window that is
    not the whole chain may not contain 1-digit groups (cuts false positives from lists of small numbers); a
    whole chain of two groups split by one "." or "," is a decimal number, not a card.
    """

    default_name = "credit_card"

    def __init__(self, name: str | None = None, require_known_iin: bool = True, max_separator_run: int = 4,
                 max_candidates: int = 1000) -> None:
        super().__init__(name, max_candidates)
        self.require_known_iin = require_known_iin
        self.max_separator_run = max_separator_run

    def find_bytes(self, nt: NormText) -> list[tuple[int, int]]:
        arr = nt.arr
        if arr.size < 13:
            return []
        ch = digit_chains(arr, _CARD_SEP, self.max_separator_run)
        if ch.D.size < 13:
            return []
        G = ch.g_first.size
        S = np.concatenate([[0], np.cumsum(ch.g_len)])
        chain_last = ch.c_last[ch.g_chain]
        lo = np.searchsorted(S, S[:-1] + 13, "left") - 1
        hi = np.minimum(np.searchsorted(S, S[:-1] + 19, "right") - 2, chain_last)
        cnt = np.clip(hi - lo + 1, 0, None)
        if cnt.sum() == 0:
            return []
        k = np.repeat(np.arange(G), cnt)
        e = np.repeat(lo, cnt) + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        whole = (k == ch.c_first[ch.g_chain[k]]) & (e == chain_last[k])
        short = np.concatenate([[0], np.cumsum(ch.g_len < 2)])
        ok = whole | (short[e + 1] - short[k] == 0)
        two = whole & (e == k + 1)
        if two.any():  # "3.1415926535897932": a decimal number
            between = ch.D[ch.g_first[e]] - 1
            single = ch.D[ch.g_first[e]] - ch.D[ch.g_first[k] + ch.g_len[k] - 1] == 2
            ok &= ~(two & single & np.isin(arr[between], list(b".,")))
        k, e = k[ok], e[ok]
        s = ch.g_first[k]
        t = ch.g_first[e] + ch.g_len[e] - 1
        v = arr[ch.D].astype(np.int64) - 48
        par = np.arange(v.size) % 2
        plain = [np.concatenate([[0], np.cumsum(np.where(par == p, v, 0))]) for p in (0, 1)]
        dbl = [np.concatenate([[0], np.cumsum(np.where(par == p, _LUHN_DOUBLE[v], 0))]) for p in (0, 1)]
        tp = t % 2
        total = np.where(tp == 0, plain[0][t + 1] - plain[0][s], plain[1][t + 1] - plain[1][s]) + np.where(
            tp == 0, dbl[1][t + 1] - dbl[1][s], dbl[0][t + 1] - dbl[0][s]
        )
        valid = total % 10 == 0
        if self.require_known_iin:
            p4 = v[s] * 1000 + v[s + 1] * 100 + v[s + 2] * 10 + v[s + 3]
            iin = np.zeros(s.size, bool)
            for lo_, hi_ in CARD_IIN_RANGES:
                p = p4 // 10 ** (4 - len(lo_))
                iin |= (p >= int(lo_)) & (p <= int(hi_))
            valid &= iin
        return [(int(a), int(b) + 1) for a, b in zip(ch.D[s[valid]], ch.D[t[valid]])]


# --------------------------------------------------------------------------------------------------
# IBAN
# --------------------------------------------------------------------------------------------------
class IbanDetector(NormalisingDetector):
    """IBANs in any case, compact or grouped by spaces, dashes, dots, underscores or slashes (NBSP/en-dash are
    folded by `normalise`); validated by python-stdnum (country length, ISO 7064 mod 97-10, BBAN format).
    After an invalid candidate the search resumes one character later, so a decoy cannot swallow a real IBAN."""

    default_name = "iban"
    _CAND = compile_re2(
        "(?i)(?:" + "|".join(sorted(IBAN_LENGTHS)) + r")[0-9]{2}(?:[ ._/-]{0,2}[a-z0-9]){10,30}"
    )

    def find_bytes(self, nt: NormText) -> list[tuple[int, int]]:
        data, spans, pos, tried = nt.data, [], 0, 0
        while True:
            m = self._CAND.search(data, pos)
            if m is None:
                return spans
            tried += 1
            if tried > self.max_candidates:
                spans.append((m.start(), len(data)))
                return spans
            s = m.start()
            end = self._valid_end(data, s, m.end())
            if s > 0 and chr(data[s - 1]).isalpha():
                end = None  # "XDE89..." is part of a word
            if end is None:
                pos = s + 1
            else:
                spans.append((s, end))
                pos = end

    @staticmethod
    def _valid_end(data: bytes, s: int, e: int) -> int | None:
        length = IBAN_LENGTHS[data[s : s + 2].decode("ascii").upper()]
        chars, i = [], s
        while i < e and len(chars) < length:
            c = data[i]
            if _IS_ALNUM[c]:
                chars.append(chr(c))
            i += 1
        compact = "".join(chars).upper()
        return i if len(compact) == length and stdnum_iban.is_valid(compact) else None


# --------------------------------------------------------------------------------------------------
# US SSN, UK National Insurance number
# --------------------------------------------------------------------------------------------------
def _context_before(data: bytes, start: int, pattern: Any, window: int) -> bool:
    """A keyword ending within `window` bytes before `start`, with no digit between it and `start`."""
    lo = max(0, start - window - 40)
    chunk = data[lo:start]
    last = None
    for m in pattern.finditer(chunk):
        last = m
    return last is not None and len(chunk) - last.end() <= window and not any(
        _IS_DIGIT[c] for c in chunk[last.end():]
    )


class SsnDetector(NormalisingDetector):
    """US Social Security numbers: AAA-GG-SSSS with one uniform separator (dash, space, dot, slash, underscore;
    en-dashes fold to dashes), any separators or 9 bare digits after an SSN keyword; SSA area/group/serial rules
    (governance.ssn_valid)."""

    default_name = "ssn"
    _SEPARATED = compile_re2(r"([0-9]{3})([ ._/-]{1,2})([0-9]{2})([ ._/-]{1,2})([0-9]{4})")
    _BARE = compile_re2(r"[0-9]{9}")

    def __init__(
        self,
        name: str | None = None,
        context_window: int = 25,
        keywords: Sequence[str] = (
            "ssn", "ss#", "ss no", "ssnum", "social security", "social sec", "soc sec", "my social",
            "sozialversicherungsnummer", "numéro de sécurité sociale", "número de seguro social",
        ),
        max_candidates: int = 1000,
    ) -> None:
        super().__init__(name, max_candidates)
        self.context_window = context_window
        self._kw = compile_re2("(?i)" + alternation(keywords))

    def _bounded(self, data: bytes, s: int, e: int) -> bool:
        """Not part of a longer digit chain or alphanumeric token."""
        before = data[max(0, s - 2) : s]
        after = data[e : e + 2]
        glued = lambda b: bool(b) and _IS_ALNUM[b[0]]  # noqa: E731
        chained = lambda b: len(b) == 2 and chr(b[0]) in " .-/_" and _IS_DIGIT[b[1]]  # noqa: E731
        return not (glued(before[-1:]) or glued(after[:1]) or chained(before[::-1]) or chained(after))

    def find_bytes(self, nt: NormText) -> list[tuple[int, int]]:
        data, spans = nt.data, []
        for m in self._capped(self._SEPARATED, data, spans):
            s, e = m.span()
            if not self._bounded(data, s, e) or not ssn_valid(m.group(1).decode(), m.group(3).decode(),
                                                               m.group(5).decode()):
                continue
            if m.group(2) == m.group(4) or _context_before(data, s, self._kw, self.context_window):
                spans.append((s, e))
        if spans and spans[-1][1] == len(data):
            return spans
        for m in self._capped(self._BARE, data, spans):
            s, e = m.span()
            d = m.group().decode()
            if self._bounded(data, s, e) and ssn_valid(d[:3], d[3:5], d[5:]) and _context_before(
                data, s, self._kw, self.context_window
            ):
                spans.append((s, e))
        return spans


class NinoDetector(NormalisingDetector):
    """UK National Insurance numbers (HMRC format): two prefix letters, six digits, suffix A–D, e.g.
    AB 12 34 56 C. First letter not D F I Q U V, second not D F I O Q U V, prefixes BG GB KN NK NT TN ZZ never
    issued. Upper case with its suffix anywhere; any case, suffix optional, after an NI keyword."""

    default_name = "uk_nino"
    _CAND = compile_re2(r"(?i)([a-z]{2})[ .-]{0,2}([0-9]{2})[ .-]{0,2}([0-9]{2})[ .-]{0,2}([0-9]{2})"
                        r"(?:[ .-]{0,2}([a-d]))?")
    _BAD_PREFIX = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})

    def __init__(
        self,
        name: str | None = None,
        context_window: int = 25,
        keywords: Sequence[str] = (
            "national insurance", "ni number", "ni no", "nino", "n.i. number", "ni-nummer", "nin",
            "insurance number",
        ),
        max_candidates: int = 1000,
    ) -> None:
        super().__init__(name, max_candidates)
        self.context_window = context_window
        self._kw = compile_re2("(?i)" + alternation(keywords))

    def find_bytes(self, nt: NormText) -> list[tuple[int, int]]:
        data, spans = nt.data, []
        for m in self._capped(self._CAND, data, spans):
            s, e = m.span()
            prefix = m.group(1).decode()
            p = prefix.upper()
            if (
                (s > 0 and _IS_ALNUM[data[s - 1]])
                or (e < len(data) and _IS_ALNUM[data[e]])
                or p[0] in "DFIQUV" or p[1] in "DFIOQUV" or p in self._BAD_PREFIX
            ):
                continue
            strict = prefix.isupper() and m.group(5) is not None and m.group(5).isupper()
            if strict or _context_before(data, s, self._kw, self.context_window):
                spans.append((s, e))
        return spans


# --------------------------------------------------------------------------------------------------
# E-mail
# --------------------------------------------------------------------------------------------------
_U = r"\x80-\xff"  # bytes of non-ASCII characters (internationalised local parts and domains)
_LOCAL = rf"[A-Za-z0-9._%+'{_U}-]"
_LABEL = rf"[A-Za-z0-9{_U}](?:[A-Za-z0-9{_U}-]{{0,61}}[A-Za-z0-9{_U}])?"
_TLD = rf"(?:[A-Za-z]{{2,24}}|xn--[A-Za-z0-9-]{{2,59}}|[{_U}]{{4,48}})"


class EmailDetector(NormalisingDetector):
    """E-mail addresses, internationalised (müller@firma.de, info@bücher-shop.de, punycode), full-width ＠ and
    %40 (folded by `normalise`), and the obfuscations "jane [at] acme [dot] org" / "john dot doe at gmail dot
    com". No spaces around a bare "@" (keeps `x @ self.weight` out)."""

    default_name = "email"
    _AT = r"\s{0,3}[\[({<]\s{0,3}(?:at|AT|At)\s{0,3}[\])}>]\s{0,3}"
    _DOT = r"(?:\s{0,3}[\[({<]\s{0,3}(?:dot|DOT|Dot)\s{0,3}[\])}>]\s{0,3}|\.)"
    _PATTERN = compile_re2(
        rf"{_LOCAL}{{1,64}}@(?:{_LABEL}\.){{1,8}}{_TLD}"
        rf"|{_LOCAL}{{1,64}}{_AT}[A-Za-z0-9{_U}-]{{1,63}}(?:{_DOT}[A-Za-z0-9{_U}-]{{1,63}}){{1,8}}"
        r"|(?i)[a-z0-9._-]{1,64}(?: dot [a-z0-9-]{1,63}){0,4} at [a-z0-9-]{1,63}(?: dot [a-z0-9-]{1,63}){0,4}"
        r" dot (?:com|net|org|edu|gov|io|co|uk|de|fr|ca|au|info|me)\b"
    )

    def find_bytes(self, nt: NormText) -> list[tuple[int, int]]:
        if b"@" not in nt.data and b"at" not in nt.data and b"AT" not in nt.data and b"At" not in nt.data:
            return []
        spans: list[tuple[int, int]] = []
        for m in self._capped(self._PATTERN, nt.data, spans):
            spans.append(m.span())
        return spans


# --------------------------------------------------------------------------------------------------
# Phone numbers
# --------------------------------------------------------------------------------------------------
_PHONE_SEP = _lut(" \t-./()")
PHONE_KEYWORDS = (
    # English
    "phone", "telephone", "tel", "tel.", "mobile", "cell", "cellphone", "call me", "call us", "call him",
    "call her", "call them", "call back", "text me", "sms", "whatsapp", "fax", "ring me", "reach me",
    "my number", "contact number", "landline", "hotline", "helpline", "dial",
    # German (compounds: Telefonnummer, Handynummer, Mobilnummer, Festnetznummer, Rufnummer, Faxnummer)
    "telefon", "handy", "mobil", "festnetz", "rufnummer", "ruf mich an", "erreichbar unter",
    # French, Spanish, Portuguese, Italian, Dutch, Nordic, Polish, Turkish
    "tél", "téléphone", "portable", "appelle-moi", "appelez", "numéro", "numero", "teléfono", "telefono",
    "móvil", "movil", "celular", "telemóvel", "cellulare", "chiamami", "llámame", "ligue", "telefoon",
    "mobiel", "bel me", "puhelin", "telefonu", "komórka", "numer",
    # other scripts
    "телефон", "тел", "мобильный", "電話", "携帯", "电话", "手机", "전화", "휴대폰", "هاتف", "جوال", "טלפון",
    "फ़ोन", "फोन",
)
PHONE_REGIONS = (
    "GB", "DE", "FR", "IT", "ES", "NL", "BE", "AT", "CH", "IE", "PT", "SE", "NO", "DK", "FI", "PL", "CZ", "GR",
    "TR", "RU", "UA", "IL", "AE", "SA", "EG", "ZA", "NG", "KE", "IN", "PK", "CN", "JP", "KR", "TW", "HK", "SG",
    "MY", "TH", "ID", "PH", "VN", "AU", "NZ", "BR", "AR", "MX", "CO", "CL", "PE",
)


class PhoneDetector(NormalisingDetector):
    """Phone numbers, validated by libphonenumber (`phonenumbers`), on digit chains of 7–15 digits grouped by
    spaces, dashes, dots, slashes or parentheses:

    - international: "+CC ..." / "(+CC) ..." / "00CC ..." (with separators) that libphonenumber finds possible
      ("00" ones: valid);
    - after a phone keyword (`keywords`, any language; substrings, so German compounds such as Telefonnummer,
      Handynummer count) within `context_window` bytes and no digit between: 8–15 digits, or ddd-dddd;
    - bare national formats: North-American (ddd) ddd-dddd / ddd-ddd-dddd / ddd.ddd.dddd / 1-ddd-ddd-dddd with
      one separator per gap, and trunk-prefixed national numbers (0 + 8–11 digits, grouped) valid in one of
      `regions`.
    """

    default_name = "phone"

    def __init__(
        self,
        name: str | None = None,
        context_window: int = 30,
        keywords: Sequence[str] = PHONE_KEYWORDS,
        regions: Sequence[str] = PHONE_REGIONS,
        max_candidates: int = 200,
    ) -> None:
        super().__init__(name, max_candidates)
        bad = sorted(set(regions) - phonenumbers.SUPPORTED_REGIONS)
        if bad:
            raise GovernanceConfigError(f"PhoneDetector: unknown regions {bad}")
        self.context_window = context_window
        self.regions = tuple(regions)
        self._kw = compile_re2("(?i)" + alternation(keywords))

    def find_bytes(self, nt: NormText) -> list[tuple[int, int]]:
        arr, data = nt.arr, nt.data
        ch = digit_chains(arr, _PHONE_SEP, 3)
        if ch.D.size < 7:
            return []
        n_digits = ch.g_first[ch.c_last] + ch.g_len[ch.c_last] - ch.g_first[ch.c_first]
        cand = np.flatnonzero((n_digits >= 7) & (n_digits <= 15))
        spans: list[tuple[int, int]] = []
        for k, c in enumerate(cand):
            if k >= self.max_candidates:
                spans.append((int(ch.D[ch.g_first[ch.c_first[c]]]), len(data)))
                break
            first = int(ch.D[ch.g_first[ch.c_first[c]]])
            last = int(ch.D[ch.g_first[ch.c_last[c]] + ch.g_len[ch.c_last[c]] - 1]) + 1
            s = first
            while s > 0 and s > first - 3 and data[s - 1] in b"+( ":
                s -= 1
            lead = data[s:first]
            while lead[:1] == b" ":
                s, lead = s + 1, lead[1:]
            if s > 0 and _IS_ALNUM[data[s - 1]] or last < len(data) and _IS_ALNUM[data[last]]:
                continue  # glued to a word: an identifier, not a dialled number
            if self._is_phone(data[s:last].decode("ascii"), b"+" in lead, data, s, int(n_digits[c])):
                spans.append((s, last))
        return spans

    def _is_phone(self, text: str, plus: bool, data: bytes, start: int, n: int) -> bool:
        digits = "".join(c for c in text if c.isdigit())
        if plus:
            return n >= 8 and self._possible("+" + text.lstrip("(+ ").replace("(0)", ""), None)
        if digits.startswith("00") and digits[2] != "0" and not digits.isdigit() or (
            digits.startswith("00") and text != digits
        ):
            if self._valid(text, ("DE",)):
                return True
        if _context_before(data, start, self._kw, self.context_window) and self._dialled(text):
            return n >= 8 or bool(re2.fullmatch(r"[0-9]{3}[-.][0-9]{4}", text))
        if self._nanp(text):
            return True
        return (
            digits[0] == "0" and digits[1] != "0" and 9 <= n <= 12 and text != digits and self._dialled(text)
            and all(len(g) >= 2 for g in _groups(text)) and self._valid(text, self.regions)
        )

    @staticmethod
    def _dialled(text: str) -> bool:
        """Looks dialled: no doubled separators ("12 - 3"), not a decimal, at most one 1-digit group."""
        groups = _groups(text)
        return (
            not any(a in " .-" and b in " .-" for a, b in zip(text, text[1:]))
            and text.count(".") != 1
            and sum(len(g) < 2 for g in groups) <= 1
        )

    _NANP = compile_re2(r"(?:1[ .-])?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}")

    def _nanp(self, text: str) -> bool:
        m = self._NANP.fullmatch(text.encode("ascii"))
        if m is None:
            return False
        seps = [c for c in text if not c.isdigit() and c not in "()"]
        return len(set(seps)) <= 1 or text.startswith("(")

    @staticmethod
    def _possible(text: str, region: str | None) -> bool:
        try:
            return phonenumbers.is_possible_number(phonenumbers.parse(text, region))
        except phonenumbers.NumberParseException:
            return False

    @staticmethod
    def _valid(text: str, regions: Sequence[str]) -> bool:
        for r in regions:
            try:
                if phonenumbers.is_valid_number(phonenumbers.parse(text, r)):
                    return True
            except phonenumbers.NumberParseException:
                continue
        return False


def _groups(text: str) -> list[str]:
    out, cur = [], []
    for c in text:
        if c.isdigit():
            cur.append(c)
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out


# --------------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------------
PASSWORD_WORDS = (
    "password", "passwd", "pwd", "passphrase", "passcode", "pass", "pw",
    "passwort", "kennwort", "mot de passe", "mdp", "contraseña", "contrasena", "clave", "senha", "palavra-passe",
    "wachtwoord", "hasło", "haslo", "heslo", "lösenord", "losenord", "passord", "adgangskode", "salasana",
    "jelszó", "jelszo", "parola", "parolă", "şifre", "sifre", "şifresi", "пароль", "ПАРОЛЬ", "パスワード",
    "暗証番号", "密码", "密碼", "口令", "비밀번호", "암호", "كلمة المرور", "كلمة السر", "סיסמה", "κωδικός",
    "mật khẩu", "รหัสผ่าน", "kata sandi", "पासवर्ड", "PASSWÖRTER",
)
SECRET_WORDS = (
    "api key", "api_key", "api-key", "apikey", "secret", "token", "access key", "access_key", "access-key",
    "private key", "private_key", "private-key", "credential", "credentials", "auth key", "auth_key",
    "signing key", "signing_key", "session id", "session_id", "x-api-key", "key", "client secret",
    "schlüssel", "schluessel", "geheimnis", "zugangsdaten", "clé", "jeton", "secreto", "chave", "segreto",
    "ключ", "токен", "секрет", "秘密", "密钥", "トークン", "시크릿",
)


class SecretDetector(NormalisingDetector):
    """Credentials: provider token formats, PEM private keys, Slack webhooks, Authorization headers (Bearer,
    Token, Basic, ...), URL credentials, bare AWS secret access keys, and values assigned to key/token/secret/
    password names in many languages (Passwort, mot de passe, contraseña, пароль, パスワード, ...).

    Random-looking rules (from governance.SecretDetector): an assigned value needs ≥ `min_value_length`
    characters mixing letters and digits with Shannon entropy ≥ `min_entropy_bits`; a password value ≥
    `min_password_length` with a letter and a non-letter; code (`os.environ[...]`, `${VAR}`, `<your-key>`,
    `****`, `changeme`) is never a secret.
    """

    default_name = "secret"
    _TOKEN = (
        r"sk-(?:proj-|ant-(?:api[0-9]{2}-)?|svcacct-|admin-)?[A-Za-z0-9_-]{20,200}"  # OpenAI / Anthropic
        r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,200}|whsec_[A-Za-z0-9+/=]{20,200}"  # Stripe (+ webhooks)
        r"|gh[pousr]_[A-Za-z0-9]{30,200}|github_pat_[A-Za-z0-9_]{30,255}|glpat-[A-Za-z0-9_-]{20,200}"
        r"|xox[abposre]-[A-Za-z0-9-]{10,200}|xapp-[0-9]-[A-Za-z0-9-]{10,200}"  # Slack
        r"|AIza[0-9A-Za-z_-]{35}|ya29\.[0-9A-Za-z_-]{20,300}"  # Google
        r"|hf_[A-Za-z0-9]{30,200}|npm_[A-Za-z0-9]{30,200}|pypi-[A-Za-z0-9_-]{50,300}"
        r"|SG\.[A-Za-z0-9_-]{16,100}\.[A-Za-z0-9_-]{16,100}"  # SendGrid
        r"|sh(?:pat|pss|pca|ppa)_[a-fA-F0-9]{32}|dop_v1_[a-f0-9]{64}|sq0(?:atp|csp)-[0-9A-Za-z_-]{22,60}"
        r"|SK[0-9a-fA-F]{32}|[0-9a-f]{32}-us[0-9]{1,2}"  # Twilio, Mailchimp
        r"|[MNO][A-Za-z0-9_-]{23,25}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,38}"  # Discord bot
        r"|eyJ[A-Za-z0-9_-]{8,1000}\.eyJ[A-Za-z0-9_-]{8,2000}\.[A-Za-z0-9_-]{8,1000}"  # JWT
    )
    _TOKENS = compile_re2(_TOKEN)
    _AWS_ID = compile_re2(r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA|APKA)[A-Z0-9]{16}")
    _TELEGRAM = compile_re2(r"[0-9]{8,10}:AA[A-Za-z0-9_-]{33}")
    _SLACK_HOOK = compile_re2(r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]{20,200}")
    _PEM = compile_re2(
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----[^A-Za-z0-9+/]{0,200}(?:[A-Za-z0-9-]{1,40}: "
        r"[^\n]{0,200}\n){0,6}\s{0,4}[A-Za-z0-9+/]{16}"
    )
    _AUTH = compile_re2(
        r"(?i)(?:authori[sz]ation|proxy-authorization)[\"']?\s{0,3}[:=]\s{0,3}[\"']?"
        r"(bearer|token|basic|digest|apikey|api-key|key|sso-key|otp)?\s{0,3}([A-Za-z0-9._~+/=:-]{8,500})"
    )
    _BEARER = compile_re2(r"(?i)\b(?:bearer|token)\s{1,3}([A-Za-z0-9._~+/=-]{16,500})")
    _URL_CREDS = compile_re2(r"(?i)[a-z][a-z0-9+.-]{0,20}://([^\s:/@\[\]]{1,100}):([^\s/@\[\]]{1,200})@[^\s/]")
    _BARE_40 = compile_re2(r"[A-Za-z0-9/+]{40}")
    _CODE_VALUE = compile_re2(
        r"^(?:[$<{%@]|.{0,200}[(\[{]|[A-Za-z_][A-Za-z0-9_]{0,80}(?:\.[A-Za-z_][A-Za-z0-9_]{0,80}){1,8}$"
        r"|(?i:(?:x{3,200}|\*{1,200}|\.{1,200}|changeme|null|none|true|false|undefined|nil)$|your[_-].{0,200}"
        r"|redacted.{0,200}))"
    )
    _WORDY = compile_re2(r"[A-Za-z]{1,60}[0-9]{0,2}(?:[_.-](?:[A-Za-z]{1,60}[0-9]{0,2}|[0-9]{1,4})){1,12}")

    def __init__(
        self,
        name: str | None = None,
        min_value_length: int = 12,
        min_entropy_bits: float = 3.0,
        min_password_length: int = 6,
        min_token_entropy_bits: float = 3.0,
        min_bare_key_entropy_bits: float = 4.2,
        password_words: Sequence[str] = PASSWORD_WORDS,
        secret_words: Sequence[str] = SECRET_WORDS,
        max_candidates: int = 1000,
    ) -> None:
        super().__init__(name, max_candidates)
        self.min_value_length = min_value_length
        self.min_entropy_bits = min_entropy_bits
        self.min_password_length = min_password_length
        self.min_token_entropy_bits = min_token_entropy_bits
        self.min_bare_key_entropy_bits = min_bare_key_entropy_bits
        names = alternation(list(password_words) + list(secret_words))
        self._password_key = compile_re2("(?i)" + alternation(password_words))
        # key name (any prefix/suffix: OPENAI_API_KEY, db_password, API-Schlüssel), optional "for the db",
        # then := => == = : or " is/ist/est/es/é " and the value
        self._assign = compile_re2(
            rf"(?i)([A-Za-z0-9_.-]{{0,40}}{names}[A-Za-z0-9_-]{{0,40}})[\"']?"
            r"(?:\s{1,3}(?:for|of|to|on|für|pour|de|del|para|per)\s{1,3}(?:the\s{1,3}|my\s{1,3}|our\s{1,3}|"
            r"die\s{1,3}|der\s{1,3}|das\s{1,3}|la\s{1,3}|le\s{1,3}|el\s{1,3})?[A-Za-z0-9_.-]{1,40})?"
            r"(\s{0,3}(?::=|=>|==|=|:)\s{0,3}|\s{1,3}(?:is|was|ist|est|es|é|è|=|это)\s{1,3})"
            r"(?:b|r|f)?[\"'`]?([^\s\"'`,;)\]}]{1,200})"
        )

    @staticmethod
    def _mixed(v: str) -> bool:
        return any(c.isdigit() for c in v) and any(c.isalpha() for c in v)

    def _code(self, v: str) -> bool:
        return self._CODE_VALUE.search(v.encode("utf-8", "surrogatepass")) is not None

    def _random_value(self, v: str) -> bool:
        return (
            len(v) >= self.min_value_length
            and self._mixed(v)
            and self._WORDY.fullmatch(v.encode("utf-8")) is None
            and shannon_entropy(v) >= self.min_entropy_bits
            and not self._code(v)
        )

    def _password_value(self, v: str) -> bool:
        return (
            len(v) >= self.min_password_length
            and any(c.isalpha() for c in v)
            and any(not c.isalpha() for c in v)
            and not self._code(v)
        )

    def find_bytes(self, nt: NormText) -> list[tuple[int, int]]:
        data, spans = nt.data, []
        budget = [self.max_candidates]

        def each(pattern: Any) -> Iterator[Any]:
            for m in pattern.finditer(data):
                budget[0] -= 1
                if budget[0] < 0:
                    spans.append((m.start(), len(data)))
                    return
                yield m

        def boundary(s: int) -> bool:
            return s == 0 or not (_IS_ALNUM[data[s - 1]] or data[s - 1] in b"_-")

        spans += [m.span() for m in each(self._PEM)]
        spans += [m.span() for m in each(self._SLACK_HOOK)]
        for m in each(self._TOKENS):
            v = m.group().decode()
            if boundary(m.start()) and self._mixed(v) and shannon_entropy(v) >= self.min_token_entropy_bits:
                spans.append(m.span())
        for m in each(self._AWS_ID):  # may be all letters (AKIAIOSFODNNEXAMPLE...): entropy of the 16 chars
            if boundary(m.start()) and shannon_entropy(m.group()[4:].decode()) >= self.min_token_entropy_bits:
                spans.append(m.span())
        for m in each(self._TELEGRAM):
            if boundary(m.start()):
                spans.append(m.span())
        for m in each(self._AUTH):
            scheme, v = (m.group(1) or b"").decode().lower(), m.group(2).decode()
            if (scheme == "basic" and not self._code(v)) or self._random_value(v) or (
                scheme and self._password_value(v) and self._mixed(v) and len(v) >= self.min_value_length
            ):
                spans.append(m.span(2))
        for m in each(self._BEARER):
            if self._random_value(m.group(1).decode()):
                spans.append(m.span(1))
        for m in each(self._URL_CREDS):
            if self._password_value(m.group(2).decode("utf-8", "replace")):
                spans.append((m.start(1), m.end(2)))
        for m in each(self._BARE_40):
            s, e = m.span()
            v = m.group().decode()
            if (
                boundary(s) and (e == len(data) or not (_IS_ALNUM[data[e]] or data[e] in b"/+="))
                and any(c.isupper() for c in v) and any(c.islower() for c in v)
                and any(c.isdigit() or c in "/+" for c in v)
                and shannon_entropy(v) >= self.min_bare_key_entropy_bits
            ):
                spans.append((s, e))
        for m in each(self._assign):
            key, sep = m.group(1).decode("utf-8", "replace"), m.group(2).decode("utf-8", "replace").strip()
            v = m.group(3).decode("utf-8", "replace")
            natural = sep not in (":=", "=>", "==", "=", ":")
            is_password = self._password_key.search(m.group(1)) is not None
            ok = self._random_value(v) or (is_password and not natural and self._password_value(v))
            if is_password and natural:  # "my password is wrong": prose must look random, not like a word
                ok = ok or (self._password_value(v) and self._mixed(v))
            if ok and not (key.lower() in ("pass", "pw", "key") and not self._mixed(v)):
                spans.append(m.span(3))
        return spans
