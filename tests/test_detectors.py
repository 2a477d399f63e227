"""Format-proof detectors (kronaxis_lab/serving/detectors.py): the generated adversarial corpus, the labelled
corpus, normalisation (against a per-character reference), the body walk, values split over messages, property-
based fuzzing of random requests, and the construction that keeps scanning linear (RE2 + bounded repetition +
bounded Python work per text). Speed itself is measured by benchmarks/governance.py, not asserted here."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import random
import string
from collections import Counter

import phonenumbers
import pytest
from hydra.utils import instantiate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from stdnum import iban as stdnum_iban

from kronaxis_lab.serving import detectors as det
from kronaxis_lab.serving.detectors import (
    PATTERNS,
    BodyScanner,
    CardDetector,
    IbanDetector,
    NinoDetector,
    PhoneDetector,
    SecretDetector,
    SsnDetector,
    body_leaves,
    body_strings,
    body_texts,
    default_detectors,
    is_combining_mark,
    map_char,
    normalise,
)
from kronaxis_lab.serving.governance import GovernanceConfigError, GovernancePolicy, luhn_valid
from tests.conftest import CONFIGS, FIXTURES, ROOT

ADVERSARIAL = FIXTURES / "governance_adversarial.jsonl"
CORPUS = FIXTURES / "governance_corpus.jsonl"
# KRONAXIS_FUZZ_EXAMPLES=5000 KRONAXIS_FUZZ_RANDOM=1 for a deeper, non-deterministic run
FUZZ = settings(max_examples=int(os.environ.get("KRONAXIS_FUZZ_EXAMPLES", 150)), deadline=None,
                derandomize=not os.environ.get("KRONAXIS_FUZZ_RANDOM"), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@functools.cache
def _load_script():
    spec = importlib.util.spec_from_file_location("make_governance_corpus", ROOT / "scripts" / "make_governance_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def scanner() -> BodyScanner:
    return BodyScanner(default_detectors())


@pytest.fixture(scope="module")
def adversarial() -> list[dict]:
    return [json.loads(line) for line in ADVERSARIAL.open(encoding="utf-8")]


def chat(text: str, **extra) -> dict:
    return {"model": "kronaxis/auto", "messages": [{"role": "user", "content": text}], **extra}


# -- the generated adversarial corpus -----------------------------------------------------------------------
def test_committed_corpus_is_what_the_script_generates(adversarial):
    rows = _load_script().build(seed=0)
    assert [json.loads(json.dumps(r, ensure_ascii=False)) for r in rows] == adversarial


def test_corpus_covers_class_format_field_locale(adversarial):
    sensitive = [r for r in adversarial if r["class"] != "benign"]
    assert len(adversarial) >= 1000 and len(sensitive) >= 800 and len(adversarial) - len(sensitive) >= 300
    fields = {r["field"] for r in sensitive}
    for f in ("tool_description", "tool_parameters", "response_format", "user", "metadata", "stop", "prompt",
              "role", "message_name", "dict_key", "json_number", "split_two_messages", "split_with_words",
              "tool_call_arguments", "tool_call_arguments_escaped"):
        assert f in fields, f
    for cls in ("credit_card", "iban", "ssn", "uk_nino", "email", "phone", "secret"):
        rows = [r for r in sensitive if r["class"] == cls]
        assert len({r["field"] for r in rows}) >= 10 and len({r["locale"] for r in rows}) >= 6, cls


def test_every_sensitive_row_detected_and_no_benign_row_flagged(scanner, adversarial):
    found = [set(c) for c in scanner.count_many([r["body"] for r in adversarial])]
    missed = [r["id"] for r, f in zip(adversarial, found) if not set(r["expected_classes"]) <= f]
    flagged = [(r["id"], f) for r, f in zip(adversarial, found) if r["class"] == "benign" and f]
    assert missed == [] and flagged == []


def test_labelled_corpus_fully_detected(scanner):
    rows = [json.loads(line) for line in CORPUS.open(encoding="utf-8")]
    found = [set(c) for c in scanner.count_many([chat(r["text"]) for r in rows])]
    wrong = [(r["text"][:60], r["classes"], sorted(f)) for r, f in zip(rows, found) if set(r["classes"]) != f]
    assert wrong == []


# -- normalisation ------------------------------------------------------------------------------------------
def reference_normalise(text: str) -> str:
    """Per-character reference of `normalise`: map_char, combining marks on ASCII bases dropped, %40 → @."""
    out, base_ascii = [], True
    for ch in text:
        mapped = map_char(ch)
        if 0x80 <= ord(ch) < 0x40000 and mapped == ch and is_combining_mark(ch):  # planes 0-3 are tabulated
            if base_ascii:
                continue
        else:
            base_ascii = ord(ch) < 0x80
        out.append(mapped)
    return "".join(out).replace("%40", "@")


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("４１１１\u00a0１１１１", "4111 1111"),  # full-width digits, NBSP
        ("٤١١١–١١١١", "4111-1111"),  # Arabic-Indic digits, en-dash
        ("४१११ 𝟏𝟏𝟏𝟏", "4111 1111"),  # Devanagari, mathematical bold
        ("41\u200b11\u2060 11\ufeff11\u00ad", "4111 1111"),  # zero-width characters, soft hyphen
        ("4̲1̲1̲1̲", "4111"),  # combining marks on ASCII digits
        ("müller＠firma.de", "müller@firma.de"),
        ("info%40b\u00fccher-shop.de", "info@bücher-shop.de"),
        ("a\u2009b\u3000c\td", "a b c\td"),  # thin and ideographic spaces; tabs stay
        ("½ ①", "1/2 1"),
        ("p\x00ass\x1bword", "password"),  # control characters
        ("tag\U000e0041\U000e0042s", "tags"),  # invisible tag characters
    ],
)
def test_normalise_examples(raw, norm):
    assert normalise(raw)[0] == norm == reference_normalise(raw)


_TEXT = st.text(st.one_of(
    st.characters(codec="utf-8"),
    st.sampled_from(list("0123456789%40@ -.\u00a0\u2013\u200b\u200d\ufeff\u0332\u0301٣४１＠\x00")),
), max_size=80)


@FUZZ
@given(_TEXT)
def test_normalise_matches_the_per_character_reference_and_maps_back(text):
    norm, origin = normalise(text)
    assert norm == reference_normalise(text)
    if origin is None:
        assert len(norm) == len(text)
        return
    assert len(origin) == len(norm) + 1 and origin[-1] == len(text)
    assert all(a <= b for a, b in zip(origin, origin[1:]))
    for j, ch in enumerate(norm):
        src = map_char(text[origin[j]])
        assert ch in src or (ch == "@" and src == "%"), (j, ch, text[origin[j]])


def test_spans_refer_to_the_original_text():
    text = "pay with ４１１１\u200b１１１１ １１１１ １１１１ now"
    (s, e), = CardDetector().find(text)
    assert text[s:e] == "４１１１\u200b１１１１ １１１１ １１１１"


# -- what is scanned ----------------------------------------------------------------------------------------
def test_every_forwarded_field_is_scanned():
    body = {
        "model": "m", "user": "U1", "stop": ["S1"], "prompt": "P1", "metadata": {"K1": "M1", "n": 4111},
        "messages": [{"role": "R1", "name": "N1", "content": [{"type": "text", "text": "C1"}]},
                     {"role": "assistant", "content": None, "tool_calls": [
                         {"id": "x", "type": "function", "function": {"name": "f", "arguments": '{"a": "\\u0041\\u0031"}'}}]}],
        "tools": [{"type": "function", "function": {"name": "f", "description": "D1", "parameters": {
            "type": "object", "properties": {"P2": {"type": "string", "description": "PD1", "default": 4.5e15}}}}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"description": "J1"}}},
    }
    strings = set(body_strings(body))
    for s in ("U1", "S1", "P1", "K1", "M1", "4111", "R1", "N1", "C1", "D1", "P2", "PD1", "J1", "A1",
              "4500000000000000", "tool_calls", "response_format"):
        assert s in strings, s
    assert "metadata: " not in strings  # keys and values are separate strings; the scanned text pairs them
    assert "K1: M1" in body_texts(body).apart and "role" not in [leaf.value for leaf in body_leaves(body)]


def test_deep_bodies_do_not_recurse():
    body: dict = {"content": "4111 1111 1111 1111"}
    for _ in range(50_000):
        body = {"x": [body]}
    assert "4111 1111 1111 1111" in body_strings(body)


@pytest.mark.parametrize(
    "parts, cls",
    [
        (["My card is 4111 1111", "1111 1111, thanks"], "credit_card"),
        (["The first part is 4111 1111", "and the rest is 1111 1111."], "credit_card"),  # words in between
        (["IBAN DE89 3704 0044", "0532 0130 00"], "iban"),
        (["write to müller@", "firma.de today"], "email"),
        (["use sk-proj-4fT9xQ2L", "mZ8vR1wK7yB3nC6dH0jS5pE"], "secret"),
        (["my password:", "Maple3975!"], "secret"),
        (["call me on +44 20", "7946 0958"], "phone"),
        (["SSN 536-22", "-1234"], "ssn"),
    ],
)
def test_values_split_across_messages(scanner, parts, cls):
    body = {"messages": [{"role": "user", "content": p} for p in parts]}
    assert cls in scanner.classes(body)
    assert all(cls not in scanner.classes(chat(p)) for p in parts)  # neither half alone


@pytest.mark.parametrize(
    "parts",
    [
        ["You are a helpful assistant.", "@functools.lru_cache(maxsize=128) - when?"],
        ["max_tokens: 1551", "Summarise the notes."],
        ["Password: ********", "Hi!"],
        ["RC 06 79 31 C", "RC 06 79 31 C"],
        ["The answer is 4111 1111", "Thanks! And 1111 1112?"],
    ],
)
def test_unrelated_neighbours_are_not_joined(scanner, parts):
    body = {"messages": [{"role": "user", "content": p} for p in parts]}
    singles = set().union(*(scanner.classes(chat(p)) for p in parts))
    assert scanner.classes(body) == singles


# -- detectors ----------------------------------------------------------------------------------------------
def _card(rng: random.Random) -> str:
    body = rng.choice(["4", "51", "37", "6011", "3528", "2221", "62"])
    body += "".join(rng.choice(string.digits) for _ in range(15 - len(body)))
    return next(body + c for c in string.digits if luhn_valid(body + c))


def test_luhn_catches_every_single_digit_error():
    rng, d = random.Random(3), CardDetector()
    for _ in range(200):
        c = _card(rng)
        i = rng.randrange(len(c))
        bad = c[:i] + str((int(c[i]) + rng.randint(1, 9)) % 10) + c[i + 1 :]
        assert d.find(f"card {c}") and not d.find(f"card {bad}")


@pytest.mark.parametrize(
    "text, found",
    [
        ("4111111111111111exp1227", True),  # glued to text
        ("4111 1111 1111 1111 12/27", True),  # expiry after
        ("ref 1 4111-1111-1111-1111", True),  # a number before
        ("4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1", True),  # one digit per group
        ("Amazon order 112-4567890-1234567", False),  # not a printed card layout inside a longer chain
        ("barcode 4006381333931", False),  # 13 digits (EAN-13) need a card word
        ("visa 4222222222222", True),
        ("3.1415926535897932", False),
    ],
)
def test_card_shapes(text, found):
    assert bool(CardDetector().find(text)) is found


def test_iban_validated_by_stdnum():
    d = IbanDetector()
    assert d.find("DE89 3704 0044 0532 0130 00") and d.find("gb29-nwbk-6016-1331-9268-19")
    assert not d.find("DE89 3704 0044 0532 0130 01")  # check digits
    assert not d.find("DE00 3704 0044 0532 0130 00")
    assert d.find("AT12 DE89 3704 0044 0532 0130 00")  # a decoy in front does not swallow the real one


@pytest.mark.parametrize(
    "text, found",
    [
        ("AB 12 34 56 C", True), ("AB123456C", True), ("QQ 12 34 56 C", False), ("GB 12 34 56 A", False),
        ("TN123456A", False), ("ab123456c", False), ("my NI number is ab123456c", True),
        ("national insurance: AB 12 34 56", True), ("AB123456", False),
    ],
)
def test_nino_rules(text, found):
    assert bool(NinoDetector().find(text)) is found


@pytest.mark.parametrize(
    "text, found",
    [
        ("123.45.6789", True), ("123–45–6789", True), ("123/45/6789", True), ("123-45 6789", False),
        ("SSN 123-45 6789", True), ("ssn: 123456789", True), ("routing 123456789", False),
        ("666-12-3456", False), ("1-123-45-6789", False),
    ],
)
def test_ssn_rules(text, found):
    assert bool(SsnDetector().find(text)) is found


@pytest.mark.parametrize(
    "text, found",
    [
        ("Telefonnummer: 030 12345678", True), ("Handynummer 0151 23456789", True), ("(+44) 20 7946 0958", True),
        ("0044 20 7946 0958", True), ("Ring me on 020 7946 0321", True), ("電話 03-1234-5678", True),
        ("(415) 555-0132", True), ("+٤٤ ٢٠ ٧٩٤٦ ٠٩٥٨", True),
        ("Lottery draw: 07 12 23 34 45", False), ("The price is 1 415 555 dollars", False),
        ("What is 555 - 123 - 4567?", False), ("Hotel room 1234567", False), ("Version 10.4.1234", False),
    ],
)
def test_phone_shapes(text, found):
    assert bool(PhoneDetector().find(text)) is found


@pytest.mark.parametrize(
    "text, found",
    [
        ("https://hooks.slack.com/services/T0ABCDEFG/B0ABCDEFGHI/abcdefghijklmnopqrstuvwx", True),
        ("whsec_4eC39HqLyjWDarjtT1zdp7dcMGJ8Q2xR", True),
        ("123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0", True),
        ("Authorization: Token 9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b", True),
        ("AKIAQWERTYUIOPASDFGH", True),  # all letters
        ("AKIAXXXXXXXXXXXXXXXX", False),
        ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", True),  # bare AWS secret access key
        ("Passwort: Sommer2024!", True), ("mot de passe : Tr0ub4dor&3", True), ("contraseña: Maple3975!", True),
        ("пароль: Orchid2492?", True), ("パスワード：Falcon77#", True), ("Kennwort = Kirsche12$", True),
        ("Ich habe mein Passwort vergessen", False), ("password = getpass.getpass()", False),
        ('headers = {"Authorization": f"Bearer {token}"}', False), ("compass = north123", False),
    ],
)
def test_secret_shapes(text, found):
    assert bool(SecretDetector().find(text)) is found


# -- property-based: plant generated values in random fields of random valid requests -----------------------
WORDS = ["please", "summarise", "the", "notes", "order", "for", "tomorrow", "meeting", "agenda", "draft", "reply",
         "what", "is", "a", "good", "plan", "Bitte", "merci", "gracias", "thanks", "12", "7", "2024", "3.5"]
_words = st.lists(st.sampled_from(WORDS), min_size=0, max_size=8).map(" ".join)


@st.composite
def requests(draw):
    """A random valid chat-completions body and the list of its string slots (setter functions)."""
    n = draw(st.integers(1, 4))
    msgs = [{"role": draw(st.sampled_from(["system", "user", "assistant"])), "content": draw(_words)}
            for _ in range(n)]
    body = {"model": "kronaxis/auto", "messages": msgs}
    slots = [lambda v, m=m: m.update(content=f"{m['content']} {v}".strip()) for m in msgs]
    slots.append(lambda v, m=msgs[0]: m.update(name=v))
    if draw(st.booleans()):
        body["tools"] = [{"type": "function", "function": {"name": "t", "description": draw(_words), "parameters": {
            "type": "object", "properties": {"q": {"type": "string", "description": draw(_words)}}}}}]
        fn = body["tools"][0]["function"]
        slots += [lambda v, fn=fn: fn.update(description=v),
                  lambda v, fn=fn: fn["parameters"]["properties"]["q"].update(description=v)]
    if draw(st.booleans()):
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
        slots.append(lambda v, b=body: b["response_format"]["json_schema"]["schema"].update(description=v))
    if draw(st.booleans()):
        body["metadata"] = {"tag": draw(_words)}
        slots += [lambda v, b=body: b["metadata"].update(note=v), lambda v, b=body: b["metadata"].update({v: "x"})]
    slots += [lambda v, b=body: b.update(user=v), lambda v, b=body: b.update(stop=[v])]
    return body, slots


@st.composite
def planted(draw):
    """(class, value text) generated by the class's own rules, in a random format."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    cls = draw(st.sampled_from(["credit_card", "iban", "secret", "email"]))
    if cls == "credit_card":
        c = _card(rng)
        sep = draw(st.sampled_from(["", " ", "-", ".", "\u00a0", "\u2013", "_", "\t"]))
        v = sep.join(c[i : i + 4] for i in range(0, 16, 4))
        if draw(st.booleans()):
            v = v.translate(str.maketrans(string.digits, "０１２３４５６７８９" if rng.random() < 0.5 else "٠١٢٣٤٥٦٧٨٩"))
    elif cls == "iban":
        cc = draw(st.sampled_from(["DE", "FR", "GB", "ES", "NL", "IT", "BE", "PL"]))
        mod = _load_script()
        v = next(x for x in (mod.iban(rng) for _ in range(200)) if x.startswith(cc))
        v = draw(st.sampled_from([v, " ".join(v[i : i + 4] for i in range(0, len(v), 4)), v.lower()]))
    elif cls == "secret":
        prefix = draw(st.sampled_from(["sk-proj-", "ghp_", "glpat-", "hf_", "sk_live_", "whsec_", "xoxb-1234-"]))
        alphabet = string.ascii_letters + string.digits
        body = "".join(rng.choice(alphabet) for _ in range(36))
        v = prefix + body[:4] + rng.choice(string.digits) + body[5:]
    else:
        local = draw(st.sampled_from(["jane.doe", "müller", "k.weber+ml", "josé", "li_wei"]))
        domain = draw(st.sampled_from(["example.com", "firma.de", "bücher-shop.de", "mail.co.uk", "почта.рф"]))
        v = draw(st.sampled_from([f"{local}@{domain}", f"{local}＠{domain}", f"{local}%40{domain}"]))
    return cls, v


