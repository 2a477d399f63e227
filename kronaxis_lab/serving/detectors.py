"""Sensitive-data detection that format tricks cannot bypass, in linear time (issue 11).

    from kronaxis_lab.serving.detectors import BodyScanner
    scanner = BodyScanner(policy)        # a GovernancePolicy (configs/governance/default.yaml) or its detectors
    scanner.classes(body)                # {"credit_card", "email"}: every class found in a request body
    scanner.count(body)                  # {"credit_card": 1, "email": 2} (safe to log: no values)

Three stages, each linear in the size of the body:

1. **What is scanned** (`body_leaves`, `body_texts`): every dict key, string and number (as decimal text) of the
   forwarded JSON body — messages, roles, names, tool descriptions and parameters, response_format schemas,
   `user`, `metadata`, `stop`, the legacy `prompt` — walked iteratively; a dict entry is scanned as
   "key: value", so a key gives its value context ({"ssn": 123456789}). A string holding JSON with escapes
   (tool-call arguments) is decoded and walked too. Besides all leaves apart (`SEP` between), two small views
   of the seams between consecutive string values catch a value split over messages or fields: the end of one
   value + the start of the next ("4111 1111" + "1111 1111", "password:" + "Maple3975!"), and their digit
   runs (a card split with words around); findings there count only across a seam (`BodyTexts`).
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
match W), each `finditer` step re-reads at most W bytes past the previous match: O(n·W); patterns start with a
literal or a single character class (an "@", a prefix such as "sk-"), never with a counted run of a broad
class, which keeps RE2's DFA small on random text (base64). numpy passes are O(n). Python-level work per
text is bounded by `max_candidates` per detector: a text carrying more candidate-shaped values than that is
reported as carrying the class (fail closed: the first unexamined candidate counts as a match), so a flood of
decoys can neither slow the router nor hide a value behind them.

Not caught (stated, not hidden): values spelled out in words ("four one one one"), encoded (base64, ROT13,
HTML entities other than %40), homoglyph letters inside key names (Cyrillic "раssword"), and digit groups that
are glued to *other digits* (a card inside a longer digit run is ambiguous by construction).
"""

from __future__ import annotations

import contextlib
import functools
import json
import string
import threading
import unicodedata
from abc import abstractmethod
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Mapping, Sequence

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


def is_combining_mark(ch: str) -> bool:
    """A combining mark (Mn/Me): `normalise` deletes it on an ASCII base (or at the start of the text)."""
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
        mark[c] = len(out) == 1 and out == ch and is_combining_mark(ch)
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
    memo: dict = field(default_factory=dict, compare=False, repr=False)  # per-text results shared by detectors

    def chains(self, sep: np.ndarray, max_gap: int) -> "Chains":
        """Digit chains (cached: the card, phone and SSN detectors share them)."""
        key = (id(sep), max_gap)
        if key not in self.memo:
            if "groups" not in self.memo:
                self.memo["groups"] = digit_groups(self.arr)
            self.memo[key] = digit_chains(self.arr, sep, max_gap, self.memo["groups"])
        return self.memo[key]

    @functools.cached_property
    def arr(self) -> np.ndarray:
        return np.frombuffer(self.data, np.uint8)

    @functools.cached_property
    def n_digits(self) -> int:
        return len(self.data) - len(self.data.translate(None, b"0123456789"))

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
        origin = np.repeat(np.arange(n, dtype=np.int32), lens)
    if out.size >= 3:
        pct = np.flatnonzero((out[:-2] == 0x25) & (out[1:-1] == 0x34) & (out[2:] == 0x30))  # "%40" → "@"
        if pct.size:
            out = out.copy()
            out[pct] = 0x40
            keep = np.ones(out.size, bool)
            keep[pct + 1] = keep[pct + 2] = False
            out = out[keep]
            origin = (np.arange(n, dtype=np.int32) if origin is None else origin)[keep]
    if origin is not None:
        origin = np.append(origin, np.int32(n))
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
        if len(text) <= self.max_chars:
            with self._lock:
                if text not in self._d:
                    self._d[text] = nt
                    self.chars += len(text)
                while self.chars > self.max_chars and len(self._d) > 1:
                    old, _ = self._d.popitem(last=False)
                    self.chars -= len(old)
        return nt


_CACHE = _NormCache()
_PINNED = threading.local()


@contextlib.contextmanager
def pinned(texts: Sequence[str], already_normalised: bool = False) -> Iterator[None]:
    """Within the block, `texts` are normalised once for all detectors whatever their number and size (the LRU
    alone would thrash on a batch larger than it); `already_normalised`: take them as they are."""
    outer = getattr(_PINNED, "texts", None)
    views = {t: as_normalised(t) if already_normalised else normalised(t) for t in texts}
    _PINNED.texts = {**(outer or {}), **views}
    try:
        yield
    finally:
        _PINNED.texts = outer


def as_normalised(text: str) -> NormText:
    """The view of a text that is the output of `normalise` already."""
    return NormText(text, text.encode("utf-8", "surrogatepass"), None)


def normalised(text: str) -> NormText:
    """`normalise` with the byte view the detectors scan (cached: a policy's detectors share it)."""
    held = getattr(_PINNED, "texts", None)
    if held is not None:
        hit = held.get(text)
        if hit is not None:
            return hit
    return _CACHE.get(text)


def normalise(text: str) -> tuple[str, np.ndarray | None]:
    """(normalised text, origin): see the module docstring; `origin` maps normalised positions back (None = same)."""
    nt = normalised(text)
    return nt.text, nt.origin


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.encoding = re2.Options.Encoding.LATIN1  # bytes of UTF-8: [\x80-\xff] = part of a non-ASCII char
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.max_mem = 64 << 20

PATTERNS: dict[str, None] = {}  # every pattern the detectors compiled (tests check they repeat only with bounds)


def compile_re2(pattern: str) -> Any:
    """Compile for the detectors' byte view; non-ASCII literals are written as their UTF-8 bytes (`lit`)."""
    PATTERNS[pattern] = None
    try:
        return re2.compile(pattern.encode("latin-1"), _RE2_OPTIONS)
    except re2.error as exc:
        raise GovernanceConfigError(f"detectors: bad pattern {pattern[:60]!r}: {exc}") from exc


def lit(word: str) -> str:
    """A literal (any script) as a Latin-1 pattern matching its UTF-8 bytes; a space matches 1–3 spaces."""
    out = []
    for b in word.encode("utf-8"):
        ch = chr(b)
        out.append(r"\s{1,3}" if ch == " " else (ch if ch.isascii() and ch.isalnum() else f"\\x{b:02x}"))
    return "".join(out)


def alternation(words: Sequence[str], whole_word_below: int = 5) -> str:
    """Keywords as one group; ASCII words shorter than `whole_word_below` match as whole words only
    ("tel" not in "hotel", "dial" not in "dialog"); longer ones also inside compounds (Telefonnummer)."""
    parts = []
    for w in sorted(set(words), key=len, reverse=True):
        p = lit(w)
        if w.isascii() and len(w) < whole_word_below:
            p = (r"\b" if w[0].isalnum() else "") + p + (r"\b" if w[-1].isalnum() else "")
        parts.append(p)
    return "(?:" + "|".join(parts) + ")"


def _lut(chars: str) -> np.ndarray:
    t = np.zeros(256, bool)
    t[list(chars.encode("ascii"))] = True
    return t


def chain_pattern(sep: np.ndarray, max_gap: int, n_digits: int) -> Any:
    """RE2 for "a digit chain (`digit_chains(arr, sep, max_gap)`) holds ≥ `n_digits` digits": that many digits,
    each pair apart by ≤ max_gap separator bytes. One search is the cheap, exact pre-test of the detectors that
    only look at chains that long (a numpy chain analysis costs about 20 RE2 searches)."""
    cls = "".join(f"\\x{b:02x}" for b in np.flatnonzero(sep))
    step = f"[0-9][{cls}]{{0,{max_gap}}}" if cls and max_gap else "[0-9]"
    return compile_re2(f"(?:{step}){{{n_digits - 1}}}[0-9]")


