"""Generate the adversarial governance corpus: tests/fixtures/governance_adversarial.jsonl.

    .venv/bin/python scripts/make_governance_corpus.py [--seed 0] [--out tests/fixtures/governance_adversarial.jsonl]

Every row is a full chat-completions request body with one sensitive value planted in one field, in one
format, framed by a sentence in one locale — or a benign look-alike (order numbers, ISBNs, barcodes, versions,
maths, placeholders, ...) that must stay unflagged:

    {"id": "credit_card/nbsp/tool_description/de", "class": "credit_card", "format": "nbsp",
     "field": "tool_description", "locale": "de", "expected_classes": ["credit_card"], "body": {...}}

Values come from the standards' own rules, not from the detectors: cards are Luhn-completed network prefixes,
IBANs follow python-stdnum's BBAN registry (check digits by ISO 7064), phone numbers are libphonenumber's
example numbers with randomised subscriber digits (kept only when still valid), SSNs and NI numbers follow the
SSA and HMRC allocation rules. The formats are the bypasses of issue 11 (separators, Unicode digits,
zero-width characters, %40, ...), the fields every place the router forwards (tool descriptions, parameters,
response_format, user, metadata, stop, prompt, roles, names, dict keys, numbers, tool-call arguments, a value
split over two messages). Deterministic for a seed; the committed file is regenerated with the defaults.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import random
import re
import string
from pathlib import Path
from typing import Any, Callable

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from stdnum import iban as stdnum_iban

from kronaxis_lab.serving.governance import luhn_valid

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "governance_adversarial.jsonl"
FIELDS_PER_FORMAT = 7  # each (class, format) lands in this many fields (rotating, so every field is covered)

# ----------------------------------------------------------------------------------------------------------
# Locales: a sentence around the value (no sensitive data of its own)
# ----------------------------------------------------------------------------------------------------------
FRAMES = {
    "en": ["Please use {} for this.", "Can you check {} before Friday?", "Note for the file: {}", "{}"],
    "de": ["Bitte verwenden Sie {} dafür.", "Kannst du {} bis Freitag prüfen?", "Notiz: {}", "{}"],
    "fr": ["Merci d'utiliser {} pour cela.", "Peux-tu vérifier {} avant vendredi ?", "Note : {}", "{}"],
    "es": ["Por favor usa {} para esto.", "¿Puedes revisar {} antes del viernes?", "Nota: {}", "{}"],
    "pt": ["Por favor use {} para isso.", "Pode verificar {} até sexta?", "Nota: {}", "{}"],
    "ja": ["これを {} でお願いします。", "金曜日までに {} を確認してください。", "メモ: {}", "{}"],
    "ru": ["Пожалуйста, используйте {} для этого.", "Проверь {} до пятницы.", "Заметка: {}", "{}"],
    "ar": ["من فضلك استخدم {} لهذا.", "هل يمكنك التحقق من {} قبل الجمعة؟", "ملاحظة: {}", "{}"],
}
LOCALES = tuple(FRAMES)

# ----------------------------------------------------------------------------------------------------------
# Value generators (by the standards' rules)
# ----------------------------------------------------------------------------------------------------------
CARD_NETWORKS = [  # (prefix range, length): Visa, Mastercard (2- and 5-series), Amex, Discover, JCB, Diners,
    (("4", "4"), 16), (("51", "55"), 16), (("2221", "2720"), 16), (("34", "34"), 15), (("37", "37"), 15),
    (("6011", "6011"), 16), (("65", "65"), 16), (("3528", "3589"), 16), (("36", "36"), 14),
    (("62", "62"), 16), (("62", "62"), 19), (("2200", "2204"), 16),  # UnionPay 16/19, Mir
]


def luhn_complete(body: str) -> str:
    return next(body + c for c in "0123456789" if luhn_valid(body + c))


def card(rng: random.Random) -> str:
    (lo, hi), n = rng.choice(CARD_NETWORKS)
    prefix = str(rng.randint(int(lo), int(hi)))
    return luhn_complete(prefix + "".join(rng.choice(string.digits) for _ in range(n - len(prefix) - 1)))


def card_groups(d: str) -> list[str]:
    layout = {15: (4, 6, 5), 14: (4, 6, 4), 19: (4, 4, 4, 4, 3)}.get(len(d), (4,) * (len(d) // 4))
    out, i = [], 0
    for n in layout:
        out.append(d[i : i + n])
        i += n
    return out


def _iban_formats() -> dict[str, str]:
    text = importlib.resources.files("stdnum").joinpath("iban.dat").read_text(encoding="utf-8")
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 2 and parts[0].isupper() and 'bban="' in line:
            out[parts[0]] = line.split('bban="')[1].split('"')[0]
    return out


IBAN_FORMATS = _iban_formats()
IBAN_COUNTRIES = ("DE", "GB", "FR", "ES", "IT", "NL", "BE", "AT", "CH", "PL", "SE", "NO", "DK", "FI", "IE", "PT",
                  "SA", "AE", "BR", "TR", "MT", "LU")


def iban(rng: random.Random) -> str:
    while True:
        cc = rng.choice(IBAN_COUNTRIES)
        bban = []
        for n, kind in re.findall(r"(\d+)!([nac])", IBAN_FORMATS[cc]):
            n = int(n)
            alphabet = {"n": string.digits, "a": string.ascii_uppercase, "c": string.digits + string.ascii_uppercase}
            bban.append("".join(rng.choice(alphabet[kind]) for _ in range(n)))
        body = "".join(bban)
        number = cc + stdnum_iban.calc_check_digits(cc + "00" + body) + body
        if stdnum_iban.is_valid(number, check_country=False):
            return number


def ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"


NINO_FIRST = "ABCEGHJKLMNOPRSTWXYZ"
NINO_SECOND = "ABCEGHJKLMNPRSTWXYZ"


def nino(rng: random.Random) -> str:
    while True:
        p = rng.choice(NINO_FIRST) + rng.choice(NINO_SECOND)
        if p not in {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}:
            return p + "".join(rng.choice(string.digits) for _ in range(6)) + rng.choice("ABCD")


PHONE_REGIONS = ("DE", "GB", "FR", "US", "JP", "IN", "BR", "ES", "IT", "NL", "AU", "CH")


def phone(rng: random.Random, region: str | None = None) -> phonenumbers.PhoneNumber:
    """libphonenumber's example number for a region, its last digits randomised while it stays valid."""
    region = region or rng.choice(PHONE_REGIONS)
    kind = rng.choice([PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE])
    ex = phonenumbers.example_number_for_type(region, kind)
    for _ in range(50):
        n = str(ex.national_number)
        cand = phonenumbers.parse(f"+{ex.country_code}{n[:-3]}{rng.randint(0, 999):03d}", None)
        if phonenumbers.is_valid_number(cand) and not str(cand.national_number).endswith("555"):
            return cand
    return ex


def rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


B62 = string.ascii_letters + string.digits


def password(rng: random.Random) -> str:
    word = rng.choice(["Sommer", "Tiger", "Lisboa", "Maple", "Kirsche", "Falcon", "Orchid"])
    return f"{word}{rng.randint(10, 9999)}{rng.choice('!#$%&*?')}"


def b64url(rng: random.Random, n: int) -> str:
    return rand(rng, B62 + "-_", n)


def jwt(rng: random.Random) -> str:
    return "eyJ" + b64url(rng, 33) + ".eyJ" + b64url(rng, 60) + "." + b64url(rng, 43)


SECRETS: dict[str, Callable[[random.Random], str]] = {
    "openai": lambda r: "sk-proj-" + rand(r, B62, 40),
    "anthropic": lambda r: "sk-ant-api03-" + rand(r, B62, 60) + "-" + rand(r, B62, 20),
    "stripe_live": lambda r: "sk_live_" + rand(r, B62, 24),
    "stripe_webhook": lambda r: "whsec_" + rand(r, B62, 32),
    "slack_webhook": lambda r: f"https://hooks.slack.com/services/T{rand(r, string.ascii_uppercase + string.digits, 8)}"
    f"/B{rand(r, string.ascii_uppercase + string.digits, 10)}/{rand(r, B62, 24)}",
    "slack_bot": lambda r: f"xoxb-{rand(r, string.digits, 11)}-{rand(r, string.digits, 13)}-{rand(r, B62, 24)}",
    "telegram_bot": lambda r: f"{r.randint(100000000, 9999999999)}:AA{rand(r, B62 + '-_', 33)}",
    "auth_token_header": lambda r: "Authorization: Token " + rand(r, "0123456789abcdef", 40),
    "auth_bearer_header": lambda r: "Authorization: Bearer " + rand(r, B62, 36),
    "aws_access_key_id": lambda r: "AKIA" + rand(r, string.ascii_uppercase + string.digits, 16),
    "aws_key_all_letters": lambda r: "AKIA" + rand(r, string.ascii_uppercase, 16),
    "aws_secret_bare": lambda r: rand(r, string.ascii_uppercase, 3) + rand(r, B62 + "/+", 34) + rand(r, "abc123", 3),
    "aws_secret_assigned": lambda r: "aws_secret_access_key = " + rand(r, B62 + "/+", 40),
    "github": lambda r: "ghp_" + rand(r, B62, 36),
    "gitlab": lambda r: "glpat-" + rand(r, B62, 20),
    "huggingface": lambda r: "hf_" + rand(r, B62, 34),
    "google_api": lambda r: "AIza" + rand(r, B62 + "-_", 35),
    "jwt": jwt,
    "pem_private_key": lambda r: "-----BEGIN RSA PRIVATE KEY-----\nMIIEow" + rand(r, B62 + "+/", 58) + "\n"
    + rand(r, B62 + "+/", 64) + "\n-----END RSA PRIVATE KEY-----",
    "url_credentials": lambda r: f"postgres://admin:{password(r)}@db.internal:5432/prod",
    "password_en": lambda r: f"password: {password(r)}",
    "password_de": lambda r: f"Passwort: {password(r)}",
    "kennwort_de": lambda r: f"Kennwort = {password(r)}",
    "password_fr": lambda r: f"mot de passe : {password(r)}",
    "password_es": lambda r: f"contraseña: {password(r)}",
    "password_pt": lambda r: f"senha: {password(r)}",
    "password_ru": lambda r: f"пароль: {password(r)}",
    "password_ja": lambda r: f"パスワード：{password(r)}",
    "password_nl": lambda r: f"wachtwoord: {password(r)}",
    "password_pl": lambda r: f"hasło: {password(r)}",
    "api_key_assigned": lambda r: "OPENAI_API_KEY=" + rand(r, B62, 32),
    "client_secret_json": lambda r: json.dumps({"client_secret": rand(r, B62 + "~.", 34)}),
}