@FUZZ
@given(requests(), planted(), st.data())
def test_fuzz_planted_values_are_found_in_any_field(scanner, req, value, data):
    body, slots = req
    cls, v = value
    data.draw(st.sampled_from(slots))(v)
    assert cls in scanner.classes(body)


@FUZZ
@given(requests())
def test_fuzz_benign_requests_stay_clean(scanner, req):
    assert scanner.classes(req[0]) == set()


@FUZZ
@given(st.integers(0, 2**32), st.sampled_from(["DE", "GB", "FR", "US", "JP", "IN", "BR", "NL"]))
def test_fuzz_international_phone_numbers(seed, region):
    mod = _load_script()
    n = mod.phone(random.Random(seed), region)
    text = phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    assert PhoneDetector().find(f"reach me at {text} tomorrow")


# -- linear time, by construction ---------------------------------------------------------------------------
def _unbounded_repetition(pattern: str) -> bool:
    """A `*`, `+` or `{n,}` outside character classes (escapes skipped)."""
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            i += 2 if pattern[i + 1 : i + 2] == "]" or pattern[i + 1 : i + 3] == "^]" else 1
            continue
        elif c in "*+":
            return True
        elif c == "{":
            close = pattern.find("}", i)
            inner = pattern[i + 1 : close]
            if "," in inner and inner.split(",")[1] == "" and inner.split(",")[0].isdigit():
                return True
        i += 1
    return False


