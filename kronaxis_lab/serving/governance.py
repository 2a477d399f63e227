"""Governance guard: sensitive-data detection and per-endpoint data-class permissions.

A query that carries sensitive data (an e-mail address, a card number, an API key, ...) may only be sent to
endpoints allowed to receive that *data class*. The guard runs after the routing policy:

    policy = hydra.utils.instantiate(cfg.governance)          # configs/governance/default.yaml
    found = policy.detect(texts)                               # list[set[str]], e.g. [{"email"}, set()]
    mask = policy.filter(candidates_mask, found, model_names)  # (n, m) bool: models allowed per query
    chosen = policy.decide(preferred, mask, tiers, costs)      # list[int | None]; None = refuse (4xx)
    # or all three at once (an allowed preferred model is kept), with audit records that never contain
    # the sensitive values; this is what the router calls:
    result = policy.guard(texts, preferred, model_names, tiers, costs)

Detectors are pluggable: one `Detector` subclass per data class, listed in the YAML with `_target_`. Each
reports character spans; when spans of different detectors overlap, the detector listed first wins (the
YAML lists the most specific first), so a card number is not also reported as a phone number.

Validation beyond the regex shape (why: shape alone flags order numbers, dates and prices):
- credit_card: 13–19 digits, Luhn checksum  Σ d'_i ≡ 0 (mod 10)  (every second digit from the right
  doubled, minus 9 if > 9), and a known card-network prefix (IIN).
- iban: country-specific length and ISO 13616 check  int(BBAN + country + check, letters A=10..Z=35) mod 97 = 1.
- ssn: area ∉ {000, 666, 900–999}, group ≠ 00, serial ≠ 0000; 9 bare digits only next to an SSN keyword.
- secret: provider token formats (sk-, AKIA, ghp_, xox?-, JWT, PEM private keys, ...) and values assigned
  to key/token/secret/password names whose Shannon entropy H = −Σ_c p_c log2 p_c (bits/char) is high.

Nothing in this module logs or returns the matched values: logs and audit records carry class names and
counts only; `redact` replaces every match by `[REDACTED:<class>]`.
"""

from __future__ import annotations

import logging
import math
import re
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from kronaxis_lab.data.fleet import Fleet

log = logging.getLogger(__name__)

ALL = "*"  # endpoint wildcard: may receive every data class


class GovernanceConfigError(ValueError):
    """The governance configuration (detectors / endpoints) is invalid."""


@dataclass(frozen=True)
class Finding:
    """One detected span; `text[start:end]` is the sensitive value (never log it)."""

    data_class: str
    start: int
    end: int