# ----------------------------------------------------------------------------------------------------------
# Formats: value → text (the bypasses of issue 11)
# ----------------------------------------------------------------------------------------------------------
FULLWIDTH = str.maketrans({c: chr(0xFF10 + int(c)) for c in string.digits})
ARABIC = str.maketrans({c: chr(0x0660 + int(c)) for c in string.digits})
DEVANAGARI = str.maketrans({c: chr(0x0966 + int(c)) for c in string.digits})
MATH_BOLD = str.maketrans({c: chr(0x1D7CE + int(c)) for c in string.digits})
SUPERSCRIPT = str.maketrans(dict(zip(string.digits, "⁰¹²³⁴⁵⁶⁷⁸⁹")))


def zero_width(s: str, rng: random.Random) -> str:
    marks = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]
    return "".join(c + (rng.choice(marks) if i % 2 == 0 and c != " " else "") for i, c in enumerate(s))


def zalgo(s: str) -> str:
    return "".join(c + "\u0332" if c.isdigit() else c for c in s)


def sep(groups: list[str], s: str) -> str:
    return s.join(groups)


CARD_FORMATS: dict[str, Callable[[str, random.Random], str]] = {
    "plain": lambda d, r: d,
    "spaces": lambda d, r: sep(card_groups(d), " "),
    "dashes": lambda d, r: sep(card_groups(d), "-"),
    "dots": lambda d, r: sep(card_groups(d), "."),
    "slashes": lambda d, r: sep(card_groups(d), "/"),
    "nbsp": lambda d, r: sep(card_groups(d), "\u00a0"),
    "narrow_nbsp": lambda d, r: sep(card_groups(d), "\u202f"),
    "tabs": lambda d, r: sep(card_groups(d), "\t"),
    "newlines": lambda d, r: sep(card_groups(d), "\n"),
    "double_spaces": lambda d, r: sep(card_groups(d), "  "),
    "underscores": lambda d, r: sep(card_groups(d), "_"),
    "en_dash": lambda d, r: sep(card_groups(d), "\u2013"),
    "em_dash_spaced": lambda d, r: sep(card_groups(d), " \u2014 "),
    "ideographic_space": lambda d, r: sep(card_groups(d), "\u3000"),
    "fullwidth_digits": lambda d, r: sep(card_groups(d), " ").translate(FULLWIDTH),
    "arabic_indic_digits": lambda d, r: sep(card_groups(d), " ").translate(ARABIC),
    "devanagari_digits": lambda d, r: d.translate(DEVANAGARI),
    "math_bold_digits": lambda d, r: sep(card_groups(d), " ").translate(MATH_BOLD),
    "superscript_digits": lambda d, r: d.translate(SUPERSCRIPT),
    "zero_width": lambda d, r: zero_width(d, r),
    "combining_marks": lambda d, r: zalgo(sep(card_groups(d), " ")),
    "glued_to_text": lambda d, r: f"card#{d}exp{r.randint(1, 12):02d}{r.randint(26, 31)}",
    "with_expiry": lambda d, r: sep(card_groups(d), " ") + f" {r.randint(1, 12):02d}/{r.randint(26, 31)}",
    "single_digit_groups": lambda d, r: " ".join(d),
    "mixed_separators": lambda d, r: "".join(g + s for g, s in zip(card_groups(d), ["-", " ", ".", "/", ""])),
    "control_chars": lambda d, r: "\x00".join(card_groups(d)),
}
IBAN_FORMATS_TEXT: dict[str, Callable[[str, random.Random], str]] = {
    "compact": lambda x, r: x,
    "spaces": lambda x, r: " ".join(x[i : i + 4] for i in range(0, len(x), 4)),
    "dashes": lambda x, r: "-".join(x[i : i + 4] for i in range(0, len(x), 4)),
    "nbsp": lambda x, r: "\u00a0".join(x[i : i + 4] for i in range(0, len(x), 4)),
    "en_dash": lambda x, r: "\u2013".join(x[i : i + 4] for i in range(0, len(x), 4)),
    "dots": lambda x, r: ".".join(x[i : i + 4] for i in range(0, len(x), 4)),
    "lowercase": lambda x, r: " ".join(x[i : i + 4] for i in range(0, len(x), 4)).lower(),
    "fullwidth": lambda x, r: "".join(chr(ord(c) + 0xFEE0) for c in x),
    "zero_width": lambda x, r: zero_width(x, r),
    "glued_to_text": lambda x, r: f"IBAN:{x}",
}
SSN_FORMATS: dict[str, Callable[[str, random.Random], str]] = {
    "dashes": lambda s, r: f"{s[:3]}-{s[3:5]}-{s[5:]}",
    "dots": lambda s, r: f"{s[:3]}.{s[3:5]}.{s[5:]}",
    "en_dash": lambda s, r: f"{s[:3]}\u2013{s[3:5]}\u2013{s[5:]}",
    "spaces": lambda s, r: f"{s[:3]} {s[3:5]} {s[5:]}",
    "slashes": lambda s, r: f"{s[:3]}/{s[3:5]}/{s[5:]}",
    "nbsp": lambda s, r: f"{s[:3]}\u00a0{s[3:5]}\u00a0{s[5:]}",
    "fullwidth_digits": lambda s, r: f"{s[:3]}-{s[3:5]}-{s[5:]}".translate(FULLWIDTH),
    "arabic_indic_digits": lambda s, r: f"{s[:3]}-{s[3:5]}-{s[5:]}".translate(ARABIC),
    "zero_width": lambda s, r: zero_width(f"{s[:3]}-{s[3:5]}-{s[5:]}", r),
    "keyword_bare": lambda s, r: f"SSN {s}",
    "keyword_mixed_separators": lambda s, r: f"social security number {s[:3]}-{s[3:5]} {s[5:]}",
}
NINO_FORMATS: dict[str, Callable[[str, random.Random], str]] = {
    "spaced": lambda n, r: f"{n[:2]} {n[2:4]} {n[4:6]} {n[6:8]} {n[8]}",
    "compact": lambda n, r: n,
    "dashes": lambda n, r: f"{n[:2]}-{n[2:4]}-{n[4:6]}-{n[6:8]}-{n[8]}",
    "nbsp": lambda n, r: "\u00a0".join([n[:2], n[2:4], n[4:6], n[6:8], n[8]]),
    "fullwidth": lambda n, r: "".join(chr(ord(c) + 0xFEE0) for c in n),
    "keyword_lowercase": lambda n, r: f"my national insurance number is {n.lower()}",
    "keyword_no_suffix": lambda n, r: f"NI number: {n[:8]}",
    "zero_width": lambda n, r: zero_width(n, r),
}
EMAIL_PARTS = [("müller", "firma.de"), ("info", "bücher-shop.de"), ("josé.garcía", "correo.es"),
               ("ivan.petrov", "почта.рф"), ("li.wei", "example.cn"), ("a.nguyen", "mail.vn"),
               ("k.weber", "gmx.de"), ("sam+news", "gmail.com"), ("priya.s", "hotmail.co.in")]