def test_every_pattern_is_re2_with_bounded_repetition():
    default_detectors()  # the instance-level patterns (keyword lists) register on construction
    assert len(PATTERNS) >= 20
    assert [p for p in PATTERNS if _unbounded_repetition(p)] == []
    assert _unbounded_repetition(r"a+") and _unbounded_repetition(r"x{2,}") and not _unbounded_repetition(r"[+*]{1,3}")
    src = (ROOT / "kronaxis_lab" / "serving" / "detectors.py").read_text()
    assert "import re\n" not in src and "re.compile(" not in src  # no backtracking engine anywhere


def test_python_work_per_text_is_bounded_and_fails_closed(monkeypatch):
    calls = Counter()
    real = stdnum_iban.is_valid
    monkeypatch.setattr(det.stdnum_iban, "is_valid", lambda x, **kw: calls.update(["iban"]) or real(x, **kw))
    decoys = " ".join(f"DE{i % 100:02d} 3704 0044 0532 0130 {i % 97:02d}" for i in range(5000))
    d = IbanDetector(max_candidates=100)
    assert d.find(decoys + " DE89 3704 0044 0532 0130 00") != []  # flagged: the decoys cannot hide it
    assert calls["iban"] <= 101
    parse = phonenumbers.parse
    monkeypatch.setattr(det.phonenumbers, "parse", lambda *a, **k: calls.update(["phone"]) or parse(*a, **k))
    PhoneDetector(max_candidates=50).find(" ".join(f"+44 20 7946 {i:04d}" for i in range(5000)))
    assert calls["phone"] <= 50


