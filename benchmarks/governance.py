"""Governance under attack: recall per class, false positives, and linear-time scans (issue 11).

    .venv/bin/python benchmarks/governance.py [--sizes 1000,10000,100000,1000000] [--repeat 20] \
        [--write benchmarks/governance.md]

Three tables, new detectors (configs/governance/default.yaml through `BodyScanner`, which scans the whole
forwarded body) next to the old ones (configs/governance/default.yaml on the message strings only, as the
engine scanned before issue 11):

1. **Recall per class** on tests/fixtures/governance_adversarial.jsonl (scripts/make_governance_corpus.py:
   class × format × field × locale, ≥ 1,000 bodies), and on tests/fixtures/governance_corpus.jsonl; the
   benign look-alike rows give the false-positive rate; detect-secrets (`scan_line` on every line of every
   string; with and without its high-entropy plugins) as the library baseline for the secret rows.
2. **False positives on real benign questions**: GSM8K (train + test) and MMLU (question + options) from the
   shared data mirror, one body per question.
3. **Speed**: `BodyScanner.count` on a body whose one message is an adversarial blob ("key" * N, "a@" * N,
   digit runs, "+" * N, ...) at 1 KB ... 1 MB: p50 / p99 of this thread's CPU time over `--repeat` runs
   (CPU time, so other jobs on a shared machine hardly move it). Linear: the rate (bytes/ms) stays flat as the
   size grows tenfold; the goal is a 1 MB body in < 100 ms p99.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import string
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kronaxis_lab.serving.detectors import BodyScanner, body_strings, default_detectors, warm_up
from kronaxis_lab.serving.governance import GovernancePolicy, legacy_detectors

ROOT = Path(__file__).resolve().parents[1]
ADVERSARIAL = ROOT / "tests" / "fixtures" / "governance_adversarial.jsonl"
CORPUS = ROOT / "tests" / "fixtures" / "governance_corpus.jsonl"
DATA = Path(os.environ.get("KRONAXIS_DATA_MIRROR", ROOT.parent / "shared" / "data"))


def message_strings(body: Any) -> list[str]:
    """What the engine scanned before issue 11: the strings inside `messages` only."""
    out, stack = [], [body.get("messages", []) if isinstance(body, dict) else []]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            out.append(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return out


def old_classes(policy: GovernancePolicy, bodies: list[Any]) -> list[set[str]]:
    return [set().union(*policy.detect(message_strings(b) or [""])) for b in bodies]


def detect_secrets_hits(bodies: list[Any], entropy: bool) -> list[bool] | None:
    """detect-secrets' `scan_line` on every line of every string of each body (None if it is not installed);
    `entropy`: with its Base64/Hex high-entropy plugins (which flag most plain words), else the rest."""
    try:
        from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
        from detect_secrets.core.scan import scan_line
        from detect_secrets.settings import transient_settings
    except ImportError:
        return None
    names = [c.__name__ for c in get_mapping_from_secret_type_to_class().values()
             if entropy or "HighEntropy" not in c.__name__]
    with transient_settings({"plugins_used": [{"name": n} for n in names]}):
        return [any(any(True for _ in scan_line(line)) for s in body_strings(b) for line in s.splitlines())
                for b in bodies]


# -- 1. recall ----------------------------------------------------------------------------------------------
def recall_table(rows: list[dict], new: list[set[str]], old: list[set[str]],
                 ds: tuple[list[bool] | None, list[bool] | None]) -> str:
    ds_all, ds_re = (d or [False] * len(rows) for d in ds)
    by = defaultdict(lambda: [0, 0, 0, 0, 0])  # rows, new, old, detect-secrets all plugins / without entropy
    for r, n, o, a, b in zip(rows, new, old, ds_all, ds_re):
        if r["class"] != "benign":
            c = r["class"]
            by[c] = [by[c][0] + 1, by[c][1] + (c in n), by[c][2] + (c in o), by[c][3] + a, by[c][4] + b]
    lines = ["| class | rows | new (default + BodyScanner) | old (legacy, messages only) | detect-secrets, all "
             "plugins | detect-secrets, no entropy plugins |", "|---|---|---|---|---|---|"]
    tot = [0, 0, 0]
    for c, (k, n, o, a, b) in sorted(by.items()):
        extra = f"{a / k:.1%} ({a}) | {b / k:.1%} ({b})" if c == "secret" and ds[0] is not None else " | "
        lines.append(f"| {c} | {k} | {n / k:.1%} ({n}) | {o / k:.1%} ({o}) | {extra} |")
        tot = [tot[0] + k, tot[1] + n, tot[2] + o]
    lines.append(f"| **all** | {tot[0]} | **{tot[1] / tot[0]:.1%}** | {tot[2] / tot[0]:.1%} | | |")
    benign = [i for i, r in enumerate(rows) if r["class"] == "benign"]
    fp = [sum(bool(x[i]) for i in benign) for x in (new, old, ds_all, ds_re)]
    tail = f"{fp[2]} FP | {fp[3]} FP" if ds[0] is not None else " | "
    lines.append(f"| benign look-alikes (any class flagged) | {len(benign)} | {fp[0]} FP | {fp[1]} FP | {tail} |")
    return "\n".join(lines)


def field_table(rows: list[dict], new: list[set[str]], old: list[set[str]]) -> str:
    by = defaultdict(lambda: [0, 0, 0])
    for r, n, o in zip(rows, new, old):
        if r["class"] != "benign":
            by[r["field"]][0] += 1
            by[r["field"]][1] += r["class"] in n
            by[r["field"]][2] += r["class"] in o
    lines = ["| field | rows | new | old |", "|---|---|---|---|"]
    lines += [f"| {f} | {k} | {n / k:.0%} | {o / k:.0%} |" for f, (k, n, o) in sorted(by.items())]
    return "\n".join(lines)


# -- 2. real benign questions -------------------------------------------------------------------------------
def benign_questions() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for split in ("train", "test"):
        p = DATA / "gsm8k" / f"{split}.jsonl"
        if p.exists():
            out.setdefault("GSM8K", []).extend(json.loads(line)["question"] for line in p.open())
    p = DATA / "mmlu" / "mmlu_test.jsonl.gz"
    if p.exists():
        with gzip.open(p, "rt") as f:
            for line in f:
                r = json.loads(line)
                if r.get("question") != "question":
                    out.setdefault("MMLU", []).append("\n".join(
                        [r["question"]] + [f"{k[-1].upper()}) {r[k]}" for k in ("answer_a", "answer_b", "answer_c", "answer_d")]))
    return out


def chat(text: str) -> dict[str, Any]:
    return {"model": "kronaxis/auto", "messages": [{"role": "user", "content": text}]}


def fp_table(scanner: BodyScanner, old: GovernancePolicy, sets: dict[str, list[str]]) -> tuple[str, list[str]]:
    lines = ["| dataset | questions | new: flagged | old: flagged |", "|---|---|---|---|"]
    notes = []
    for name, qs in sets.items():
        new = [set(c) for c in scanner.count_many([chat(q) for q in qs])]
        prev = old.detect(qs)
        n_new, n_old = sum(bool(x) for x in new), sum(bool(x) for x in prev)
        lines.append(f"| {name} | {len(qs):,} | {n_new} ({n_new / len(qs):.3%}) | {n_old} ({n_old / len(qs):.3%}) |")
        notes += [f"{name} [{', '.join(sorted(c))}]: {q[:160]!r}" for q, c in zip(qs, new) if c]
    return "\n".join(lines), notes


# -- 3. speed -----------------------------------------------------------------------------------------------
def shapes(rng: random.Random) -> dict[str, Callable[[int], str]]:
    def rep(unit: str) -> Callable[[int], str]:
        return lambda n: (unit * (n // len(unit) + 1))[:n]

    def rnd(alphabet: str) -> Callable[[int], str]:
        return lambda n: "".join(rng.choice(alphabet) for _ in range(n))

    return {
        '"key" * N': rep("key"),
        '"a@" * N': rep("a@"),
        '"+" * N': rep("+"),
        "digit run": rnd(string.digits),
        '"1 " * N': rep("1 "),
        "base64": rnd(string.ascii_letters + string.digits + "+/"),
        '"key=key=" (assignments)': rep("key="),
        '"password: x1y2z3! "': rep("password: x1y2z3! "),
        '"a@a.io " (e-mails)': rep("a@a.io "),
        '"DE00 " (IBAN starts)': rep("DE00 "),
        '"call 0171 1234567 "': rep("call 0171 1234567 "),
        '"AB 12 34 56 C "': rep("AB 12 34 56 C "),
        "zero-width + digits": rep("4\u200b1\u200b1\u200b1\u200b "),
        "full-width digits": rep("\uff14\uff11\uff11\uff11 "),
        "CJK prose": rnd("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年"),
        '"%40" * N': rep("%40"),
        '"4111 1111 1111 1111 " (cards)': rep("4111 1111 1111 1111 "),
        "mixed flood (card, e-mail, phone, key)": rep("a@a.io 4111111111111111 +14155550132 sk-proj-aB3dE5fG7hI9jK1lM3nO5pQ7 "),
    }


def cpu_ms(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    ts = []
    for _ in range(repeat):
        t0 = time.thread_time()
        fn()
        ts.append((time.thread_time() - t0) * 1000)
    return float(np.percentile(ts, 50)), float(np.percentile(ts, 99))


def speed_table(scanner: BodyScanner, sizes: list[int], repeat: int) -> str:
    rng = random.Random(0)
    head = "| input | " + " | ".join(f"{s:,} B p50 / p99 ms" for s in sizes) + " | rate at largest (KB/ms) |"
    lines = [head, "|---" * (len(sizes) + 2) + "|"]
    for name, make in shapes(rng).items():
        cells, rate = [], ""
        for size in sizes:
            text = make(size)
            while len(text.encode()) > size:  # size in UTF-8 bytes, as on the wire
                text = text[: len(text) - max(1, (len(text.encode()) - size) // 3)]
            r = max(2, repeat if size <= 100_000 else repeat // 2)
            fresh = iter([chat(text[: size - 8] + f" #{i:06d}") for i in range(r)])  # new texts: no cache hits
            p50, p99 = cpu_ms(lambda it=fresh: scanner.count(next(it)), r)
            cells.append(f"{p50:.2f} / {p99:.2f}")
            rate = f"{size / 1000 / p50:.0f}" if p50 > 0 else "∞"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {rate} |")
    return "\n".join(lines)


def typical_speed(scanner: BodyScanner, bodies: list[Any], repeat: int = 3) -> str:
    scanner.count_many(bodies[:20])
    best = min(cpu_ms(lambda: scanner.count_many(bodies), 1)[0] for _ in range(repeat))
    return f"{best / len(bodies) * 1000:.0f} µs CPU per body (the {len(bodies):,} corpus bodies, best of {repeat})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-datasets", action="store_true", help="skip the GSM8K/MMLU false-positive table")
    ap.add_argument("--write", type=Path, help="append the tables to this markdown file")
    args = ap.parse_args()
    warm_up()
    scanner = BodyScanner(default_detectors())
    old = GovernancePolicy(legacy_detectors())

    rows = [json.loads(line) for line in ADVERSARIAL.open(encoding="utf-8")]
    bodies = [r["body"] for r in rows]
    new = [set(c) for c in scanner.count_many(bodies)]
    prev = old_classes(old, bodies)
    ds = (detect_secrets_hits(bodies, entropy=True), detect_secrets_hits(bodies, entropy=False))
    out = [f"Recall on {ADVERSARIAL.relative_to(ROOT)} ({len(rows):,} bodies):\n", recall_table(rows, new, prev, ds),
           "\nRecall by field (all classes):\n", field_table(rows, new, prev)]
    missed = [r["id"] for r, n in zip(rows, new) if r["class"] != "benign" and r["class"] not in n]
    fps = [f"{r['id']} → {sorted(n)}" for r, n in zip(rows, new) if r["class"] == "benign" and n]
    extra = [f"{r['id']} → also {sorted(n - set(r['expected_classes']))}" for r, n in zip(rows, new)
             if r["class"] != "benign" and n - set(r["expected_classes"])]
    out.append("\nMissed: " + (", ".join(missed) or "none") + ". Benign rows flagged: " + (", ".join(fps) or "none")
               + ". Extra classes on sensitive rows: " + (", ".join(extra) or "none") + ".")

    corpus = [json.loads(line) for line in CORPUS.open(encoding="utf-8")]
    c_new = [set(c) for c in scanner.count_many([chat(r["text"]) for r in corpus])]
    hit = sum(set(r["classes"]) <= n for r, n in zip(corpus, c_new) if r["classes"])
    n_sens = sum(bool(r["classes"]) for r in corpus)
    fp = sum(bool(n) for r, n in zip(corpus, c_new) if not r["classes"])
    out.append(f"\n{CORPUS.relative_to(ROOT)}: {hit}/{n_sens} sensitive rows fully detected, "
               f"{fp}/{len(corpus) - n_sens} benign rows flagged.")

    if not args.no_datasets:
        sets = benign_questions()
        if sets:
            table, notes = fp_table(scanner, old, sets)
            out += ["\nFalse positives on real benign questions (one body per question):\n", table]
            if notes:
                out.append("\nFlagged questions (new):\n" + "\n".join(f"- {n}" for n in notes[:40]))
    sizes = [int(s) for s in args.sizes.split(",")]
    out += ["\nScan speed, `BodyScanner.count(body)`, CPU ms:\n", speed_table(scanner, sizes, args.repeat),
            "\nTypical requests: " + typical_speed(scanner, bodies) + "."]
    text = "\n".join(out)
    print(text)
    if args.write:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        header = (f"\n\n### {time.strftime('%Y-%m-%d %H:%M')} — `python benchmarks/governance.py "
                  f"{' '.join(sys.argv[1:])}`\n\nMachine: {platform.processor() or platform.machine()}, "
                  f"{os.cpu_count()} cores, Python {platform.python_version()}; 1-min load average {load:.1f}.\n\n")
        with args.write.open("a", encoding="utf-8") as f:
            f.write(header + text + "\n")


if __name__ == "__main__":
    main()