EMAIL_FORMATS: dict[str, Callable[[tuple[str, str], random.Random], str]] = {
    "plain": lambda p, r: f"{p[0]}@{p[1]}",
    "uppercase": lambda p, r: f"{p[0]}@{p[1]}".upper(),
    "idn_local": lambda p, r: f"{r.choice(['müller', 'josé', 'søren', 'çağrı', 'françois'])}@{p[1]}",
    "idn_domain": lambda p, r: f"{p[0]}@{r.choice(['bücher-shop.de', 'müller-bau.at', 'почта.рф', '例え.jp'])}",
    "punycode": lambda p, r: f"{p[0]}@xn--bcher-kva.de",
    "fullwidth_at": lambda p, r: f"{p[0]}＠{p[1]}",
    "small_at": lambda p, r: f"{p[0]}\ufe6b{p[1]}",
    "percent_40": lambda p, r: f"{p[0]}%40{p[1]}",
    "bracket_at_dot": lambda p, r: f"{p[0]} [at] {p[1].replace('.', ' [dot] ')}",
    "paren_at": lambda p, r: f"{p[0]}(at){p[1]}",
    "spelled_out": lambda p, r: f"{r.choice(['john', 'maria', 'kenji'])} dot {r.choice(['doe', 'silva'])} at gmail dot com",
    "zero_width": lambda p, r: zero_width(f"{p[0]}@{p[1]}", r),
    "fullwidth_letters": lambda p, r: "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c
                                               for c in f"{p[0]}@{p[1]}"),
    "mailto": lambda p, r: f"mailto:{p[0]}@{p[1]}?subject=hi",
}