_IS_DIGIT = _lut("0123456789")
_IS_ALNUM = _lut("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
NO_SEP = np.zeros(256, bool)


@dataclass(frozen=True)
class Chains:
    """Digit groups (maximal runs of ASCII digits) of a byte array; groups joined by ≤ max_gap separator bytes
    form a chain. Per group: g_start, g_end (byte positions, end exclusive), g_chain; per chain: c_first,
    c_last (group indices). Arrays are per group, not per digit, so a megabyte of digits is one group.
    """

    g_start: np.ndarray
    g_end: np.ndarray
    g_chain: np.ndarray
    c_first: np.ndarray
    c_last: np.ndarray

    @property
    def g_len(self) -> np.ndarray:
        return self.g_end - self.g_start

    @functools.cached_property
    def digits_before(self) -> np.ndarray:
        """Digits in groups 0..k-1 (G + 1 entries)."""
        return np.concatenate([[0], np.cumsum(self.g_len)])

    @property
    def c_digits(self) -> np.ndarray:
        return self.digits_before[self.c_last + 1] - self.digits_before[self.c_first]

    @property
    def c_start(self) -> np.ndarray:
        return self.g_start[self.c_first]

    @property
    def c_end(self) -> np.ndarray:
        return self.g_end[self.c_last]


def digit_groups(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) byte positions of the maximal runs of ASCII digits."""
    isd = np.zeros(arr.size + 2, np.int8)
    isd[1:-1] = _IS_DIGIT[arr]
    edge = np.diff(isd)
    return np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)


def digit_chains(arr: np.ndarray, sep: np.ndarray, max_gap: int,
                 groups: tuple[np.ndarray, np.ndarray] | None = None) -> Chains:
    g_start, g_end = digit_groups(arr) if groups is None else groups
    G = g_start.size
    if G > 1:
        gap = g_start[1:] - g_end[:-1]
        linked = gap <= max_gap
        near = np.flatnonzero(linked)
        if near.size > arr.size // 16:  # many short gaps: count separators with one prefix sum
            sepcum = np.concatenate([[0], np.cumsum(sep[arr], dtype=np.int32)])
            linked[near] = sepcum[g_start[1:][near]] - sepcum[g_end[near]] == gap[near]
        elif near.size:  # every byte of a short gap must be a separator
            first, size, ok = g_end[near], gap[near], np.ones(near.size, bool)
            for j in range(max_gap):
                ok &= (size <= j) | sep[arr[np.minimum(first + j, arr.size - 1)]]
            linked[near] = ok
    else:
        linked = np.zeros(0, bool)
    new_chain = np.concatenate([[True], ~linked]) if G else np.zeros(0, bool)
    g_chain = np.cumsum(new_chain) - 1
    c_first = np.flatnonzero(new_chain)
    c_last = np.append(c_first[1:] - 1, G - 1) if G else c_first
    return Chains(g_start, g_end, g_chain, c_first, c_last)


def _gather(arr: np.ndarray, anchors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """rows[i, j] = arr[anchors[i] + offsets[j]], 0 outside the text."""
    padded = np.concatenate([np.zeros(len(offsets), np.uint8), arr, np.zeros(len(offsets), np.uint8)])
    idx = (anchors.astype(np.int32) + len(offsets))[:, None] + offsets.astype(np.int32)[None, :]
    return padded[idx]


def _scan_rows(rows: np.ndarray, pattern: Any, max_matches: int) -> Iterator[tuple[int, int, int]]:
    """RE2 over all rows at once (NUL-separated): (row, start, end) of each keyword hit, in row order; past
    `max_matches` hits, (row, -1, -1) once for the row where it stopped."""
    width = rows.shape[1]
    buf = np.concatenate([rows, np.zeros((rows.shape[0], 1), np.uint8)], 1).tobytes()
    for n, m in enumerate(pattern.finditer(buf)):
        r = m.start() // (width + 1)
        if n >= max_matches:
            yield r, -1, -1
            return
        yield r, m.start() - r * (width + 1), m.end() - r * (width + 1)


def _keyword_hits(data: bytes, pattern: Any, max_matches: int) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(starts, ends) of keyword matches in the whole text, and where it stopped after `max_matches`."""
    starts, ends, stop = [], [], None
    for n, m in enumerate(pattern.finditer(data)):
        if n >= max_matches:
            stop = m.start()
            break
        starts.append(m.start())
        ends.append(m.end())
    return np.asarray(starts, np.int64), np.asarray(ends, np.int64), stop


def keyword_before(arr: np.ndarray, starts: np.ndarray, pattern: Any, window: int, max_matches: int) -> np.ndarray:
    """Per start byte: a keyword ends within `window` bytes before it, with no digit in between.

    Few starts: their windows are gathered into one buffer (numpy) for one RE2 pass; many: one RE2 pass over the
    whole text. Either way no Python per number, and past `max_matches` keyword hits the remaining starts count
    as preceded (fail closed: they go on to validation, which is capped).
    """
    ok = np.zeros(starts.size, bool)
    if starts.size == 0:
        return ok
    width = window + 48  # room for the keyword itself
    if starts.size * width > arr.size:
        _, ends, stop = _keyword_hits(arr.tobytes(), pattern, max_matches)
        digits = np.concatenate([[0], np.cumsum(_IS_DIGIT[arr], dtype=np.int32)])
        i = np.searchsorted(ends, starts, "right") - 1  # the last keyword ending at or before each start
        end = ends[np.maximum(i, 0)] if ends.size else np.zeros(starts.size, np.int64)
        ok = (i >= 0) & (starts - end <= window) & (digits[starts] - digits[end] == 0)
        return ok | (starts >= stop) if stop is not None else ok
    rows = _gather(arr, starts, np.arange(-width, 0))
    isd = _IS_DIGIT[rows]
    last_digit = np.where(isd.any(1), width - 1 - np.argmax(isd[:, ::-1], 1), -1)
    for r, _, end in _scan_rows(rows, pattern, max_matches):
        if end < 0:
            ok[r:] = True
        elif width - end <= window and last_digit[r] < end:
            ok[r] = True
    return ok


def keyword_after(arr: np.ndarray, ends: np.ndarray, pattern: Any, window: int, max_matches: int) -> np.ndarray:
    """Per end byte: a keyword starts within `window` bytes after it, with no digit in between."""
    ok = np.zeros(ends.size, bool)
    if ends.size == 0:
        return ok
    width = window + 48
    if ends.size * width > arr.size:
        kstarts, _, stop = _keyword_hits(arr.tobytes(), pattern, max_matches)
        digits = np.concatenate([[0], np.cumsum(_IS_DIGIT[arr], dtype=np.int32)])
        i = np.searchsorted(kstarts, ends, "left")  # the first keyword starting at or after each end
        start = kstarts[np.minimum(i, kstarts.size - 1)] if kstarts.size else np.zeros(ends.size, np.int64)
        ok = (i < kstarts.size) & (start - ends <= window) & (digits[np.minimum(start, arr.size)] - digits[ends] == 0)
        return ok | (ends >= stop) if stop is not None else ok
    rows = _gather(arr, ends, np.arange(width))
    isd = _IS_DIGIT[rows]
    first_digit = np.where(isd.any(1), np.argmax(isd, 1), width)
    for r, start, _ in _scan_rows(rows, pattern, max_matches):
        if start < 0:
            ok[r:] = True
        elif start <= window and first_digit[r] >= start:
            ok[r] = True
    return ok


class NormalisingDetector(Detector):
    """A detector that scans the normalised byte view (`find_bytes`) and reports spans of the original text.

    `max_candidates` bounds the Python-level validations per text; past it the first unexamined candidate is
    reported as a match (fail closed, see the module docstring). At most `max_spans` spans are returned per
    text (the first ones): counts saturate there, and `redact` is not complete past it.
    """

    def __init__(self, name: str | None = None, max_candidates: int = 1000, max_spans: int = 64) -> None:
        super().__init__(name)
        if max_candidates < 1 or max_spans < 1:
            raise GovernanceConfigError(f"{type(self).__name__}: max_candidates and max_spans must be ≥ 1, got "
                                        f"{max_candidates}, {max_spans}")
        self.max_candidates = max_candidates
        self.max_spans = max_spans

    def find(self, text: str) -> list[tuple[int, int]]:
        nt = normalised(text)
        spans = self.find_bytes(nt)
        if len(spans) > self.max_spans:  # the class is found; more spans only cost the policy's overlap merge
            spans = sorted(spans)[: self.max_spans]
        return nt.spans(spans)

    @abstractmethod
    def find_bytes(self, nt: NormText) -> list[tuple[int, int]]:
        """(start, end) byte spans in `nt.data`."""

    def _capped(self, pattern: Any, data: bytes, spans: list[tuple[int, int]]) -> Iterator[Any]:
        """`pattern.finditer(data)`, stopping after `max_candidates` matches; the next one is appended as a span."""
        for k, m in enumerate(pattern.finditer(data)):
            if len(spans) > self.max_spans:  # found, and spans are capped anyway: stop early
                return
            if k >= self.max_candidates:
                spans.append(m.span())
                return
            yield m


# --------------------------------------------------------------------------------------------------
# Payment cards
# --------------------------------------------------------------------------------------------------
CARD_SEP = _lut(" \t\r\n\x0b\x0c-._/\\',")
CARD_KEYWORDS = (
    "card", "cc", "visa", "mastercard", "maestro", "amex", "credit", "debit", "pan", "karte", "kreditkarte",
    "carte", "tarjeta", "cartão", "cartao", "carta", "kaart", "kort", "karta", "kartu", "kart", "карта", "карты",
    "カード", "卡", "신용카드", "بطاقة", "כרטיס", "checkout", "payment", "pay with", "zahlung", "bezahl",
    "paiement", "pago", "pagamento", "оплат", "支付", "決済", "expiry", "exp", "cvv", "cvc",
)
_LUHN_DOUBLE = np.array([0, 2, 4, 6, 8, 1, 3, 5, 7, 9], np.int64)
_CHUNK = 4096  # card windows validated per numpy batch
# card-network prefix test for every 4-digit prefix 0000-9999 (governance.CARD_IIN_RANGES)
_IIN_BY_PREFIX = np.array([any(lo <= f"{p:04d}"[: len(lo)] <= hi for lo, hi in CARD_IIN_RANGES) for p in range(10000)])


class CardDetector(NormalisingDetector):
    """Payment card numbers: 13–19 digits, Luhn-valid, known card-network prefix (governance.CARD_IIN_RANGES).

    Candidates: every digit chain of 13–19 digits in any grouping, and inside longer chains every group of
    13–19 digits and the windows in a printed card layout (4-4-4-4[-3], 4-4-4-1..5, 4-6-4, 4-6-5), so
    "4111 1111 1111 1111 12/27" yields the card without the expiry and "ref 1 4111-1111-1111-1111" without
    the 1, while "112-4567890-1234567" (an order number) yields nothing. A chain of two groups split by one
    "." or "," is a decimal number, not a card. A number shorter than `min_digits_without_context` (13 digits:
    mostly EAN-13 barcodes) needs a card or payment keyword within `context_window` bytes before or after it.
    Vectorised over all windows at once: Luhn sums from prefix sums by digit parity.
    """

    default_name = "credit_card"

    def __init__(self, name: str | None = None, require_known_iin: bool = True, max_separator_run: int = 4,
                 min_digits_without_context: int = 14, context_window: int = 40,
                 keywords: Sequence[str] = CARD_KEYWORDS, max_candidates: int = 1000) -> None:
        super().__init__(name, max_candidates)
        self.require_known_iin = require_known_iin
        self.max_separator_run = max_separator_run
        self.min_digits_without_context = min_digits_without_context
        self.context_window = context_window
        self._kw = compile_re2("(?i)" + alternation(keywords))
        self._long_chain = chain_pattern(CARD_SEP, max_separator_run, 13)  # every candidate window needs one

    def may_match(self, nt: NormText) -> bool:
        """False only where `find_bytes` finds nothing: no chain of ≥ 13 digits."""
        return nt.n_digits >= 13 and self._long_chain.search(nt.data) is not None

    def _windows(self, arr: np.ndarray, ch: Chains) -> tuple[np.ndarray, np.ndarray]:
        """(first group, last group) of every candidate window."""
        G = ch.g_start.size
        g = ch.g_len
        nd = ch.c_digits
        whole = np.flatnonzero((nd >= 13) & (nd <= 19))
        two = whole[ch.c_last[whole] == ch.c_first[whole] + 1]
        if two.size:  # "3.1415926535897932": a decimal number
            k = ch.c_first[two]
            one_sep = ch.g_start[k + 1] - ch.g_end[k] == 1
            decimal = one_sep & np.isin(arr[ch.g_end[k]], np.frombuffer(b".,", np.uint8))
            whole = np.setdiff1d(whole, two[decimal])
        ks, es = [ch.c_first[whole]], [ch.c_last[whole]]
        # inside longer chains: one group of 13-19 digits, or a printed layout 4-4-...-4-r (r ≤ 5), 4-6-4, 4-6-5
        single = np.flatnonzero((g >= 13) & (g <= 19))
        ks.append(single)
        es.append(single)
        idx = np.flatnonzero(g == 4)  # layouts start with a group of four
        not4 = np.concatenate([[0], np.cumsum(g != 4)])
        for n in range(2, 5):  # n groups of four, then a last group
            e = np.minimum(idx + n, G - 1)
            ok = (idx + n < G) & (ch.g_chain[e] == ch.g_chain[idx]) & (not4[e] - not4[idx] == 0) & (g[e] <= 5)
            ok &= (4 * n + g[e] >= 13) & (4 * n + g[e] <= 19)
            ks.append(idx[ok])
            es.append(e[ok])
        e = np.minimum(idx + 2, G - 1)
        ok = (idx + 2 < G) & (ch.g_chain[e] == ch.g_chain[idx]) & (g[np.minimum(idx + 1, G - 1)] == 6)
        ok &= (g[e] == 4) | (g[e] == 5)
        ks.append(idx[ok])
        es.append(e[ok])
        return np.concatenate(ks), np.concatenate(es)

    def find_bytes(self, nt: NormText) -> list[tuple[int, int]]:
        if not self.may_match(nt):
            return []
        arr = nt.arr
        ch = nt.chains(CARD_SEP, self.max_separator_run)
        k, e = self._windows(arr, ch)
        if k.size == 0:
            return []
        spans: list[tuple[int, int]] = []
        for c in range(0, k.size, _CHUNK):  # a card flood stops after the first chunk: spans are capped anyway
            spans += self._valid_windows(arr, ch, k[c : c + _CHUNK], e[c : c + _CHUNK])
            if len(spans) > self.max_spans:
                break
        return spans

    def _valid_windows(self, arr: np.ndarray, ch: Chains, k: np.ndarray, e: np.ndarray) -> list[tuple[int, int]]:
        # per-digit arrays over the groups these windows use (cost ∝ windows, never the digit runs none uses)
        cnt = e - k + 1
        used = np.unique(np.repeat(k, cnt) + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)))
        lens = ch.g_len[used]
        firsts = np.cumsum(lens) - lens  # index of each used group's first digit
        pos = np.repeat(ch.g_start[used] - firsts, lens) + np.arange(int(lens.sum()))
        v = arr[pos].astype(np.int64) - 48
        s = firsts[np.searchsorted(used, k)]  # first and last digit of each window
        t = firsts[np.searchsorted(used, e)] + ch.g_len[e] - 1
        n = t - s + 1
        # Luhn from prefix sums by parity: counting from the last digit, every second digit is doubled
        par = np.arange(v.size) % 2
        plain = [np.concatenate([[0], np.cumsum(np.where(par == p, v, 0))]) for p in (0, 1)]
        dbl = [np.concatenate([[0], np.cumsum(np.where(par == p, _LUHN_DOUBLE[v], 0))]) for p in (0, 1)]
        odd = t % 2 == 1
        total = np.where(odd, plain[1][t + 1] - plain[1][s], plain[0][t + 1] - plain[0][s]) + np.where(
            odd, dbl[0][t + 1] - dbl[0][s], dbl[1][t + 1] - dbl[1][s])
        valid = total % 10 == 0
        if self.require_known_iin:
            valid &= _IIN_BY_PREFIX[v[s] * 1000 + v[s + 1] * 100 + v[s + 2] * 10 + v[s + 3]]
        start, end = ch.g_start[k], ch.g_end[e]
        short = valid & (n < self.min_digits_without_context)
        if short.any():  # 13 digits: mostly EAN-13 barcodes (13-digit cards are nearly extinct) unless said so
            i = np.flatnonzero(short)
            cap = 4 * self.max_candidates
            valid[i] = keyword_before(arr, start[i], self._kw, self.context_window, cap) | keyword_after(
                arr, end[i], self._kw, self.context_window, cap)
        hit = np.flatnonzero(valid)[: self.max_spans + 1]
        return [(int(a), int(b)) for a, b in zip(start[hit], end[hit])]