# --------------------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------------------
class Detector(ABC):
    """Finds one data class in text. Subclasses implement `find`; `name` is the data class reported."""

    default_name: str = ""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.default_name
        if not self.name:
            raise GovernanceConfigError(f"{type(self).__name__}: a detector needs a data-class name")

    @abstractmethod
    def find(self, text: str) -> list[tuple[int, int]]:
        """Return (start, end) character spans of matches in `text` (may overlap; the policy merges)."""

    def detect(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Batch form of `find`: one span list per text."""
        return [self.find(t) for t in texts]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class RegexDetector(Detector):
    """Generic detector from a list of regular expressions (for site-specific classes, e.g. employee IDs).

    If a pattern has a group named `value`, only that group is the sensitive span.
    """

    def __init__(self, name: str, patterns: Sequence[str], ignore_case: bool = False) -> None:
        super().__init__(name)
        if not patterns:
            raise GovernanceConfigError(f"RegexDetector {name!r}: `patterns` is empty")
        flags = re.IGNORECASE if ignore_case else 0
        try:
            self._patterns = [re.compile(p, flags) for p in patterns]
        except re.error as exc:
            raise GovernanceConfigError(f"RegexDetector {name!r}: bad pattern: {exc}") from exc

    def find(self, text: str) -> list[tuple[int, int]]:
        spans = []
        for pat in self._patterns:
            for m in pat.finditer(text):
                g = "value" if "value" in pat.groupindex else 0
                spans.append(m.span(g))
        return spans


class EmailDetector(Detector):
    """E-mail addresses, including common obfuscations ("jane [at] acme [dot] org")."""

    default_name = "email"
    _PLAIN = re.compile(
        r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@"
        r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
    )
    _AT = r"\s*[\[({<]\s*at\s*[\])}>]\s*"
    _DOT = r"(?:\s*[\[({<]\s*dot\s*[\])}>]\s*|\.)"
    _BRACKETED = re.compile(
        rf"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*{_AT}[A-Za-z0-9-]+(?:{_DOT}[A-Za-z0-9-]+)+", re.I
    )
    # fully spelled out: "john dot doe at gmail dot com" (only with a common TLD to stay precise)
    _SPELLED = re.compile(
        r"(?<![a-z0-9._-])[a-z0-9._-]+(?: dot [a-z0-9-]+)* at [a-z0-9-]+(?: dot [a-z0-9-]+)*"
        r" dot (?:com|net|org|edu|gov|io|co|uk|de|fr|ca|au|info|me)\b",
        re.I,
    )

    def find(self, text: str) -> list[tuple[int, int]]:
        if "@" not in text and " at" not in text.lower() and "[at]" not in text.lower():
            return []
        return [m.span() for p in (self._PLAIN, self._BRACKETED, self._SPELLED) for m in p.finditer(text)]


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


class PhoneDetector(Detector):
    """Phone numbers: international (+CC / 00CC), North-American formats, and numbers after a phone keyword.

    Plain years, prices, dates, IPs and math like "555 - 123 - 4567" do not match: a separator between
    digit groups is one character (space, dot or dash), and bare digit runs count only next to a keyword.
    """

    default_name = "phone"

    def __init__(
        self,
        name: str | None = None,
        min_digits: int = 8,
        max_digits: int = 15,
        context_min_digits: int = 9,
        context_window: int = 25,
        keywords: Sequence[str] = (
            "phone", "tel", "telephone", "mobile", "cell", "cellphone", "call me", "call us", "call him",
            "call her", "call them", "call back", "text me", "sms", "whatsapp", "fax", "ring me",
            "reach me", "my number", "landline", "hotline", "tél", "telefon", "telefono", "teléfono",
            "numéro", "numero", "handy", "móvil", "movil", "celular", "portable",
        ),
    ) -> None:
        super().__init__(name)
        self.min_digits, self.max_digits = min_digits, max_digits
        self.context_min_digits = context_min_digits
        # no digit between the keyword and the number, so "call it 3 times 1000000" stays benign
        kw = "|".join(re.escape(k) for k in sorted(keywords, key=len, reverse=True))
        self._context = re.compile(
            rf"\b(?:{kw})\b[^\d\n+]{{0,{int(context_window)}}}?"
            r"(?P<value>(?:\+|00)?\(?\d[\d ().-]{5,22}\d)(?![ .-]?\d)",
            re.I,
        )

    _NANP = re.compile(
        r"(?<![\w+])(?<!\d[ .-])(?:\+?1[ .-]?)?(?:\(\d{3}\)[ ]?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![ .-]?\d)(?!\w)"
    )
    _INTL = re.compile(
        r"(?<![\w+])(?<!\d[ .-])(?P<prefix>\+|00)[1-9]\d{0,2}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5}+)){2,7}(?![ .-]?\d)(?!\w)"
    )
    _SEPS = re.compile(r"[ .()-]")
    _LOCAL = re.compile(r"\d{3}[-.]\d{4}")  # 7-digit local number ("555-0199"), only after a keyword
    # French-style national numbers in pairs: 06 12 34 56 78 / 01.42.68.53.00 (10 digits, leading 0)
    _FR = re.compile(r"(?<![\w+.-])(?<!\d )0[1-9](?:([ .])\d{2})(?:\1\d{2}){3}(?![ .-]?\d)(?!\w)")

    def find(self, text: str) -> list[tuple[int, int]]:
        spans = [m.span() for m in self._NANP.finditer(text)]
        for m in self._INTL.finditer(text):
            n = len(_digits(m.group())) - (2 if m.group("prefix") == "00" else 0)
            body = m.group()[len(m.group("prefix")):]
            # "00" prefix without any separator is indistinguishable from an account number
            if m.group("prefix") == "00" and not self._SEPS.search(body):
                continue
            if self.min_digits <= n <= self.max_digits:
                spans.append(m.span())
        for m in self._context.finditer(text):
            value = m.group("value")
            # a context number must look like a dialled number: no double separators ("12 - 3"), no
            # decimal ("3.14159265": one dot), at most one 1-digit group ("1 2 3 4 5 6 7 8 9")
            groups = [g for g in re.split(r"[ .()-]", value) if g]
            if (
                re.search(r"[ .-]{2,}", value)
                or value.count(".") == 1
                or sum(len(g) < 2 for g in groups) > 1
            ):
                continue
            if self.context_min_digits <= len(_digits(value)) <= self.max_digits or self._LOCAL.fullmatch(value):
                spans.append(m.span("value"))
        spans += [m.span() for m in self._FR.finditer(text)]
        return spans


# Card-network prefixes (IIN ranges), as (low, high) inclusive on the leading digits. Standard data, not a
# tunable: Visa 4; Mastercard 51-55, 2221-2720; Amex 34, 37; Discover 6011, 644-649, 65; JCB 3528-3589;
# Diners 300-305, 309, 36, 38-39; UnionPay 62, 81; Maestro 50, 56-69; Mir 2200-2204; RuPay 60, 508, 82;
# Troy 9792.
CARD_IIN_RANGES: tuple[tuple[str, str], ...] = (
    ("4", "4"), ("51", "55"), ("2221", "2720"), ("34", "34"), ("37", "37"), ("6011", "6011"),
    ("644", "649"), ("65", "65"), ("3528", "3589"), ("300", "305"), ("309", "309"), ("36", "36"),
    ("38", "39"), ("62", "62"), ("81", "82"), ("50", "50"), ("56", "69"), ("2200", "2204"),
    ("508", "508"), ("9792", "9792"),
)


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) checksum of a digit string."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _known_iin(digits: str) -> bool:
    return any(lo <= digits[: len(lo)] <= hi for lo, hi in CARD_IIN_RANGES)


class CreditCardDetector(Detector):
    """Payment card numbers: 13–19 digits (contiguous or grouped by spaces/dashes), Luhn-valid."""

    default_name = "credit_card"
    _CANDIDATE = re.compile(
        r"(?<![\w-])(?<!\d[ -])(?:\d{13,19}|\d{4,6}(?:[ -]\d{3,6}){1,3}[ -]\d{1,6})(?![ -]?\d)(?!\w)"
    )

    def __init__(self, name: str | None = None, require_known_iin: bool = True) -> None:
        super().__init__(name)
        self.require_known_iin = require_known_iin

    def find(self, text: str) -> list[tuple[int, int]]:
        spans = []
        for m in self._CANDIDATE.finditer(text):
            d = _digits(m.group())
            if 13 <= len(d) <= 19 and luhn_valid(d) and (not self.require_known_iin or _known_iin(d)):
                spans.append(m.span())
        return spans


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """SSA rules: area not 000, 666 or 900-999; group not 00; serial not 0000."""
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


class SsnDetector(Detector):
    """US Social Security numbers: AAA-GG-SSSS / AAA GG SSSS anywhere, 9 bare digits after an SSN keyword."""

    default_name = "ssn"
    _SEPARATED = re.compile(r"(?<![\w-])(?<!\d )(\d{3})([- ])(\d{2})\2(\d{4})(?![\w-])(?! \d)")

    def __init__(
        self,
        name: str | None = None,
        context_window: int = 25,
        keywords: Sequence[str] = (
            "ssn", "ss#", "ss no", "ssnum", "social security", "social sec", "soc sec", "my social",
        ),
    ) -> None:
        super().__init__(name)
        kw = "|".join(re.escape(k) for k in sorted(keywords, key=len, reverse=True))
        self._context = re.compile(
            rf"(?<!\w)(?:{kw})(?!\w)[^\d\n]{{0,{int(context_window)}}}?(?<!\d)(\d{{3}})(\d{{2}})(\d{{4}})(?![\w-])",
            re.I,
        )

    def find(self, text: str) -> list[tuple[int, int]]:
        spans = []
        for m in self._SEPARATED.finditer(text):
            if ssn_valid(m.group(1), m.group(3), m.group(4)):
                spans.append(m.span())
        for m in self._context.finditer(text):
            if ssn_valid(m.group(1), m.group(2), m.group(3)):
                spans.append((m.start(1), m.end(3)))
        return spans


# ISO 13616 IBAN length per country (SWIFT IBAN registry). Standard data, not a tunable.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
    "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}


def iban_valid(iban: str) -> bool:
    """Country length + ISO 7064 mod-97-10 check of a compact IBAN (case-insensitive)."""
    s = iban.upper()
    if len(s) != IBAN_LENGTHS.get(s[:2], -1) or not s[2:4].isdigit() or not s.isalnum():
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


class IbanDetector(Detector):
    """IBANs, compact or in groups of four, any case; validated by country length and mod 97."""

    default_name = "iban"
    _START = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{2})\d{2}")

    def find(self, text: str) -> list[tuple[int, int]]:
        spans = []
        pos = 0
        for m in self._START.finditer(text):
            if m.start() < pos:
                continue
            length = IBAN_LENGTHS.get(m.group(1).upper())
            if length is None:
                continue
            # walk forward over alphanumerics, allowing single spaces between characters
            chars, i = [], m.start()
            while i < len(text) and len(chars) < length:
                c = text[i]
                if c.isascii() and c.isalnum():
                    chars.append(c)
                    i += 1
                elif c == " " and chars and i + 1 < len(text) and text[i + 1].isascii() and text[i + 1].isalnum():
                    i += 1
                else:
                    break
            # the IBAN must end at a token boundary (not be the prefix of a longer alphanumeric run)
            if len(chars) == length and not (i < len(text) and text[i].isascii() and text[i].isalnum()):
                if iban_valid("".join(chars)):
                    spans.append((m.start(), i))
                    pos = i
        return spans


def shannon_entropy(s: str) -> float:
    """H = −Σ_c p_c log2 p_c over the characters of `s`, in bits per character."""
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


class SecretDetector(Detector):
    """Credentials: provider token formats, PEM private keys, JWTs, bearer tokens, URL credentials and
    high-entropy values assigned to key/token/secret/password names.

    Assigned values that are code rather than data (`os.environ["X"]`, `settings.KEY`, `getpass()`,
    `${VAR}`, `<your-key>`, `****`) are not secrets.
    """

    default_name = "secret"
    # Provider formats (public documentation of each provider); the value after the prefix must also look
    # random (letters + digits) so prose such as "sk-learn-compatible-estimators" does not match.
    _TOKENS = re.compile(
        r"(?<![A-Za-z0-9_-])(?:"
        r"sk-(?:proj-|ant-(?:api\d\d-)?|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic
        r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"                    # Stripe
        r"|(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}"         # AWS access key id
        r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"         # GitHub
        r"|glpat-[A-Za-z0-9_-]{20,}"                                        # GitLab
        r"|xox[abposr]-[A-Za-z0-9-]{10,}"                                   # Slack
        r"|AIza[0-9A-Za-z_-]{35}"                                           # Google API key
        r"|hf_[A-Za-z0-9]{30,}"                                             # Hugging Face
        r"|npm_[A-Za-z0-9]{30,}|pypi-[A-Za-z0-9_-]{50,}"                    # npm / PyPI
        r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"                      # SendGrid
        r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"   # JWT
        r")(?![A-Za-z0-9_-])"
    )
    # a PEM private key up to its END line; a truncated paste (no END) up to the end of its base64 lines
    _PEM = re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|(?:\s*[A-Za-z0-9+/=]{16,})*)"
    )
    _BEARER = re.compile(r"(?i)\bbearer\s+(?P<value>[A-Za-z0-9._~+/=-]{16,})")
    _BASIC = re.compile(r"(?i)\bauthorization[\"']?\s*[:=]\s*[\"']?basic\s+(?P<value>[A-Za-z0-9+/]{8,}={0,2})")
    _URL_CREDS = re.compile(r"(?i)(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*://(?P<value>[^\s:/@\[\]]+:[^\s/@\[\]]+)@[^\s/]+")
    _KEY_NAMES = (
        r"api[ _-]?key|apikey|secret|token|passw(?:or)?d|passphrase|pwd|access[_-]?key|private[_-]?key"
        r"|credentials?|auth[_-]?key|signing[_-]?key|session[_-]?id|x-api-key|key"
    )
    _ASSIGN = re.compile(
        rf"(?i)(?<![A-Za-z0-9_.-])(?P<key>[A-Za-z0-9_.-]*(?:{_KEY_NAMES})[A-Za-z0-9_-]*)[\"']?"
        r"(?:\s+(?:for|of|to|on)\s+(?:the\s+|my\s+|our\s+)?[\w.-]+)?"  # "password for the db is ..."
        r"(?P<sep>\s*(?::=|=>|==|=|:)\s*|\s+(?:is|was|=)\s+)"
        r"(?:b|r|f)?[\"'`]?(?P<value>[^\s\"'`,;)\]}]+)"
    )
    _CODE_VALUE = re.compile(
        r"^(?:[$<{%@]|.*[(\[{]|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+$"
        r"|(?i:(?:x{3,}|\*+|\.+|changeme|null|none|true|false|undefined)$|your[_-].*|redacted.*))"
    )
    _PASSWORD_KEY = re.compile(r"(?i)passw(?:or)?d|passphrase|pwd")

    def __init__(
        self,
        name: str | None = None,
        min_value_length: int = 12,
        min_entropy_bits: float = 3.0,
        min_password_length: int = 6,
        min_token_entropy_bits: float = 3.0,
    ) -> None:
        super().__init__(name)
        self.min_value_length = min_value_length
        self.min_entropy_bits = min_entropy_bits
        self.min_password_length = min_password_length
        self.min_token_entropy_bits = min_token_entropy_bits

    @staticmethod
    def _mixed(v: str) -> bool:
        return any(c.isdigit() for c in v) and any(c.isalpha() for c in v)

    # dash/underscore-joined words ("my-app-2024-prod", "user_id_v2") are names, not keys
    _WORDY = re.compile(r"[A-Za-z]+\d{0,2}(?:[_.-](?:[A-Za-z]+\d{0,2}|\d{1,4}))+")

    def _random_value(self, v: str) -> bool:
        return (
            len(v) >= self.min_value_length
            and self._mixed(v)
            and not self._WORDY.fullmatch(v)
            and shannon_entropy(v) >= self.min_entropy_bits
            and not self._CODE_VALUE.match(v)
        )

    def _password_value(self, v: str) -> bool:
        # passwords are short and human-made: letters plus a digit or symbol, not a placeholder/expression
        has_other = any(not c.isalpha() for c in v)
        return (
            len(v) >= self.min_password_length
            and any(c.isalpha() for c in v)
            and has_other
            and not self._CODE_VALUE.match(v)
        )

    def find(self, text: str) -> list[tuple[int, int]]:
        spans = [m.span() for m in self._PEM.finditer(text)]
        for m in self._TOKENS.finditer(text):
            if self._mixed(m.group()) and shannon_entropy(m.group()) >= self.min_token_entropy_bits:
                spans.append(m.span())
        for m in self._BEARER.finditer(text):
            if self._random_value(m.group("value")):
                spans.append(m.span("value"))
        spans += [m.span("value") for m in self._BASIC.finditer(text)]
        for m in self._URL_CREDS.finditer(text):
            # docs use "postgres:postgres@" / "user:password@": only a password-like part counts
            if self._password_value(m.group("value").split(":", 1)[1]):
                spans.append(m.span("value"))
        for m in self._ASSIGN.finditer(text):
            v, natural = m.group("value"), m.group("sep").strip() in ("is", "was")
            is_password = bool(self._PASSWORD_KEY.search(m.group("key")))
            # "my password is wrong": prose after "is" must look random, not merely like a word
            ok = self._random_value(v) or (is_password and not natural and self._password_value(v))
            if is_password and natural:
                ok = ok or (self._password_value(v) and self._mixed(v))
            if ok:
                spans.append(m.span("value"))
        return spans


# --------------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------------
def _merge(findings_per_detector: list[list[tuple[int, int]]], names: list[str]) -> list[Finding]:
    """Resolve overlaps: a span overlapping one of an earlier (higher-priority) detector is dropped;
    overlapping spans of the same detector are unioned."""
    taken: list[Finding] = []
    for name, spans in zip(names, findings_per_detector):
        own: list[list[int]] = []
        for s, e in sorted(spans):
            if any(f.start < e and s < f.end for f in taken):
                continue
            if own and s < own[-1][1]:
                own[-1][1] = max(own[-1][1], e)
            else:
                own.append([s, e])
        taken += [Finding(name, s, e) for s, e in own]
    return sorted(taken, key=lambda f: f.start)


@dataclass
class GovernanceDecision:
    """Result of `GovernancePolicy.guard` for a batch. `chosen[i] is None` means refuse query i.

    `allowed` (n, m): models governance lets receive each query; `mask` = `allowed` ∧ the candidates
    (e.g. models with an upstream): the models `chosen` was picked from.
    """

    chosen: list[int | None]
    found: list[set[str]]
    counts: list[dict[str, int]]
    mask: np.ndarray
    allowed: np.ndarray
    records: list[dict[str, Any]] = field(default_factory=list)


class GovernancePolicy:
    """Which endpoint may receive which sensitive data class.

    Args:
        detectors: detectors in priority order (a list, or a mapping name → detector as in the YAML).
        endpoints: model name → list of allowed data classes, or "*" for all classes.
        default_allowed: classes allowed for models absent from `endpoints` (default: none — fail closed).
    """

    def __init__(
        self,
        detectors: Sequence[Detector] | Mapping[str, Detector],
        endpoints: Mapping[str, Sequence[str] | str] | None = None,
        default_allowed: Sequence[str] | str = (),
    ) -> None:
        dets = list(detectors.values()) if isinstance(detectors, Mapping) else list(detectors)
        if not dets:
            raise GovernanceConfigError("governance: `detectors` is empty")
        for d in dets:
            if not isinstance(d, Detector):
                raise GovernanceConfigError(f"governance: detector {d!r} is not a Detector (missing _target_?)")
        names = [d.name for d in dets]
        if len(set(names)) != len(names):
            raise GovernanceConfigError(f"governance: duplicate detector names {names}")
        self.detectors = dets
        self.classes: list[str] = names
        self.endpoints = {str(k): self._check_allowed(v, f"endpoints.{k}") for k, v in (endpoints or {}).items()}
        self.default_allowed = self._check_allowed(default_allowed, "default_allowed")

    def _check_allowed(self, value: Sequence[str] | str, where: str) -> frozenset[str] | str:
        if isinstance(value, str):
            if value != ALL:
                raise GovernanceConfigError(f"governance: {where} must be a list of classes or '*', got {value!r}")
            return ALL
        allowed = frozenset(str(v) for v in value)
        unknown = allowed - set(self.classes)
        if unknown:
            raise GovernanceConfigError(
                f"governance: {where} lists unknown data classes {sorted(unknown)}; known: {self.classes}"
            )
        return allowed

    # -- detection ---------------------------------------------------------------------------------
    def scan(self, texts: Sequence[str]) -> list[list[Finding]]:
        """Findings per text, overlaps resolved by detector priority."""
        texts = _as_texts(texts)
        per_det = [d.detect(texts) for d in self.detectors]
        return [_merge([pd[i] for pd in per_det], self.classes) for i in range(len(texts))]

    def count(self, texts: Sequence[str]) -> list[dict[str, int]]:
        """Number of matches per data class, per text (safe to log)."""
        return [dict(Counter(f.data_class for f in fs)) for fs in self.scan(texts)]

    def detect(self, texts: Sequence[str]) -> list[set[str]]:
        """Data classes found per text."""
        return [set(c) for c in self.count(texts)]

    def redact(self, text: str | Sequence[str]) -> str | list[str]:
        """Replace every match by `[REDACTED:<class>]` (a string in → a string out; a list → a list)."""
        single = isinstance(text, str)
        texts = [text] if single else _as_texts(text)
        out = []
        for t, fs in zip(texts, self.scan(texts)):
            for f in reversed(fs):
                t = f"{t[: f.start]}[REDACTED:{f.data_class}]{t[f.end:]}"
            out.append(t)
        return out[0] if single else out

    # -- permissions -------------------------------------------------------------------------------
    def allowed(self, model_names: Sequence[str]) -> np.ndarray:
        """(m, k) bool: model j may receive data class `self.classes[c]`."""
        a = np.zeros((len(model_names), len(self.classes)), dtype=bool)
        for j, name in enumerate(model_names):
            allow = self.endpoints.get(name, self.default_allowed)
            a[j] = True if allow == ALL else [c in allow for c in self.classes]
        return a

    def filter(self, candidates_mask: np.ndarray, found: Sequence[set[str]], model_names: Sequence[str]) -> np.ndarray:
        """Mask out, per query, the models not allowed for every class found in it.

        ok[i, j] = candidates_mask[i, j] ∧ ¬∃c: F[i, c] ∧ ¬A[j, c]  (F: found classes, A: allowed classes).
        A class no detector declares (unknown) is allowed only on '*' endpoints.
        """
        mask = np.asarray(candidates_mask, dtype=bool)
        if mask.ndim != 2 or mask.shape != (len(found), len(model_names)):
            raise ValueError(
                f"governance.filter: candidates_mask shape {mask.shape} != (len(found)={len(found)}, "
                f"len(model_names)={len(model_names)})"
            )
        classes = self.classes + sorted({c for s in found for c in s} - set(self.classes))
        col = {c: k for k, c in enumerate(classes)}
        f = np.zeros((len(found), len(classes)), dtype=bool)
        for i, s in enumerate(found):
            f[i, [col[c] for c in s]] = True
        a = np.zeros((len(model_names), len(classes)), dtype=bool)
        a[:, : len(self.classes)] = self.allowed(model_names)
        a[[self.endpoints.get(n, self.default_allowed) == ALL for n in model_names], :] = True
        violations = f.astype(np.int32) @ (~a).T.astype(np.int32)  # (n, m): forbidden classes present
        return mask & (violations == 0)

    @staticmethod
    def decide(
        preferred: np.ndarray | Sequence[int],
        mask: np.ndarray,
        tiers: np.ndarray | Sequence[int],
        costs: np.ndarray | Sequence[float] | None = None,
    ) -> list[int | None]:
        """Pick an allowed model per query, or None (refuse).

        Among allowed models with tier ≥ tier(preferred[i]) take the cheapest (ties: lower tier, lower
        index); if there is none, take the most capable allowed model (ties: cheaper); if no model is
        allowed, None. `tiers[j]` ranks capability (higher = stronger); `costs[j]` defaults to `tiers`.
        """
        mask = np.asarray(mask, dtype=bool)
        pref = np.asarray(preferred, dtype=np.int64).reshape(-1)
        tiers = np.asarray(tiers, dtype=np.float64).reshape(-1)
        cost = tiers if costs is None else np.asarray(costs, dtype=np.float64).reshape(-1)
        n, m = mask.shape if mask.ndim == 2 else (-1, -1)
        if mask.ndim != 2 or pref.shape != (n,) or tiers.shape != (m,) or cost.shape != (m,):
            raise ValueError(
                f"governance.decide: shapes mask={mask.shape}, preferred={pref.shape}, tiers={tiers.shape}, "
                f"costs={cost.shape} do not agree (want (n, m), (n,), (m,), (m,))"
            )
        if n and (pref.min() < 0 or pref.max() >= m):
            raise ValueError(f"governance.decide: preferred indices must be in [0, {m}), got {pref.tolist()}")
        idx = np.arange(m)
        cheap_rank = np.empty(m, dtype=np.int64)
        cheap_rank[np.lexsort((idx, tiers, cost))] = idx  # rank by (cost, tier, index)
        strong_rank = np.empty(m, dtype=np.int64)
        strong_rank[np.lexsort((idx, cost, -tiers))] = idx  # rank by (-tier, cost, index)
        up = mask & (tiers[None, :] >= tiers[pref][:, None])
        first = np.argmin(np.where(up, cheap_rank[None, :], m), axis=1)
        fallback = np.argmin(np.where(mask, strong_rank[None, :], m), axis=1)
        return [
            int(first[i]) if up[i].any() else (int(fallback[i]) if mask[i].any() else None) for i in range(n)
        ]

    def guard(
        self,
        texts: Sequence[str],
        preferred: np.ndarray | Sequence[int],
        model_names: Sequence[str],
        tiers: np.ndarray | Sequence[int],
        costs: np.ndarray | Sequence[float] | None = None,
        candidates_mask: np.ndarray | None = None,
        counts: Sequence[Mapping[str, int]] | None = None,
    ) -> GovernanceDecision:
        """detect → filter → keep or move, for a batch; audit records (classes and counts only) are logged.

        A preferred model that may receive the query (and is a candidate) is kept; otherwise `decide` picks
        the replacement, or None (refuse). `candidates_mask` (n, m) or (m,): models that can be called at all.
        `counts`: findings per query already computed (e.g. `detectors.BodyScanner` over whole request
        bodies); None = scan `texts` here.
        """
        texts = _as_texts(texts)
        n, m = len(texts), len(model_names)
        if counts is None:
            counts = self.count(texts)
        elif len(counts) != n:
            raise ValueError(f"{len(counts)} counts for {n} texts")
        counts = [dict(c) for c in counts]
        found = [set(c) for c in counts]
        allowed = self.filter(np.ones((n, m), dtype=bool), found, model_names)
        cand = np.ones((n, m), dtype=bool) if candidates_mask is None else np.asarray(candidates_mask, dtype=bool)
        mask = allowed & np.broadcast_to(cand, (n, m))
        pref = np.asarray(preferred, dtype=np.int64).reshape(-1)
        moved = self.decide(pref, mask, tiers, costs)
        chosen = [int(p) if mask[i, p] else moved[i] for i, p in enumerate(pref)]
        records = audit_records(counts, chosen, pref, model_names)
        for r in records:
            if r["classes"] or r["refused"]:
                log.info("governance: %s", r)
        return GovernanceDecision(chosen=chosen, found=found, counts=counts, mask=mask, allowed=allowed,
                                  records=records)

    def __repr__(self) -> str:
        return f"GovernancePolicy(detectors={self.classes}, endpoints={sorted(self.endpoints)})"


def legacy_detectors() -> list[Detector]:
    """The hand-written detectors of this module (the default before the normalising ones in `detectors.py`),
    kept for the before/after rows of benchmarks/governance.md; the default is `detectors.default_detectors()`."""
    return [SecretDetector(), IbanDetector(), CreditCardDetector(), SsnDetector(), EmailDetector(), PhoneDetector()]


def endpoints_from_fleet(fleet: Fleet) -> dict[str, list[str] | str]:
    """Fleet per-model `data_classes` → `GovernancePolicy` `endpoints` ("*" anywhere in a list = every class)."""
    return {m.name: ALL if ALL in m.data_classes else list(m.data_classes) for m in fleet.models}


def audit_records(
    counts: Sequence[Mapping[str, int]],
    chosen: Sequence[int | None],
    preferred: np.ndarray | Sequence[int],
    model_names: Sequence[str],
) -> list[dict[str, Any]]:
    """One loggable dict per query: classes and counts, preferred and chosen model — never the values."""
    pref = np.asarray(preferred).reshape(-1)
    return [
        {
            "row": i,
            "classes": dict(sorted(c.items())),
            "preferred": model_names[int(pref[i])],
            "chosen": None if ch is None else model_names[ch],
            "refused": ch is None,
            "rerouted": ch is not None and ch != int(pref[i]),
        }
        for i, (c, ch) in enumerate(zip(counts, chosen))
    ]


def _as_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("governance: pass a list of texts (batch-first), not a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ValueError(f"governance: text at row {i} is {type(t).__name__}, expected str")
    return out