def test_floods_are_reported_not_slow(scanner):
    flood = "x1y2 password: Maple3975! " * 20_000  # 500 kB of candidates
    counts = scanner.count(chat(flood))
    assert counts["secret"] <= 65  # spans per text saturate (the policy's overlap merge stays cheap)


def test_config_errors():
    with pytest.raises(GovernanceConfigError, match="max_candidates"):
        IbanDetector(max_candidates=0)
    with pytest.raises(GovernanceConfigError, match="regions"):
        PhoneDetector(regions=["XX"])


def test_default_config_is_default_detectors():
    pol = instantiate(OmegaConf.load(CONFIGS / "governance" / "default.yaml"))
    assert isinstance(pol, GovernancePolicy)
    ref = default_detectors()
    assert [type(d) for d in pol.detectors] == [type(d) for d in ref]
    for a, b in zip(pol.detectors, ref):
        plain = lambda d: {k: v for k, v in vars(d).items() if not k.startswith("_")}  # noqa: E731
        assert plain(a) == plain(b), type(a).__name__


# -- false positives on real benign questions ---------------------------------------------------------------
@pytest.mark.slow
def test_false_positive_rate_on_gsm8k_and_mmlu(scanner, shared_data):
    import gzip

    qs = [json.loads(line)["question"] for line in (shared_data / "gsm8k" / "test.jsonl").open()]
    with gzip.open(shared_data / "mmlu" / "mmlu_test.jsonl.gz", "rt") as f:
        qs += [json.loads(line)["question"] for line in f]
    flagged = [q for q, c in zip(qs, scanner.count_many([chat(q) for q in qs])) if c]
    assert len(qs) > 10_000 and len(flagged) / len(qs) < 0.01, flagged[:10]