# --------------------------------------------------------------------------------------------------
# IBAN
# --------------------------------------------------------------------------------------------------
class IbanDetector(NormalisingDetector):
    """IBANs in any case, compact or grouped by spaces, dashes, dots, underscores or slashes (NBSP and en-dashes
    fold to these), validated by python-stdnum (country length, ISO 7064 mod 97-10, the country's BBAN format;
    not its bank registries, which lag behind new banks). After an invalid candidate the search resumes one
    character later, so a decoy cannot swallow a real IBAN."""

    default_name = "iban"

    def __init__(self, name: str | None = None, max_candidates: int = 256) -> None:
        super().__init__(name, max_candidates)  # a stdnum check costs ~15 µs: 256 bound a text to ~4 ms

    _CAND = compile_re2(
        r"(?:^|[^A-Za-z0-9+/=])((?i:" + "|".join(sorted(IBAN_LENGTHS)) + r")[0-9]{2}(?:[ ._/-]{0,2}[A-Za-z0-9]){10,30})"
    )

    def find_bytes(self, nt: NormText) -> list[tuple[int, int]]:
        data, spans, pos, tried = nt.data, [], 0, 0
        while True:
            m = self._CAND.search(data, pos)
            if m is None:
                return spans
            tried += 1
            s = m.start(1)
            if tried > self.max_candidates:
                spans.append((s, m.end(1)))
                return spans
            end = self._valid_end(data, s, m.end(1))
            if end is None:
                pos = s + 1
            else:
                spans.append((s, end))
                pos = end
                if len(spans) > self.max_spans:
                    return spans

    @staticmethod
    def _valid_end(data: bytes, s: int, e: int) -> int | None:
        length = IBAN_LENGTHS[data[s : s + 2].decode("ascii").upper()]
        chars, i = [], s
        while i < e and len(chars) < length:
            if _IS_ALNUM[data[i]]:
                chars.append(chr(data[i]))
            i += 1
        compact = "".join(chars).upper()
        return i if len(compact) == length and stdnum_iban.is_valid(compact, check_country=False) else None