def _fmt(n: phonenumbers.PhoneNumber, f: int) -> str:
    return phonenumbers.format_number(n, f)


PHONE_FORMATS: dict[str, Callable[[random.Random], str]] = {
    "e164": lambda r: _fmt(phone(r), PhoneNumberFormat.E164),
    "international": lambda r: _fmt(phone(r), PhoneNumberFormat.INTERNATIONAL),
    "paren_plus_cc": lambda r: (lambda s: "(" + s.replace(" ", ") ", 1))(_fmt(phone(r), PhoneNumberFormat.INTERNATIONAL)),
    "double_zero_prefix": lambda r: "00" + _fmt(phone(r, "GB"), PhoneNumberFormat.INTERNATIONAL)[1:],
    "de_telefonnummer": lambda r: "Telefonnummer: " + _fmt(phone(r, "DE"), PhoneNumberFormat.NATIONAL),
    "de_handynummer": lambda r: "Handynummer " + _fmt(phone(r, "DE"), PhoneNumberFormat.NATIONAL),
    "de_mobilnummer": lambda r: "meine Mobilnummer lautet " + _fmt(phone(r, "DE"), PhoneNumberFormat.NATIONAL),
    "uk_national": lambda r: "call me on " + _fmt(phone(r, "GB"), PhoneNumberFormat.NATIONAL),
    "fr_national_pairs": lambda r: "appelle-moi au " + _fmt(phone(r, "FR"), PhoneNumberFormat.NATIONAL),
    "es_national": lambda r: "mi teléfono es " + _fmt(phone(r, "ES"), PhoneNumberFormat.NATIONAL),
    "us_national": lambda r: _fmt(phone(r, "US"), PhoneNumberFormat.NATIONAL),
    "us_dashes": lambda r: _fmt(phone(r, "US"), PhoneNumberFormat.NATIONAL).replace("(", "").replace(") ", "-"),
    "nbsp": lambda r: _fmt(phone(r), PhoneNumberFormat.INTERNATIONAL).replace(" ", "\u00a0"),
    "en_dash": lambda r: _fmt(phone(r), PhoneNumberFormat.INTERNATIONAL).replace(" ", "\u2013"),
    "fullwidth_digits": lambda r: _fmt(phone(r), PhoneNumberFormat.INTERNATIONAL).translate(FULLWIDTH),
    "arabic_indic_digits": lambda r: _fmt(phone(r), PhoneNumberFormat.INTERNATIONAL).translate(ARABIC),
    "zero_width": lambda r: zero_width(_fmt(phone(r), PhoneNumberFormat.INTERNATIONAL), r),
    "keyword_ja": lambda r: "電話番号 " + _fmt(phone(r, "JP"), PhoneNumberFormat.NATIONAL),
}

# ----------------------------------------------------------------------------------------------------------
# Fields: where the text goes in a request body
# ----------------------------------------------------------------------------------------------------------
def base(rng: random.Random) -> dict[str, Any]:
    return {"model": "kronaxis/auto", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": rng.choice(["Hi!", "Summarise the notes.", "What should I do next?"])},
    ], "temperature": 0.2}


def tool(description: str = "Look up an order.", parameters: dict | None = None) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "lookup_order", "description": description,
                                             "parameters": parameters or {"type": "object", "properties": {
                                                 "order_id": {"type": "string"}}}}}


def _escaped_json(note: str) -> str:
    """{"note": ...} with every character of the value \\u-escaped (UTF-16), as a client may send arguments."""
    units = note.encode("utf-16-be")
    return '{"note": "' + "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2)) + '"}'



FIELDS: dict[str, Callable[[dict, str], None]] = {
    "user_content": lambda b, t: b["messages"].append({"role": "user", "content": t}),
    "system_content": lambda b, t: b["messages"][0].update(content=t),
    "assistant_content": lambda b, t: b["messages"].append({"role": "assistant", "content": t}),
    "content_part": lambda b, t: b["messages"].append({"role": "user", "content": [{"type": "text", "text": t}]}),
    "message_name": lambda b, t: b["messages"][1].update(name=t),
    "role": lambda b, t: b["messages"].append({"role": t, "content": "hello"}),
    "tool_description": lambda b, t: b.update(tools=[tool(description=t)]),
    "tool_parameters": lambda b, t: b.update(tools=[tool(parameters={"type": "object", "properties": {
        "note": {"type": "string", "description": t}}})]),
    "tool_parameter_default": lambda b, t: b.update(tools=[tool(parameters={"type": "object", "properties": {
        "note": {"type": "string", "default": t, "enum": [t, "none"]}}})]),
    "response_format": lambda b, t: b.update(response_format={"type": "json_schema", "json_schema": {
        "name": "answer", "schema": {"type": "object", "description": t}}}),
    "user": lambda b, t: b.update(user=t),
    "metadata": lambda b, t: b.update(metadata={"note": t}),
    "dict_key": lambda b, t: b.update(metadata={t: "1"}),
    "stop": lambda b, t: b.update(stop=["\n\n", t]),
    "prompt": lambda b, t: (b.pop("messages"), b.update(prompt=t)),
    "tool_call_arguments": lambda b, t: b["messages"].append({"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "lookup_order", "arguments": json.dumps({"note": t})}}]}),
    "tool_call_arguments_escaped": lambda b, t: b["messages"].append({"role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup_order",
                                                                         "arguments": _escaped_json(t)}}]}),
    "split_two_messages": None,  # special: the value itself split in the middle over two user turns
}
SPLIT_WITH_WORDS = "split_with_words"  # digits classes: "... starts 4111 1111" / "and ends 1111 1111 ..."
NUMBER_FIELD = "json_number"  # numeric values as JSON numbers under a telling key