# -- cheap pre-tests: each must only skip work that could find nothing ---------------------------------------
_GATE_WORDS = [w.decode() for _, ws in det.SecretDetector.GATES.values() for w in ws]


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(_GATE_WORDS + ["Authorization: Bearer ", "https://u:p@h", "1234567890:AA",
                                                         "AUTHORISATION=", "ToKeN  ", "-----BEGIN RSA PRIVATE KEY-----"]),
                          st.text(st.characters(max_codepoint=0x7f), max_size=12),
                          st.text(alphabet="AAbcdefghiJKMNOPrstuvwxyz0123456789-_:/.@ \n", min_size=8, max_size=60)),
                max_size=8).map("".join), st.booleans())
def test_secret_gates_close_only_patterns_that_cannot_match(text, mangle):
    if mangle:  # case changes and cut literals
        text = "".join(c.swapcase() if i % 3 == 0 else c for i, c in enumerate(text))
    sd = det.SecretDetector()
    data = det.normalised(text).data
    for name in sd.GATES:
        if not sd.gate_open(name, data, data.lower()):
            assert getattr(sd, name).search(data) is None, (name, text)


@FUZZ
@given(st.text(alphabet="0123456789 -./()\t\n,'_\\x+", max_size=80),
       st.sampled_from([("card", det.CARD_SEP, 4, 13), ("phone", det.PHONE_SEP, 3, 7), ("none", det.NO_SEP, 0, 9),
                        ("card", det.CARD_SEP, 1, 5)]))
def test_chain_pattern_is_exactly_a_long_enough_digit_chain(text, case):
    _, sep, gap, n = case
    nt = det.normalised(text)
    ch = det.digit_chains(nt.arr, sep, gap)
    longest = int(ch.c_digits.max()) if ch.c_first.size else 0
    assert (det.chain_pattern(sep, gap, n).search(nt.data) is not None) == (longest >= n), text