# --------------------------------------------------------------------------------------------------
# US SSN, UK National Insurance number
# --------------------------------------------------------------------------------------------------
SSN_KEYWORDS = (
    "ssn", "ss#", "ss no", "ssnum", "social security", "social sec", "soc sec", "my social",
    "sozialversicherungsnummer", "sécurité sociale", "seguro social", "seguridad social",
)


class SsnDetector(NormalisingDetector):
    """US Social Security numbers: AAA-GG-SSSS with one uniform separator (dash, space, dot, slash, underscore;
    en-dashes fold to dashes); mixed separators or 9 bare digits only after an SSN keyword (within
    `context_window` bytes, no digit between); SSA rules (governance.ssn_valid)."""

    default_name = "ssn"
    _SEPARATED = compile_re2(r"([0-9]{3})([ ._/-]{1,2})([0-9]{2})([ ._/-]{1,2})([0-9]{4})")
    _NINE = compile_re2(r"[0-9]{9}")  # the bare form needs a run of nine

    def __init__(self, name: str | None = None, context_window: int = 25, keywords: Sequence[str] = SSN_KEYWORDS,
                 max_candidates: int = 1000) -> None:
        super().__init__(name, max_candidates)
        self.context_window = context_window
        self._kw = compile_re2("(?i)" + alternation(keywords))

    def _after_keyword(self, nt: NormText, starts: Sequence[int]) -> np.ndarray:
        return keyword_before(nt.arr, np.asarray(starts, np.int64), self._kw, self.context_window,
                              4 * self.max_candidates)

    def find_bytes(self, nt: NormText) -> list[tuple[int, int]]:
        data, arr, spans = nt.data, nt.arr, []
        if nt.n_digits < 9:
            return []
        mixed = []
        for m in self._capped(self._SEPARATED, data, spans):
            s, e = m.span()
            before, after = data[max(0, s - 2) : s], data[e : e + 2]
            if (before and _IS_ALNUM[before[-1]]) or (after and _IS_ALNUM[after[0]]):
                continue  # glued to a longer number or word
            if (len(before) == 2 and before[1] in b" .-/_" and _IS_DIGIT[before[0]]) or (
                len(after) == 2 and after[0] in b" .-/_" and _IS_DIGIT[after[1]]
            ):
                continue  # part of a longer digit chain (1-123-45-6789)
            if not ssn_valid(m.group(1).decode(), m.group(3).decode(), m.group(5).decode()):
                continue
            (spans if m.group(2) == m.group(4) else mixed).append((s, e))
        if mixed:
            spans += [sp for sp, ok in zip(mixed, self._after_keyword(nt, [s for s, _ in mixed])) if ok]
        # 9 bare digits: a maximal digit run of exactly nine, not followed by a word or a dash
        if self._NINE.search(data) is None:
            return spans
        g_start, g_end = nt.chains(NO_SEP, 0).g_start, nt.chains(NO_SEP, 0).g_end
        nine = np.flatnonzero(g_end - g_start == 9)
        if nine.size:
            s = g_start[nine]
            e = s + 9
            nxt = np.where(e < arr.size, arr[np.minimum(e, arr.size - 1)], 32)
            d = arr[s[:, None] + np.arange(9)].astype(np.int64) - 48
            area, group, serial = d[:, 0] * 100 + d[:, 1] * 10 + d[:, 2], d[:, 3] * 10 + d[:, 4], d[:, 5:] @ [
                1000, 100, 10, 1]
            ok = (~_IS_ALNUM[nxt]) & (nxt != ord("-")) & (area != 0) & (area != 666) & (area < 900) & (group != 0)
            ok &= serial != 0
            if ok.any():
                cand = s[ok]
                hit = self._after_keyword(nt, cand)
                spans += [(int(a), int(a) + 9) for a in cand[hit]]
        return spans


NINO_KEYWORDS = ("national insurance", "ni number", "ni no", "nino", "n.i. number", "n.i. no", "insurance number",
                 "ni-nummer", "nin")


class NinoDetector(NormalisingDetector):
    """UK National Insurance numbers (HMRC format): two prefix letters, six digits, suffix A–D, e.g.
    AB 12 34 56 C. First letter not D F I Q U V, second not D F I O Q U V, prefixes BG GB KN NK NT TN ZZ never
    issued. Upper case with its suffix anywhere; any case, suffix optional, after an NI keyword."""

    default_name = "uk_nino"
    _CAND = compile_re2(r"(?:^|[^A-Za-z0-9])((?i:[a-z]{2})[ .-]{0,2}[0-9]{2}[ .-]{0,2}[0-9]{2}[ .-]{0,2}[0-9]{2}"
                        r"(?:[ .-]{0,2}(?i:[a-d]))?)")
    _BAD_PREFIX = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})

    def __init__(self, name: str | None = None, context_window: int = 25, keywords: Sequence[str] = NINO_KEYWORDS,
                 max_candidates: int = 1000) -> None:
        super().__init__(name, max_candidates)
        self.context_window = context_window
        self._kw = compile_re2("(?i)" + alternation(keywords))

    def find_bytes(self, nt: NormText) -> list[tuple[int, int]]:
        data, spans, loose = nt.data, [], []
        for m in self._capped(self._CAND, data, spans):
            s, e = m.span(1)
            v = m.group(1).decode()
            if e < len(data) and _IS_ALNUM[data[e]] and v[-1].isalpha():  # "AB123456 for": " f" is no suffix
                e = s + len(v.rstrip(string.ascii_letters).rstrip(" .-"))
                v = data[s:e].decode()
            p = v[:2].upper()
            if (e < len(data) and _IS_ALNUM[data[e]]) or p[0] in "DFIQUV" or p[1] in "DFIOQUV" or p in self._BAD_PREFIX:
                continue
            suffix = v[-1] if v[-1].isalpha() else ""
            (spans if v[:2].isupper() and suffix.isupper() else loose).append((s, e))
        if loose:
            hit = keyword_before(nt.arr, np.asarray([s for s, _ in loose], np.int64), self._kw, self.context_window,
                                 4 * self.max_candidates)
            spans += [sp for sp, ok in zip(loose, hit) if ok]
        return spans


# --------------------------------------------------------------------------------------------------
# E-mail
# --------------------------------------------------------------------------------------------------
_U = r"\x80-\xff"  # bytes of non-ASCII characters (internationalised local parts and domains)
_LOCAL = rf"[A-Za-z0-9._%+'{_U}-]"
_LABEL = rf"[A-Za-z0-9{_U}](?:[A-Za-z0-9{_U}-]{{0,61}}[A-Za-z0-9{_U}])?"
_TLD = rf"(?:[A-Za-z]{{2,24}}|xn--[A-Za-z0-9-]{{2,59}}|[{_U}]{{4,48}})"


_LOCAL_BYTES = (string.ascii_letters + string.digits + "._%+'-").encode() + bytes(range(0x80, 0x100))
_SPELLED_BYTES = (string.ascii_letters + string.digits + "._-").encode()