def place(body: dict, field: str, text: str, value: str, rng: random.Random) -> None:
    if field == "split_two_messages":
        cut = max(1, len(value) // 2)
        i = text.index(value) if value in text else len(text)
        body["messages"] += [{"role": "user", "content": text[:i] + value[:cut]},
                             {"role": "user", "content": value[cut:] + text[i + len(value):]}]
    else:
        FIELDS[field](body, text)


# ----------------------------------------------------------------------------------------------------------
# Benign look-alikes (must not be flagged)
# ----------------------------------------------------------------------------------------------------------
def ean13(rng: random.Random) -> str:
    body = rand(rng, string.digits, 12)
    s = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(body))
    return body + str((10 - s % 10) % 10)


def isbn13(rng: random.Random) -> str:
    body = "978" + rand(rng, string.digits, 9)
    s = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(body))
    d = body + str((10 - s % 10) % 10)
    return f"{d[:3]}-{d[3]}-{d[4:7]}-{d[7:12]}-{d[12]}"


def luhn_invalid_16(rng: random.Random) -> str:
    d = card(rng)
    while len(d) != 16:
        d = card(rng)
    return d[:-1] + str((int(d[-1]) + rng.randint(1, 9)) % 10)


BENIGN: dict[str, Callable[[random.Random], str]] = {
    "order_number_luhn_invalid": lambda r: "Order " + " ".join(card_groups(luhn_invalid_16(r))) + " has not shipped yet",
    "amazon_order": lambda r: f"Amazon order {r.randint(100, 999)}-{rand(r, string.digits, 7)}-{rand(r, string.digits, 7)} arrived damaged",
    "isbn13": lambda r: f"ISBN {isbn13(r)} - who is the publisher?",
    "isbn13_compact": lambda r: f"Look up ISBN {isbn13(r).replace('-', '')} please",
    "ean13_barcode": lambda r: f"The barcode on the box reads {ean13(r)}; which country is that?",
    "version_string": lambda r: f"Upgrade from v{r.randint(1, 12)}.{r.randint(0, 20)}.{r.randint(1000, 9999)} to the latest release",
    "calendar_version": lambda r: f"Release 2024.{r.randint(1, 12):02d}.{r.randint(1, 28):02d}.{r.randint(1000, 9999)} is out",
    "ipv4": lambda r: f"Server {r.randint(10, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)} listens on port {r.randint(1024, 65535)}",
    "ipv6": lambda r: f"Ping fe80::{rand(r, '0123456789abcdef', 4)}:{rand(r, '0123456789abcdef', 4)}:{rand(r, '0123456789abcdef', 4)}",
    "date_range": lambda r: f"Report for {r.randint(1, 28):02d}.{r.randint(1, 12):02d}.2023-{r.randint(1, 28):02d}.{r.randint(1, 12):02d}.2024",
    "iso_datetime": lambda r: f"The meeting is on 2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:30:00Z",
    "unix_ms_timestamp": lambda r: f"Convert {r.randint(1600000000000, 1800000000000)} ms to a date",
    "maths_product": lambda r: f"Compute {r.randint(1000, 9999)} * {r.randint(1000, 9999)} - {r.randint(100, 999)} step by step",
    "maths_big_number": lambda r: f"What is {r.randint(1, 999):,} + {r.randint(1000000, 999999999):,}?",
    "maths_decimal": lambda r: f"Round 3.{rand(r, string.digits, 16)} to four places",
    "number_list": lambda r: "Sort these: " + ", ".join(str(r.randint(1, 99)) for _ in range(12)),
    "lottery_pairs": lambda r: "Lottery draw: " + " ".join(f"{x:02d}" for x in sorted(r.sample(range(1, 50), 5))),
    "uuid": lambda r: f"request id {rand(r, '0123456789abcdef', 8)}-{rand(r, '0123456789abcdef', 4)}-4{rand(r, '0123456789abcdef', 3)}-a{rand(r, '0123456789abcdef', 3)}-{rand(r, '0123456789abcdef', 12)} timed out",
    "git_sha": lambda r: f"commit {rand(r, '0123456789abcdef', 40)} broke the build",
    "sha256": lambda r: f"sha256 {rand(r, '0123456789abcdef', 64)}",
    "ups_tracking": lambda r: f"UPS tracking 1Z{rand(r, string.ascii_uppercase + string.digits, 16)} shows no update",
    "usps_tracking": lambda r: "USPS 9400 " + " ".join(rand(r, string.digits, 4) for _ in range(4)) + " " + rand(r, string.digits, 2),
    "price": lambda r: f"The price rose from ${r.randint(1, 9)},{r.randint(100, 999)}.99 to ${r.randint(1, 9)},{r.randint(100, 999)}.00",
    "zip_plus_4": lambda r: f"Seattle, WA {r.randint(98001, 98199)}-{r.randint(1000, 9999)} - which county?",
    "coordinates": lambda r: f"Coordinates {r.uniform(-80, 80):.4f}, {r.uniform(-170, 170):.4f} - which city?",
    "score_math_dashes": lambda r: f"What is {r.randint(200, 999)} - {r.randint(100, 999)} - {r.randint(1000, 9999)}?",
    "phone_model": lambda r: f"Phone model: iPhone {r.randint(11, 16)} Pro {r.choice([128, 256, 512])}GB, worth it?",
    "invalid_iban_check": lambda r: (lambda x: f"{x[:2]}00 {x[4:8]} {x[8:12]} {x[12:]} fails validation - why?")(iban(r)),
    "bic": lambda r: f"SWIFT/BIC {r.choice(['DEUTDEFF500', 'COBADEFFXXX', 'BNPAFRPPXXX', 'NWBKGB2L'])} - which branch?",
    "uk_postcode": lambda r: f"Postcode {r.choice(['SW1A 1AA', 'EC1A 1BB', 'M1 1AE', 'B33 8TH'])} is in the UK",
    "product_code": lambda r: f"Model number XY{r.randint(10, 99)} {r.randint(1000, 9999)} {r.randint(1000, 9999)} ABCD is discontinued",
    "invalid_ssn_area": lambda r: f"Is {r.choice(['000', '666', '912'])}-{r.randint(10, 99)}-{r.randint(1000, 9999)} a valid SSN?",
    "part_number": lambda r: f"Part number {r.randint(100, 999)}-{r.randint(10, 99)}-{r.randint(10000, 99999)} is out of stock",
    "nino_placeholder": lambda r: "The HMRC example NI number QQ 12 34 56 C is not a real one",
    "nino_bad_prefix": lambda r: f"{r.choice(['GB', 'BG', 'NK', 'TN', 'ZZ'])} {r.randint(10, 99)} {r.randint(10, 99)} {r.randint(10, 99)} A was never issued",
    "at_mention": lambda r: f"Follow us @{r.choice(['kronaxis_ai', 'openai', 'pytorch'])} for updates",
    "npm_version": lambda r: f"npm install lodash@4.17.{r.randint(10, 21)} breaks the build",
    "matmul": lambda r: "y = x @ self.weight + self.bias",
    "decorator": lambda r: "@functools.lru_cache(maxsize=128) - when should I use it?",
    "docker_digest": lambda r: f"docker pull nginx@sha256:{rand(r, '0123456789abcdef', 64)}",
    "placeholder_key": lambda r: f"api_key: sk-{'x' * r.randint(20, 40)}",
    "env_reference": lambda r: 'api_key = os.environ["OPENAI_API_KEY"]',
    "getpass": lambda r: "password = getpass.getpass('Password: ')",
    "tokenizer_call": lambda r: "token = tokenizer(text, return_tensors='pt')",
    "bearer_template": lambda r: 'headers = {"Authorization": f"Bearer {token}"}',
    "akia_placeholder": lambda r: "AKIA" + "X" * 16 + " is the placeholder in the docs",
    "masked_password": lambda r: "Password: ********",
    "max_tokens": lambda r: f"max_tokens: {r.randint(256, 8192)}",
    "primary_key": lambda r: "id = Column(Integer, primary_key=True)",
    "prose_secret": lambda r: "The secret to good bread is a long cold fermentation.",
    "forgot_password_de": lambda r: "Ich habe mein Passwort vergessen, wie setze ich es zurück?",
    "forgot_password_fr": lambda r: "J'ai oublié mon mot de passe, que faire ?",
    "forgot_password_es": lambda r: "¿Cómo cambio mi contraseña en Gmail?",
    "forgot_password_ru": lambda r: "Как сменить пароль в Windows?",
    "key_question": lambda r: "The key is in the drawer next to the printer",
    "card_question": lambda r: "How do credit card networks detect fraud?",
    "iban_question": lambda r: "Explain how the IBAN check digits are computed.",
    "phone_question": lambda r: "Telefonnummern in Deutschland: wie viele Stellen hat eine Vorwahl?",
    "gsm8k_style": lambda r: f"Natalia sold {r.randint(10, 99)} clips in April and half as many in May. How many in total?",
    "multilingual_question": lambda r: r.choice(["¿Cuál es la capital de Australia?", "日本の首都はどこですか？",
                                                 "Quelle est la capitale du Canada ?", "Какая столица Италии?"]),
    "timestamp_ids": lambda r: f"job {r.randint(1700000000, 1800000000)} finished after {r.randint(10, 999)} s",
    "hex_colours": lambda r: f"colours #{rand(r, '0123456789abcdef', 6)} and #{rand(r, '0123456789abcdef', 6)}",
}
BENIGN_FIELDS = ("user_content", "system_content", "tool_description", "tool_parameters", "response_format",
                 "metadata", "stop", "prompt", "dict_key", "message_name")

# ----------------------------------------------------------------------------------------------------------
# Assembly
# ----------------------------------------------------------------------------------------------------------
FIELD_NAMES = [f for f in FIELDS] + [SPLIT_WITH_WORDS]
DIGIT_CLASSES = {"credit_card", "ssn", "phone"}


def _values(cls: str, fmt: str, rng: random.Random) -> tuple[str, str | None]:
    """(text of the value in its format, its bare digits for json_number or None)."""
    if cls == "credit_card":
        d = card(rng)
        return CARD_FORMATS[fmt](d, rng), d if fmt == "plain" else None
    if cls == "iban":
        return IBAN_FORMATS_TEXT[fmt](iban(rng), rng), None
    if cls == "ssn":
        s = ssn(rng)
        return SSN_FORMATS[fmt](s, rng), s if fmt == "dashes" else None
    if cls == "uk_nino":
        return NINO_FORMATS[fmt](nino(rng), rng), None
    if cls == "email":
        return EMAIL_FORMATS[fmt](rng.choice(EMAIL_PARTS), rng), None
    if cls == "phone":
        v = PHONE_FORMATS[fmt](rng)
        return v, v.lstrip("+") if fmt == "e164" else None
    return SECRETS[fmt](rng), None


FORMATS = {"credit_card": CARD_FORMATS, "iban": IBAN_FORMATS_TEXT, "ssn": SSN_FORMATS, "uk_nino": NINO_FORMATS,
           "email": EMAIL_FORMATS, "phone": PHONE_FORMATS, "secret": SECRETS}