class EmailDetector(NormalisingDetector):
    """E-mail addresses, internationalised (müller@firma.de, info@bücher-shop.de, punycode), full-width ＠ and
    %40 (folded by `normalise`), and the obfuscations "jane [at] acme [dot] org" / "john dot doe at gmail dot
    com". RE2 finds the "@"/"at" and the domain after it; the local part is the run of local-part bytes before
    it (≤ 64, not ending in "."). No spaces around a bare "@" (keeps `x @ self.weight` out)."""

    default_name = "email"
    _AT = r"\s{0,3}[\[({<]\s{0,3}(?i:at)\s{0,3}[\])}>]\s{0,3}"
    _DOT = r"(?:\s{0,3}[\[({<]\s{0,3}(?i:dot)\s{0,3}[\])}>]\s{0,3}|\.)"
    _PLAIN = compile_re2(rf"@(?:{_LABEL}\.){{1,8}}{_TLD}")
    _BRACKETED = compile_re2(rf"{_AT}[A-Za-z0-9{_U}-]{{1,63}}(?:{_DOT}[A-Za-z0-9{_U}-]{{1,63}}){{1,8}}")
    _SPELLED = compile_re2(r"(?i: at [a-z0-9-]{1,63}(?: dot [a-z0-9-]{1,63}){0,4}"
                           r" dot (?:com|net|org|edu|gov|io|co|uk|de|fr|ca|au|info|me)\b)")
    _SPELLED_DOT = compile_re2(r"(?i) dot $")

    def find_bytes(self, nt: NormText) -> list[tuple[int, int]]:
        data = nt.data
        if b"@" not in data and b"at" not in data and b"AT" not in data and b"At" not in data:
            return []
        spans: list[tuple[int, int]] = []
        for pattern, spelled in ((self._PLAIN, False), (self._BRACKETED, False), (self._SPELLED, True)):
            for m in self._capped(pattern, data, spans):
                s = self._local_start(data, m.start(), spelled)
                if s is not None:
                    spans.append((s, m.end()))
        return spans

    def _local_start(self, data: bytes, at: int, spelled: bool) -> int | None:
        chunk = data[max(0, at - 64) : at]
        if spelled:  # john dot doe at ...: words joined by " dot " before the " at "
            start = at - (len(chunk) - len(chunk.rstrip(_SPELLED_BYTES)))
            for _ in range(4):
                m = self._SPELLED_DOT.search(data[max(0, start - 5) : start])
                if m is None:
                    break
                word = data[max(0, start - 5 - 64) : start - 5]
                n = len(word) - len(word.rstrip(_SPELLED_BYTES))
                if n == 0:
                    break
                start -= 5 + n
            return start if start < at else None
        local = chunk[len(chunk.rstrip(_LOCAL_BYTES)) :]
        while local.endswith(b"."):  # "assistant.@x.io" is no address; a local part never ends in a dot
            return None
        return at - len(local) if local else None