NUMBER_KEYS = {"credit_card": "card_number", "ssn": "ssn", "phone": "phone"}


def sensitive_rows(rng: random.Random) -> list[dict[str, Any]]:
    rows, k = [], 0
    for cls, formats in FORMATS.items():
        for fmt in formats:
            # split with words in between: digit classes whose format needs no keyword (the cut would split it)
            standalone = cls in DIGIT_CLASSES and not any(c.isalpha() for c in _values(cls, fmt, random.Random(0))[0])
            fields = [f for f in FIELD_NAMES if f != SPLIT_WITH_WORDS or standalone]
            chosen = [fields[(k + j) % len(fields)] for j in range(FIELDS_PER_FORMAT)]
            k += FIELDS_PER_FORMAT
            text0, digits = _values(cls, fmt, rng)
            if digits is not None:
                chosen.append(NUMBER_FIELD)
            for field in dict.fromkeys(chosen):
                locale = LOCALES[len(rows) % len(LOCALES)]
                value, _ = _values(cls, fmt, rng)
                body = base(rng)
                if field == NUMBER_FIELD:
                    body["metadata"] = {NUMBER_KEYS[cls]: int(digits)}
                elif field == SPLIT_WITH_WORDS:
                    cut = len(value) // 2
                    body["messages"] += [{"role": "user", "content": f"The first part is {value[:cut]}"},
                                         {"role": "user", "content": f"and the rest is {value[cut:]}, thanks."}]
                else:
                    place(body, field, rng.choice(FRAMES[locale]).format(value), value, rng)
                rows.append({"id": f"{cls}/{fmt}/{field}/{locale}", "class": cls, "format": fmt, "field": field,
                             "locale": locale, "expected_classes": [cls], "body": body})
    return rows


def benign_rows(rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for j, (kind, make) in enumerate(BENIGN.items()):
        for i in range(6):
            field = BENIGN_FIELDS[(j + i) % len(BENIGN_FIELDS)]
            body = base(rng)
            place(body, field, make(rng), "", rng)
            rows.append({"id": f"benign/{kind}/{field}/{i}", "class": "benign", "format": kind, "field": field,
                         "locale": "mixed", "expected_classes": [], "body": body})
    return rows


def build(seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = sensitive_rows(rng) + benign_rows(rng)
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids), "duplicate row ids"
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = build(args.seed)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    n_sens = sum(r["class"] != "benign" for r in rows)
    print(f"wrote {len(rows)} rows ({n_sens} sensitive, {len(rows) - n_sens} benign) to {args.out}")


if __name__ == "__main__":
    main()