# --------------------------------------------------------------------------------------------------
# Phone numbers
# --------------------------------------------------------------------------------------------------
PHONE_SEP = _lut(" \t-./()")
PHONE_KEYWORDS = (
    # English
    "phone", "telephone", "tel", "tel.", "mobile", "cell", "cellphone", "call me", "call us", "call him",
    "call her", "call them", "call back", "text me", "sms", "whatsapp", "fax", "ring me", "reach me",
    "my number", "contact number", "landline", "hotline", "helpline", "dial",
    # German (compounds: Telefonnummer, Handynummer, Mobilnummer, Festnetznummer, Rufnummer, Faxnummer)
    "telefon", "handy", "mobil", "festnetz", "rufnummer", "faxnummer", "ruf mich an", "erreichbar unter",
    # French, Spanish, Portuguese, Italian, Dutch, Nordic, Polish
    "tél", "téléphone", "portable", "appelle-moi", "appelez", "numéro", "numero", "teléfono", "telefono",
    "móvil", "movil", "celular", "telemóvel", "cellulare", "chiamami", "llámame", "ligue", "telefoon",
    "mobiel", "bel me", "puhelin", "telefonu", "komórka",
    # other scripts
    "телефон", "тел.", "мобильный", "電話", "携帯", "电话", "手机", "전화", "휴대폰", "هاتف", "جوال", "טלפון",
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

    - international: "+CC ..." / "(+CC) ..." that libphonenumber finds possible, "00CC ..." (grouped) valid;
    - after a phone keyword (`keywords`, many languages; longer ones also inside compounds such as
      Telefonnummer, Handynummer) within `context_window` bytes, no digit between: 8–15 digits, or ddd-dddd;
    - bare national formats: North-American (ddd) ddd-dddd, ddd-ddd-dddd, ddd.ddd.dddd, 1-ddd-ddd-dddd (one
      kind of separator), and trunk-prefixed national numbers (0 + 8–11 digits, grouped, one group of ≥ 3
      digits: bare pairs "07 12 23 34 45" are as often lottery numbers) valid in one of `regions`.
    Cheap tests run vectorised over all chains first; at most `max_candidates` chains per text reach Python, and
    at most `max_national` bare national numbers per text are tried against every region (past that they count
    as phone numbers: fail closed).
    """

    default_name = "phone"
    _MAX_GAP = 3  # separator bytes between the digit groups of one number

    def __init__(self, name: str | None = None, context_window: int = 30, keywords: Sequence[str] = PHONE_KEYWORDS,
                 regions: Sequence[str] = PHONE_REGIONS, max_candidates: int = 200, max_national: int = 16) -> None:
        super().__init__(name, max_candidates)
        self.max_national = max_national
        bad = sorted(set(regions) - phonenumbers.SUPPORTED_REGIONS)
        if bad:
            raise GovernanceConfigError(f"PhoneDetector: unknown regions {bad}")
        self.context_window = context_window
        self.regions = tuple(regions)
        self._kw = compile_re2("(?i)" + alternation(keywords))
        self._long_chain = chain_pattern(PHONE_SEP, self._MAX_GAP, 7)

    def may_match(self, nt: NormText) -> bool:
        """False only where `find_bytes` finds nothing: no chain of ≥ 7 digits (every candidate is one)."""
        return nt.n_digits >= 7 and self._long_chain.search(nt.data) is not None

    def find_bytes(self, nt: NormText) -> list[tuple[int, int]]:
        arr, data = nt.arr, nt.data
        if not self.may_match(nt):
            return []
        ch = nt.chains(PHONE_SEP, self._MAX_GAP)
        nd = ch.c_digits
        cand = np.flatnonzero((nd >= 7) & (nd <= 15))
        if cand.size == 0:
            return []
        first, last, nd = ch.c_start[cand], ch.c_end[cand], nd[cand]
        groups = ch.c_last[cand] - ch.c_first[cand] + 1
        at = lambda pos: np.where(pos >= 0, arr[np.clip(pos, 0, arr.size - 1)], 0)  # noqa: E731
        # a "+" within 3 bytes before the first digit, only "(" or " " between
        plus = np.zeros(cand.size, bool)
        between_ok = np.ones(cand.size, bool)
        for j in (1, 2, 3):
            b = at(first - j)
            plus |= between_ok & (b == ord("+"))
            between_ok &= (b == ord("(")) | (b == ord(" "))
        d0, d1 = arr[first], arr[np.minimum(first + 1, arr.size - 1)]
        zero0 = d0 == ord("0")
        glued = _IS_ALNUM[at(first - 1)] | _IS_ALNUM[at(np.where(last < arr.size, last, -1))]
        shaped = plus | (zero0 & (groups >= 2)) | (((nd == 10) | (nd == 11)) & ((groups >= 2) | (at(first - 1) == 40)))
        paren = at(first - 1) == ord("(")
        open_ = np.flatnonzero(~glued)
        keyword = np.zeros(cand.size, bool)  # one RE2 pass over the windows before every candidate
        keyword[open_] = keyword_before(arr, first[open_] - paren[open_], self._kw, self.context_window,
                                        4 * self.max_candidates)
        pick = np.flatnonzero(~glued & (shaped | keyword))
        spans: list[tuple[int, int]] = []
        budget = [self.max_national]  # libphonenumber over every region: the costly test (per call: thread-safe)
        for n, i in enumerate(pick.tolist()):
            if len(spans) > self.max_spans:
                break
            if n >= self.max_candidates:
                spans.append((int(first[i]), int(last[i])))
                break
            s = int(first[i])
            if plus[i] or paren[i]:
                while s > 0 and s > first[i] - 3 and data[s - 1] in b"+(":
                    s -= 1
                while data[s : s + 1] == b" ":
                    s += 1
            text = data[s : int(last[i])].decode("ascii")
            if self._is_phone(text, bool(plus[i]), bool(keyword[i]), int(nd[i]), bool(zero0[i] and d1[i] == ord("0")),
                              budget):
                spans.append((s, int(last[i])))
        return spans

    def _is_phone(self, text: str, plus: bool, keyword: bool, n: int, idd: bool, budget: list[int]) -> bool:
        digits = "".join(c for c in text if c.isdigit())
        if plus:
            return n >= 8 and self._possible("+" + text.lstrip("(+ ").replace("(0)", ""), None)
        if idd:  # "00" is the international call prefix in most of the world
            return text != digits and len(digits) > 2 and digits[2] != "0" and self._valid(text, ("DE",))
        if keyword and self._dialled(text):
            return n >= 8 or self._LOCAL.fullmatch(text.encode()) is not None
        if self._nanp(text):
            return True
        if not (digits[0] == "0" and 9 <= n <= 12 and text != digits and self._dialled(text)
                and all(len(g) >= 2 for g in _digit_groups(text)) and max(len(g) for g in _digit_groups(text)) >= 3):
            return False
        budget[0] -= 1
        return budget[0] < 0 or self._valid(text, self.regions)  # past the budget: fail closed

    _LOCAL = compile_re2(r"[0-9]{3}[-.][0-9]{4}")
    _NANP = compile_re2(r"(?:1[ .-])?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}")

    def _nanp(self, text: str) -> bool:
        if self._NANP.fullmatch(text.encode("ascii")) is None:
            return False
        return text.startswith("(") or len({c for c in text if not c.isdigit()}) <= 1

    @staticmethod
    def _dialled(text: str) -> bool:
        """Looks dialled: no doubled separators ("12 - 3"), not a decimal, at most one 1-digit group."""
        return (
            not any(a in " .-" and b in " .-" for a, b in zip(text, text[1:]))
            and text.count(".") != 1
            and sum(len(g) < 2 for g in _digit_groups(text)) <= 1
        )

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


def _digit_groups(text: str) -> list[str]:
    return "".join(c if c.isdigit() else " " for c in text).split()


# --------------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------------
_TOKEN_BYTES = (string.ascii_letters + string.digits + "_-").encode()
PASSWORD_WORDS = (
    "password", "passwd", "pwd", "passphrase", "passcode", "passwort", "kennwort", "mot de passe", "mdp",
    "contraseña", "contrasena", "clave", "senha", "palavra-passe", "wachtwoord", "hasło", "haslo", "heslo",
    "lösenord", "losenord", "passord", "adgangskode", "salasana", "jelszó", "jelszo", "parola d'ordine", "parolă",
    "şifre", "sifre", "şifresi", "пароль", "Пароль", "ПАРОЛЬ", "パスワード", "暗証番号", "密码", "密碼", "口令",
    "비밀번호", "암호", "كلمة المرور", "كلمة السر", "סיסמה", "κωδικός", "mật khẩu", "รหัสผ่าน", "kata sandi",
    "पासवर्ड",
)
SECRET_WORDS = (
    "api key", "api_key", "api-key", "apikey", "secret", "token", "access key", "access_key", "access-key",
    "private key", "private_key", "private-key", "credential", "auth key", "auth_key", "signing key",
    "signing_key", "session id", "session_id", "x-api-key", "key", "client secret", "schlüssel", "schluessel",
    "Schlüssel", "geheimnis", "zugangsdaten", "clé", "jeton", "secreto", "chave", "segreto", "ключ", "токен",
    "секрет", "秘密", "密钥", "トークン", "시크릿",
)


class SecretDetector(NormalisingDetector):
    """Credentials: provider token formats, PEM private keys, Slack webhooks, Telegram bot tokens, Authorization
    headers (Bearer, Token, Basic, ...), URL credentials, bare AWS secret access keys, and values assigned to
    key/token/secret/password names in many languages (Passwort, mot de passe, contraseña, пароль, パスワード).

    Value rules (as governance.SecretDetector): an assigned value needs ≥ `min_value_length` characters mixing
    letters and digits with Shannon entropy ≥ `min_entropy_bits`; a password ≥ `min_password_length` with a
    letter and a non-letter; code (`os.environ[...]`, `${VAR}`, `<your-key>`, `****`, `changeme`) never counts.
    A bare 40-character key (AWS secret access key shape) needs upper, lower, digit or /+, and entropy ≥
    `min_bare_key_entropy_bits`; an AWS key id (AKIA..., may be all letters) needs its 16 characters to have
    entropy ≥ `min_key_id_entropy_bits` (placeholders such as AKIA + "Z7Q2" * 4 have 2 bits).
    """

    default_name = "secret"
    _TOKENS = compile_re2(
        r"sk-(?:proj-|ant-(?:api[0-9]{2}-)?|svcacct-|admin-)?[A-Za-z0-9_-]{20,200}"  # OpenAI / Anthropic
        r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,200}|whsec_[A-Za-z0-9+/=]{20,200}"  # Stripe (+ webhooks)
        r"|gh[pousr]_[A-Za-z0-9]{30,200}|github_pat_[A-Za-z0-9_]{30,255}|glpat-[A-Za-z0-9_-]{20,200}"
        r"|xox[abposre]-[A-Za-z0-9-]{10,200}|xapp-[0-9]-[A-Za-z0-9-]{10,200}"  # Slack
        r"|AIza[0-9A-Za-z_-]{35}|ya29\.[0-9A-Za-z_-]{20,300}"  # Google
        r"|hf_[A-Za-z0-9]{30,200}|npm_[A-Za-z0-9]{30,200}|pypi-[A-Za-z0-9_-]{50,300}"
        r"|SG\.[A-Za-z0-9_-]{16,100}\.[A-Za-z0-9_-]{16,100}"  # SendGrid
        r"|sh(?:pat|pss|pca|ppa)_[a-fA-F0-9]{32}|dop_v1_[a-f0-9]{64}|sq0(?:atp|csp)-[0-9A-Za-z_-]{22,60}"
        r"|SK[0-9a-fA-F]{32}"  # Twilio
        r"|eyJ[A-Za-z0-9_-]{8,1000}\.eyJ[A-Za-z0-9_-]{8,1000}\.[A-Za-z0-9_-]{8,1000}"  # JWT
    )
    _AWS_ID = compile_re2(r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA|APKA)[A-Z0-9]{16}")
    _TELEGRAM = compile_re2(r"[0-9]{8,10}:AA[A-Za-z0-9_-]{33}")
    _SLACK_HOOK = compile_re2(r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/-]{20,200}")
    _PEM = compile_re2(
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----[^A-Za-z0-9+/]{0,20}"
        r"(?:[A-Za-z-]{1,30}: [^\n]{0,100}\n){0,3}\s{0,4}[A-Za-z0-9+/]{16}"
    )
    _AUTH = compile_re2(
        r"(?i)(?:proxy-)?authori[sz]ation[\"']?\s{0,3}[:=]\s{0,3}[\"']?"
        r"(?:(bearer|token|basic|digest|apikey|api-key|key|sso-key|otp)\s{1,3})?([A-Za-z0-9._~+/=:-]{8,500})"
    )
    _BEARER = compile_re2(r"(?i)\b(?:bearer|token)\s{1,3}([A-Za-z0-9._~+/=-]{16,500})")
    _URL_CREDS = compile_re2(r"://([^\s:/@\[\]]{1,100}):([^\s/@\[\]]{1,200})@[^\s/]")
    # anchored on their distinctive middle, the start checked by walking back: Mailchimp, Discord bot tokens
    _MAILCHIMP = compile_re2(r"-us[0-9]{1,2}")
    _DISCORD = compile_re2(r"\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,38}")
    _BARE_40 = compile_re2(r"(?:^|[^A-Za-z0-9/+=_-])([A-Za-z0-9/+]{40})(?:$|[^A-Za-z0-9/+=_-])")
    _CODE_VALUE = compile_re2(
        r"^(?:[$<{%@]|.{0,200}[(\[{]|[A-Za-z_][A-Za-z0-9_]{0,80}(?:\.[A-Za-z_][A-Za-z0-9_]{0,80}){1,8}$"
        r"|(?i:(?:x{3,200}|\*{1,200}|\.{1,200}|changeme|null|none|true|false|undefined|nil)$|your[_-].{0,200}"
        r"|redacted.{0,200}))"
    )
    _WORDY = compile_re2(r"[A-Za-z]{1,60}[0-9]{0,2}(?:[_.-](?:[A-Za-z]{1,60}[0-9]{0,2}|[0-9]{1,4})){1,12}")
    # pattern → (case-insensitive, literals one of which every match holds): a pattern whose literals are all
    # absent is not run (a bytes `in` costs a tenth of an RE2 call through its Python binding)
    GATES: ClassVar[dict[str, tuple[bool, tuple[bytes, ...]]]] = {
        "_PEM": (False, (b"-----BEGIN",)), "_SLACK_HOOK": (False, (b"hooks.slack.com/",)),
        "_TELEGRAM": (False, (b":AA",)), "_MAILCHIMP": (False, (b"-us",)), "_URL_CREDS": (False, (b"://",)),
        "_AUTH": (True, (b"authori",)), "_BEARER": (True, (b"bearer", b"token")),
    }

    def __init__(
        self,
        name: str | None = None,
        min_value_length: int = 12,
        min_entropy_bits: float = 3.0,
        min_password_length: int = 6,
        min_token_entropy_bits: float = 3.0,
        min_bare_key_entropy_bits: float = 4.2,
        min_key_id_entropy_bits: float = 2.5,
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
        self.min_key_id_entropy_bits = min_key_id_entropy_bits
        names = alternation(list(password_words) + list(secret_words), whole_word_below=0)
        self._password_key = compile_re2("(?i)" + alternation(password_words, whole_word_below=0))
        # key name (with any prefix/suffix: OPENAI_API_KEY, db_password, API-Schlüssel), an optional "for the
        # db", then := => == = : or " is / ist / est / es " and the value
        self._assign = compile_re2(
            rf"(?i)({names}[A-Za-z0-9_-]{{0,40}})[\"']?"
            r"(?:\s{1,3}(?:for|of|to|on|f\xc3\xbcr|pour|de|del|para|per)\s{1,3}(?:(?:the|my|our|die|der|das|la|le|el)"
            r"\s{1,3})?[A-Za-z0-9_.-]{1,40})?"
            r"(\s{0,3}(?::=|=>|==|=|:)\s{0,3}|\s{1,3}(?:is|was|ist|est|es|\xc3\xa9|\xc3\xa8)\s{1,3})"
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

    def gate_open(self, name: str, data: bytes, low: bytes) -> bool:
        """Pattern `name` may match `data` (`low` = data.lower()): it has no gate, or one of its literals is there."""
        gate = self.GATES.get(name)
        if gate is None:
            return True
        hay = low if gate[0] else data
        for w in gate[1]:
            if w in hay:
                return True
        return False

    def find_bytes(self, nt: NormText) -> list[tuple[int, int]]:
        data, spans = nt.data, []
        budget = [self.max_candidates]
        low = data.lower()

        def each(name: str) -> Iterator[Any]:
            if not self.gate_open(name, data, low):
                return
            for m in getattr(self, name).finditer(data):
                if len(spans) > self.max_spans:  # found, and spans are capped anyway: stop early
                    return
                budget[0] -= 1
                if budget[0] < 0:
                    spans.append(m.span())
                    return
                yield m

        def free(s: int) -> bool:  # not the tail of a longer identifier
            return s == 0 or not (_IS_ALNUM[data[s - 1]] or data[s - 1] in b"_-")

        spans += [m.span() for m in each("_PEM")]
        spans += [m.span() for m in each("_SLACK_HOOK")]
        for m in each("_TOKENS"):
            v = m.group().decode()
            if free(m.start()) and self._mixed(v) and shannon_entropy(v) >= self.min_token_entropy_bits:
                spans.append(m.span())
        for m in each("_AWS_ID"):  # may be all letters: the entropy of its 16 random characters decides
            if free(m.start()) and shannon_entropy(m.group()[4:].decode()) >= self.min_key_id_entropy_bits:
                spans.append(m.span())
        spans += [m.span() for m in each("_TELEGRAM") if free(m.start())]
        for m in each("_MAILCHIMP"):
            key = data[max(0, m.start() - 32) : m.start()]
            if len(key) == 32 and not key.strip(b"0123456789abcdef") and free(m.start() - 32) and self._mixed(
                    key.decode()):
                spans.append((m.start() - 32, m.end()))
        for m in each("_DISCORD"):
            head = data[max(0, m.start() - 25) : m.start()]
            n = len(head) - len(head.rstrip(_TOKEN_BYTES))
            if 23 <= n <= 25 and head[-n] in b"MNO" and free(m.start() - n) and shannon_entropy(
                    data[m.start() - n : m.end()].decode()) >= self.min_token_entropy_bits:
                spans.append((m.start() - n, m.end()))
        for m in each("_AUTH"):
            scheme, v = (m.group(1) or b"").decode().lower(), m.group(2).decode()
            if (scheme == "basic" and not self._code(v)) or self._random_value(v):
                spans.append(m.span(2))
        spans += [m.span(1) for m in each("_BEARER") if self._random_value(m.group(1).decode())]
        for m in each("_URL_CREDS"):
            if self._password_value(m.group(2).decode("utf-8", "replace")):
                spans.append((m.start(1), m.end(2)))
        for m in each("_BARE_40"):
            v = m.group(1).decode()
            if (
                any(c.isupper() for c in v) and any(c.islower() for c in v) and any(c.isdigit() or c in "/+" for c in v)
                and shannon_entropy(v) >= self.min_bare_key_entropy_bits
            ):
                spans.append(m.span(1))
        for m in each("_assign"):
            sep = m.group(2).decode("utf-8", "replace").strip()
            v = m.group(3).decode("utf-8", "replace")
            natural = sep not in (":=", "=>", "==", "=", ":")
            is_password = self._password_key.search(m.group(1)) is not None
            ok = self._random_value(v) or (is_password and not natural and self._password_value(v))
            if is_password and natural:  # "my password is wrong": prose must look random, not like a word
                ok = ok or (self._password_value(v) and self._mixed(v))
            if ok:
                spans.append(m.span(3))
        return spans


# --------------------------------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------------------------------
SEP = "\n|\n"  # between leaves in the "apart" text: no detector joins a value across it (keywords may reach)
_ENUM_KEYS = frozenset({"role", "type", "object", "finish_reason", "detail", "tool_choice"})
_MAX_JSON_DEPTH = 2  # JSON held in strings (tool-call arguments) decoded at most this deep
_IN_LIST = object()  # the "key" of a list item


@dataclass(frozen=True)
class Leaf:
    """One scalar of a body: a dict key without a scalar value (`key` only), a scalar in a list (`scalar` only)
    or a dict entry (both). `text` is what is scanned on its own ("key: value", so a key such as "password" or
    "ssn" gives its value context); `value` is what is glued to the neighbouring values to find one split across
    fields (None for keys, numbers such as temperature 0.2, and enums such as role "user")."""

    key: str | None
    scalar: str | None
    enum: bool = False
    number: bool = False

    @property
    def text(self) -> str:
        if self.key is not None and self.scalar is not None:
            return f"{self.key}: {self.scalar}"
        return self.key if self.scalar is None else self.scalar

    @property
    def value(self) -> str | None:
        return None if self.enum or self.number else self.scalar


def _scalar_texts(x: Any) -> list[str]:
    if isinstance(x, str):
        return [x]
    if isinstance(x, bool) or x is None:
        return []
    if isinstance(x, int):
        return [str(x)]
    if isinstance(x, float):
        if x != x or x in (float("inf"), float("-inf")):
            return []
        out = [repr(x)]
        if x.is_integer() and abs(x) < 1e21:
            out.append(str(int(x)))  # 4.111111111111111e15 → "4111111111111111"
        return out
    return [str(x)]


def _is_container(x: Any) -> bool:
    t = type(x)  # JSON gives exact types: skip the Mapping ABC check (a third of a body walk) for them
    return t is dict or t is list or (t is not str and isinstance(x, (Mapping, list, tuple)))


def _decoded_json(s: str) -> Any:
    """JSON held in a string, when decoding can show more than the raw text (escapes such as \\u0034)."""
    t = s.lstrip()
    if t[:1] not in ("{", "[") or "\\" not in t:
        return None
    try:
        v = json.loads(t)
    except ValueError:
        return None
    return v if _is_container(v) else None


def body_leaves(body: Any) -> list[Leaf]:
    """The leaves of a JSON value in document order; iterative (a deep body cannot exhaust the stack)."""
    out: list[Leaf] = []
    stack: list[tuple[Iterator[tuple[Any, Any]], int]] = [(iter([(_IN_LIST, body)]), 0)]
    while stack:
        it, depth = stack[-1]
        try:
            key, v = next(it)
        except StopIteration:
            stack.pop()
            continue
        k = None if key is _IN_LIST else str(key)
        if _is_container(v):
            if k is not None:
                out.append(Leaf(k, None))
            stack.append((iter(v.items() if isinstance(v, Mapping) else [(_IN_LIST, x) for x in v]), depth))
            continue
        decoded = _decoded_json(v) if isinstance(v, str) and depth < _MAX_JSON_DEPTH else None
        for t in _scalar_texts(v):
            # an enum (role "user") or a decoded JSON string (its leaves follow) is scanned, not joined
            enum = decoded is not None or (k in _ENUM_KEYS and len(t) <= 32 and t.replace("_", "").isalpha())
            out.append(Leaf(k, t, enum, not isinstance(v, str)))
        if decoded is not None:
            stack.append((iter([(_IN_LIST, decoded)]), depth + 1))
        elif not _scalar_texts(v) and k is not None:
            out.append(Leaf(k, None))  # a key whose value is null / true / false
    return out


def body_strings(body: Any) -> list[str]:
    """Every dict key, string and number (as decimal text) of a JSON value, in document order."""
    return [x for leaf in body_leaves(body) for x in (leaf.key, leaf.scalar) if x is not None]


_TAIL_CHARS = frozenset(string.ascii_letters + string.digits + "_-+/=@%")  # a token cut at its end
_HEAD_CHARS = frozenset(string.ascii_letters + string.digits + "_-+/=%.")  # ... and its continuation
_TAIL = 48  # characters of the earlier value a seam keeps (a key name, a number's first groups)
_HEAD = 256  # characters of the later value


def _fragment(token: str, symbols: str) -> bool:
    """Reads like a piece of a value, not a word: a digit, one of `symbols`, or an upper-case letter inside."""
    return any(c.isdigit() or c in symbols for c in token) or any(c.isupper() for c in token[1:])


def _cut_token(left: str, right: str) -> bool:
    """The seam looks like a token cut in two: token characters on both sides, and neither side reads like a
    word ("1551" + "Summarise the notes" and "lookup_order" + "DK58..." stay apart; "sk-proj-4fT9" + "xQ2L..."
    is glued)."""
    if left[-1:] not in _TAIL_CHARS or right[:1] not in _HEAD_CHARS:
        return False
    tail = left.split()[-1] if left.strip() else ""
    head = right.split(None, 1)[0] if right.strip() else ""
    assigned = left[: len(left) - len(tail)].rstrip().endswith((":", "="))  # "password: O" + "rchid2492?"
    return (assigned or _fragment(tail, "@-+/=%")) and _fragment(head, "_-+/=%.")


_RUN = 96  # characters of a digit chain kept at a seam (a card with separators is ≤ 91)


def digit_runs(text: str | NormText) -> tuple[list[str], bool]:
    """The first and last digit chains of a text (as the card detector groups them; at most `_RUN` characters
    each, from the seam side), normalised, with a leading "+"; and whether the last one ends the text (nothing
    but spaces and punctuation after it). Only these can meet a neighbouring value; they are found in windows
    around the first and last digit, so a megabyte value costs two small chain computations."""
    nt = text if isinstance(text, NormText) else normalised(text)
    if nt.n_digits == 0:
        return [], False
    isd = _IS_DIGIT[nt.arr]
    first, last = int(np.argmax(isd)), nt.arr.size - 1 - int(np.argmax(isd[::-1]))
    out, bounds = [], []
    for lo, hi, pick in ((first, first + 2 * _RUN, 0), (max(0, last - 2 * _RUN), last + 1, -1)):
        ch = digit_chains(nt.arr[lo:hi], CARD_SEP, 4)
        s, e = lo + int(ch.c_start[pick]), lo + int(ch.c_end[pick])
        if bounds and (s, e) == bounds[0]:
            break  # one chain only
        bounds.append((s, e))
    for i, (s, e) in enumerate(bounds):
        s, e = (s, min(e, s + _RUN)) if i == 0 and len(bounds) > 1 else (max(s, e - _RUN), e) if i else (s, e)
        lead = nt.data[max(0, s - 3) : s]
        plus = lead.rfind(b"+")
        out.append(("+" if plus >= 0 and not lead[plus + 1 :].strip(b"( ") else "") + nt.data[s:e].decode("ascii"))
    if len(out) == 1 and len(out[0]) > 2 * _RUN:  # one long chain: its two ends
        out = [out[0][:_RUN], out[0][-_RUN:]]
    ends = not nt.data[last + 1 :].strip(b" \t\r\n.,;:!?)]}'\"")
    return out, ends


@dataclass(frozen=True)
class BodyTexts:
    """What is scanned for one body: `apart` (every leaf's text, SEP between) and two views of the seams between
    consecutive string values, where a value split over two messages or fields shows:

    - `pairs`: for each seam, the end of the earlier value + the start of the later one (glued where the seam
      cuts a token, else one space), segments SEP-separated; a finding counts where it ends after the seam
      (a split token, or a value whose key ended the earlier message: "password:" / "Maple3975!");
    - `digits`: each value's first and last digit runs (kept apart), the run that ends a value glued to the
      first run of the next (a card split over turns with words around); a finding counts where it straddles.

    All three are normalised text (see `normalise`).
    """

    apart: str
    pairs: str
    pair_seams: tuple[tuple[int, int], ...]  # (segment start, seam) per segment
    digits: str
    digit_seams: tuple[int, ...]


def _pairs(values: Sequence[str]) -> tuple[str, tuple[tuple[int, int], ...]]:
    parts, seams, pos = [], [], 0
    for left, right in zip(values, values[1:]):
        tail, head = left[-_TAIL:], right[:_HEAD]
        joiner = "" if _cut_token(tail, head) else " "
        if parts:
            parts.append(SEP)
            pos += len(SEP)
        seams.append((pos, pos + len(tail) + len(joiner)))
        parts += [tail, joiner, head]
        pos += len(tail) + len(joiner) + len(head)
    return "".join(parts), tuple(seams)


def body_texts(body: Any) -> BodyTexts:
    """The three texts of a body, already normalised (each scalar once)."""
    leaves = body_leaves(body)
    views: dict[str, NormText] = {}

    def norm(t: str) -> NormText:
        if t not in views:
            views[t] = normalised(t)
        return views[t]

    apart_parts, values = [], []
    for leaf in leaves:
        k = None if leaf.key is None else norm(leaf.key).text
        v = None if leaf.scalar is None else norm(leaf.scalar)
        apart_parts.append(k if v is None else v.text if k is None else f"{k}: {v.text}")
        if leaf.value:
            values.append(v)
    pairs, seams = _pairs([v.text for v in values])
    parts: list[str] = []
    dseams: list[int] = []
    pos, open_end = 0, False
    for v in values if len(values) > 1 else ():  # one value has no seam: its digit view could count nothing
        runs, ends = digit_runs(v)
        if not runs:
            continue
        if parts:  # a value's runs stay apart (" | "); a value ending in a run is glued to the next one's first
            if open_end:
                dseams.append(pos)
            else:
                parts.append(" | ")
                pos += 3
        piece = " | ".join(runs)
        parts.append(piece)
        pos += len(piece)
        open_end = ends
    return BodyTexts(SEP.join(apart_parts), pairs, seams, "".join(parts), tuple(dseams))


def _straddles(f: Finding, cuts: Sequence[int]) -> bool:
    """A seam c with f.start < c < f.end (the finding takes characters from both sides)."""
    i = int(np.searchsorted(cuts, f.start, side="right"))
    return i < len(cuts) and cuts[i] < f.end


def _after_seam(f: Finding, seams: Sequence[tuple[int, int]]) -> bool:
    """The finding ends after the seam of its segment (it needs the later value)."""
    i = int(np.searchsorted([s for s, _ in seams], f.start, side="right")) - 1
    return i >= 0 and f.end > seams[i][1]


class BodyScanner:
    """Data classes in whole request bodies, through a `GovernancePolicy` (its detectors and priority order).

    count(body): the findings of `apart` (every leaf); a class found only across a seam (`pairs`, `digits`, see
    BodyTexts) adds the larger of its two seam counts.
    """

    def __init__(self, policy: GovernancePolicy | Sequence[Detector] | Mapping[str, Detector]) -> None:
        self.policy = policy if isinstance(policy, GovernancePolicy) else GovernancePolicy(policy)

    def count_many(self, bodies: Sequence[Any]) -> list[dict[str, int]]:
        views = [body_texts(b) for b in bodies]
        # a seam view counts only findings at its seams: without seams (a single value) it is not scanned
        texts = [t for v in views
                 for t in (v.apart, v.pairs if v.pair_seams else "", v.digits if v.digit_seams else "")]
        scanned = [i for i, t in enumerate(texts) if t]
        nonempty = [texts[i] for i in scanned]
        with pinned(nonempty, already_normalised=True):
            hits = self.policy.scan(nonempty)
        found: list[list[Finding]] = [[] for _ in texts]
        for i, f in zip(scanned, hits):
            found[i] = f
        out = []
        for i, v in enumerate(views):
            apart, pairs, digits = found[3 * i : 3 * i + 3]
            counts = Counter(f.data_class for f in apart)
            seam_p = Counter(f.data_class for f in pairs if _after_seam(f, v.pair_seams))
            seam_d = Counter(f.data_class for f in digits if _straddles(f, v.digit_seams))
            for c in (set(seam_p) | set(seam_d)) - set(counts):
                counts[c] = max(seam_p[c], seam_d[c])
            out.append(dict(sorted(counts.items())))
        return out

    def count(self, body: Any) -> dict[str, int]:
        """Matches per data class in one body (class names and counts only: safe to log)."""
        return self.count_many([body])[0]

    def classes(self, body: Any) -> set[str]:
        return set(self.count(body))


def warm_up() -> None:
    """Build the Unicode tables (~0.3 s) and load libphonenumber's metadata now rather than in the first
    request that needs them (call at server start)."""
    _tables()
    for r in PHONE_REGIONS:
        phonenumbers.is_valid_number(phonenumbers.example_number(r))


def default_detectors() -> list[Detector]:
    """The detectors of configs/governance/default.yaml in its priority order, with their default settings: the
    policy a router (or the label runner) gets when it is given no governance config."""
    return [SecretDetector(), IbanDetector(), CardDetector(), SsnDetector(), NinoDetector(), EmailDetector(),
            PhoneDetector()]
