"""Heuristic rule engine: text features → rules from YAML → additive per-tier logits → sigmoid.

    P̂_j(q) = σ( prior_j + Σ_r 1[rule r fires on q] · adjust_r[j] )

`adjust_r[j]` is the rule's value for model j's tier (tiers are listed cheapest first in the rules file;
the fleet's models, cheapest first, are cut into that many groups, or mapped by `model_tiers`) or for
model j by name. The rules file (configs/rules/default.yaml) looks like:

    tiers: [small, medium, large]
    prior: {small: 0.5, medium: 1.0, large: 2.0}     # or one number for every model
    rules:
      - name: code_block
        when: {feature: code_blocks, ge: 1}            # gt/ge/lt/le/eq, ANDed
        adjust: {small: -1.5, medium: -0.5}            # tier or model names → logit change
      - name: step_by_step
        when: {regex: "step[- ]by[- ]step", ignore_case: true}
        adjust: {small: -1.0}
      - name: tricky
        when: {any: [{keywords: [prove, derive], min_count: 1}, {not: {feature: words, lt: 40}}]}
        adjust: -0.5                                    # a number: every model

Built-in features (per query): chars, words, tokens (regex word/punctuation pieces, a proxy for BPE
tokens), lines, sentences, avg_sentence_words, clause_markers (, ; : —), questions, numbers,
number_density (numbers / words), latex (LaTeX commands plus $…$ spans), equations (arithmetic around
= ≤ ≥ ≠), arithmetic (digit-operator-digit), code_blocks (``` fences and indented blocks),
numbered_items, bullet_items. Vocabulary (keywords, phrases) lives in the rules file, not here.

The router needs no training: `RuleRouter(rules=..., model_names=[...])` predicts at once. `fit` (with
`fit_prior: true`) only re-learns prior_j so the mean prediction matches each model's observed success
rate given the rules: solve mean_i σ(prior_j + R_ij) = mean_i y_ij by bisection.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ._common import resolve_config_path, tier_of_models
from .base import Classifier, as_queries, check_fit_inputs, to_plain

STATE_FILE = "rules_state.json"


class RulesConfigError(ValueError):
    """A rules file (or inline rules mapping) is malformed; the message names the rule index and field."""


# -- features --------------------------------------------------------------------------------------
_RE_WORD = re.compile(r"\w+")
_RE_TOKEN = re.compile(r"\w+|[^\w\s]")
_RE_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_RE_CLAUSE = re.compile(r"[,;:\u2014]")
_RE_NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*")
_RE_LATEX_CMD = re.compile(r"\\[A-Za-z]+|\\\(|\\\[")  # \frac, \sum, \( and \[ delimiters
_RE_LATEX_SPAN = re.compile(r"\$[^$\n]+\$")
_OP = r"[+\-*/^×÷]"
_REL = r"(?:=|≤|≥|≠|<=|>=)"
_RE_EQUATION = re.compile(rf"[\w)\]]\s*{_OP}\s*[\w(\[]+[^=\n]*?{_REL}|{_REL}\s*[\w(\[.-]+\s*{_OP}\s*[\w(\[]")
_RE_ARITH = re.compile(rf"\d\s*{_OP}\s*\d")
_RE_FENCE = re.compile(r"```.*?(?:```|\Z)", re.S)
_RE_INDENTED = re.compile(r"(?:^(?: {4}|\t)[^\n]*\S[^\n]*(?:\n|\Z)){2,}", re.M)
_RE_NUMBERED = re.compile(r"^\s*\d+[.)]\s+\S", re.M)
_RE_BULLET = re.compile(r"^\s*[-*•]\s+\S", re.M)


def _features_one(text: str) -> dict[str, float]:
    words = len(_RE_WORD.findall(text))
    sentences = max(1, sum(1 for s in _RE_SENT_SPLIT.split(text) if s.strip()))
    fences = _RE_FENCE.findall(text)
    unfenced = _RE_FENCE.sub("\n", text)
    numbers = len(_RE_NUMBER.findall(text))
    return {
        "chars": len(text),
        "words": words,
        "tokens": len(_RE_TOKEN.findall(text)),
        "lines": text.count("\n") + 1,
        "sentences": sentences,
        "avg_sentence_words": words / sentences,
        "clause_markers": len(_RE_CLAUSE.findall(text)),
        "questions": text.count("?"),
        "numbers": numbers,
        "number_density": numbers / max(words, 1),
        "latex": len(_RE_LATEX_CMD.findall(text)) + len(_RE_LATEX_SPAN.findall(text)),
        "equations": len(_RE_EQUATION.findall(text)),
        "arithmetic": len(_RE_ARITH.findall(text)),
        "code_blocks": len(fences) + len(_RE_INDENTED.findall(unfenced)),
        "numbered_items": len(_RE_NUMBERED.findall(text)),
        "bullet_items": len(_RE_BULLET.findall(text)),
    }


FEATURES: tuple[str, ...] = tuple(_features_one(""))


def text_features(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Feature name → (n,) float array for a batch of queries."""
    rows = [_features_one(t) for t in texts]
    return {f: np.array([r[f] for r in rows], dtype=np.float64) for f in FEATURES}


# -- rule compilation ------------------------------------------------------------------------------
Predicate = Callable[[Sequence[str], Mapping[str, np.ndarray]], np.ndarray]
_CMP = {"gt": np.greater, "ge": np.greater_equal, "lt": np.less, "le": np.less_equal, "eq": np.equal}


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _compile_when(node: Any, where: str, err: Callable[[str, str], RulesConfigError]) -> Predicate:
    if not isinstance(node, Mapping) or not node:
        raise err(where, "must be a non-empty mapping (feature / keywords / regex / all / any / not)")
    kinds = [k for k in ("feature", "keywords", "regex", "all", "any", "not") if k in node]
    if len(kinds) != 1:
        raise err(where, f"needs exactly one of feature, keywords, regex, all, any, not (got {sorted(node)})")
    kind = kinds[0]
    if kind in ("all", "any"):
        if set(node) != {kind} or not isinstance(node[kind], list) or not node[kind]:
            raise err(f"{where}.{kind}", "must be a non-empty list of conditions (and nothing else)")
        subs = [_compile_when(c, f"{where}.{kind}[{i}]", err) for i, c in enumerate(node[kind])]
        red = np.logical_and if kind == "all" else np.logical_or
        return lambda t, f: red.reduce([s(t, f) for s in subs])
    if kind == "not":
        if set(node) != {"not"}:
            raise err(where, "'not' takes one condition and nothing else")
        sub = _compile_when(node["not"], f"{where}.not", err)
        return lambda t, f: ~sub(t, f)
    if kind == "feature":
        name = node["feature"]
        if name not in FEATURES:
            raise err(f"{where}.feature", f"unknown feature {name!r}; known: {', '.join(FEATURES)}")
        extra = set(node) - {"feature", *_CMP}
        if extra:
            raise err(where, f"unknown field(s) {sorted(extra)}; comparisons are {', '.join(_CMP)}")
        cmps = [(op, node[op]) for op in _CMP if op in node]
        if not cmps:
            raise err(where, f"feature {name!r} needs at least one comparison ({', '.join(_CMP)})")
        for op, v in cmps:
            if not _is_num(v):
                raise err(f"{where}.{op}", f"must be a number, got {v!r}")
        return lambda t, f: np.logical_and.reduce([_CMP[op](f[name], v) for op, v in cmps])
    # keywords / regex: count matches per query, fire at >= min_count
    extra = set(node) - {kind, "min_count", "ignore_case"}
    if extra:
        raise err(where, f"unknown field(s) {sorted(extra)}; allowed: {kind}, min_count, ignore_case")
    min_count = node.get("min_count", 1)
    if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
        raise err(f"{where}.min_count", f"must be an integer >= 1, got {min_count!r}")
    flags = re.IGNORECASE if node.get("ignore_case", True) else 0
    if kind == "keywords":
        kws = node["keywords"]
        if not isinstance(kws, list) or not kws or not all(isinstance(k, str) and k.strip() for k in kws):
            raise err(f"{where}.keywords", "must be a non-empty list of non-empty strings")
        # whole-word match that also works for keywords starting/ending in punctuation ("#include", "C++")
        pattern = "|".join(rf"(?<!\w){re.escape(k)}(?!\w)" for k in kws)
    else:
        pattern = node["regex"]
        if not isinstance(pattern, str) or not pattern:
            raise err(f"{where}.regex", "must be a non-empty string")
    try:
        rx = re.compile(pattern, flags | re.MULTILINE)
    except re.error as e:
        raise err(f"{where}.{kind}", f"invalid regular expression: {e}") from e
    return lambda t, f: np.array([sum(1 for _ in rx.finditer(s)) >= min_count for s in t], dtype=bool)


class RuleSet:
    """A validated rules spec: tier names, prior and compiled rules."""

    def __init__(self, spec: Mapping[str, Any], source: str = "<inline rules>") -> None:
        def err(field: str, msg: str, rule: int | None = None) -> RulesConfigError:
            if rule is None:
                return RulesConfigError(f"{source}: field '{field}': {msg}")
            name = spec["rules"][rule].get("name") if isinstance(spec["rules"][rule], Mapping) else None
            label = f"rules[{rule}]" + (f" ('{name}')" if name else "")
            return RulesConfigError(f"{source}: {label}: field '{field}': {msg}")

        if not isinstance(spec, Mapping):
            raise RulesConfigError(f"{source}: top level must be a mapping with 'tiers', 'prior' and 'rules'")
        unknown = set(spec) - {"tiers", "prior", "rules", "description"}
        if unknown:
            raise RulesConfigError(f"{source}: unknown top-level field(s) {sorted(unknown)}")
        tiers = spec.get("tiers")
        if not isinstance(tiers, list) or not tiers or not all(isinstance(t, str) for t in tiers):
            raise err("tiers", "must be a non-empty list of tier names, cheapest first")
        if len(set(tiers)) != len(tiers):
            raise err("tiers", f"has duplicates: {tiers}")
        prior = spec.get("prior", 0.0)
        if not (_is_num(prior) or (isinstance(prior, Mapping) and all(_is_num(v) for v in prior.values()))):
            raise err("prior", "must be a number or a mapping tier/model name → number")
        rules = spec.get("rules")
        if not isinstance(rules, list):
            raise err("rules", "must be a list of rules")
        self.compiled: list[tuple[str, Predicate, Any]] = []
        for i, rule in enumerate(rules):
            if not isinstance(rule, Mapping):
                raise RulesConfigError(f"{source}: rules[{i}]: must be a mapping with 'name', 'when', 'adjust'")
            extra = set(rule) - {"name", "when", "adjust", "description"}
            if extra:
                raise err(str(sorted(extra)[0]), "unknown field; allowed: name, when, adjust, description", i)
            for field in ("name", "when", "adjust"):
                if field not in rule:
                    raise err(field, "is missing", i)
            if not isinstance(rule["name"], str) or not rule["name"]:
                raise err("name", "must be a non-empty string", i)
            adjust = rule["adjust"]
            per_key = isinstance(adjust, Mapping) and adjust and all(_is_num(v) for v in adjust.values())
            if not (_is_num(adjust) or per_key):
                raise err("adjust", "must be a number or a non-empty mapping tier/model name → number", i)
            pred = _compile_when(rule["when"], "when", lambda f, m, i=i: err(f, m, i))
            self.compiled.append((rule["name"], pred, adjust))
        names = [n for n, _, _ in self.compiled]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise err("rules", f"rule names must be unique; repeated: {sorted(dup)}")
        self.spec, self.source, self.tiers, self.prior = dict(spec), source, list(tiers), prior

    @property
    def rule_names(self) -> list[str]:
        return [n for n, _, _ in self.compiled]

    def _vector(self, value: Any, model_names: list[str], tier_idx: np.ndarray, what: str) -> np.ndarray:
        """A number or {tier/model name: number} → (m,) per-model values (model names win over tiers)."""
        if _is_num(value):
            return np.full(len(model_names), float(value))
        out = np.zeros(len(model_names))
        for key, v in value.items():
            if key in self.tiers:
                out[tier_idx == self.tiers.index(key)] = v
            elif key not in model_names:
                raise RulesConfigError(
                    f"{self.source}: {what}: key '{key}' is neither a tier {self.tiers} nor a model {model_names}"
                )
        for key, v in value.items():
            if key in model_names and key not in self.tiers:
                out[model_names.index(key)] = v
        return out

    def matrices(self, model_names: list[str], model_tiers: Mapping[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
        """(prior (m,), adjust (n_rules, m)) for a fleet."""
        tier_idx = tier_of_models(model_names, self.tiers, model_tiers)
        prior = self._vector(self.prior, model_names, tier_idx, "field 'prior'")
        adjust = np.array(
            [self._vector(a, model_names, tier_idx, f"rules[{i}] ('{n}'): field 'adjust'")
             for i, (n, _, a) in enumerate(self.compiled)]
        ).reshape(len(self.compiled), len(model_names))
        return prior, adjust

    def fired(self, queries: Sequence[str]) -> np.ndarray:
        """(n, n_rules) bool: which rules fire on which queries."""
        feats = text_features(queries)
        cols = [np.asarray(pred(queries, feats), dtype=bool).reshape(len(queries)) for _, pred, _ in self.compiled]
        return np.stack(cols, axis=1) if cols else np.zeros((len(queries), 0), dtype=bool)


def load_rules(rules: str | Path | Mapping[str, Any]) -> RuleSet:
    """Parse and validate a rules YAML file (path) or an inline mapping."""
    if isinstance(rules, (str, Path)):
        import yaml

        p = resolve_config_path(rules)
        if not p.is_file():
            raise RulesConfigError(f"rules file {rules} does not exist")
        try:
            spec = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise RulesConfigError(f"{p}: not valid YAML: {e}") from e
        return RuleSet(spec, source=str(p))
    return RuleSet(to_plain(rules))


# -- the router ------------------------------------------------------------------------------------
def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free σ


class RuleRouter(Classifier):
    """Rule-based success probabilities; needs no training data (see module docstring)."""

    def __init__(
        self,
        rules: str | Mapping[str, Any] = "configs/rules/default.yaml",
        model_names: Sequence[str] | None = None,
        model_tiers: Mapping[str, Any] | None = None,
        fit_prior: bool = True,
    ) -> None:
        # Parsed eagerly (unlike sklearn's lazy convention): a fallback router must fail at start-up on a
        # bad rules file, not at the moment it is needed.
        self.ruleset_ = load_rules(rules)
        self.rules = rules
        self.model_names = None if model_names is None else list(model_names)
        self.model_tiers = to_plain(model_tiers)
        self.fit_prior = fit_prior
        self.prior_: np.ndarray | None = None
        if self.model_names is not None:
            self.model_names_ = list(self.model_names)
            self.ruleset_.matrices(self.model_names_, self.model_tiers)  # validates adjust keys now

    def get_config(self) -> dict[str, Any]:
        # the parsed spec, not the path: a saved router does not depend on the file still being there
        return {**super().get_config(), "rules": to_plain(self.ruleset_.spec)}

    @property
    def rule_names(self) -> list[str]:
        return self.ruleset_.rule_names

    def _require_models(self) -> list[str]:
        names = getattr(self, "model_names_", None)
        if not names:
            raise ValueError("RuleRouter has no model_names: pass model_names=[...] or call fit()")
        return names

    def logits(self, queries: Sequence[str] | str) -> np.ndarray:
        queries = as_queries(queries)
        prior, adjust = self.ruleset_.matrices(self._require_models(), self.model_tiers)
        if self.prior_ is not None:
            prior = self.prior_
        return prior[None, :] + self.ruleset_.fired(queries).astype(np.float64) @ adjust

    def predict_proba(self, queries: Sequence[str] | str) -> np.ndarray:
        return _sigmoid(self.logits(queries))

    def explain(self, query: str) -> list[str]:
        """Names of the rules that fire on one query."""
        return [n for n, f in zip(self.rule_names, self.ruleset_.fired([query])[0]) if f]

    def fit(
        self,
        queries: Sequence[str],
        targets: np.ndarray,
        model_names: Sequence[str],
        val_queries: Sequence[str] | None = None,
        val_targets: np.ndarray | None = None,
        *,
        model_costs: Mapping[str, float] | Sequence[float] | None = None,
    ) -> "RuleRouter":
        """Set the fleet; with `fit_prior`, solve mean_i σ(b_j + R_ij) = mean_i y_ij for each b_j."""
        queries, y, model_names, _, _ = check_fit_inputs(queries, targets, model_names, val_queries, val_targets)
        self.model_names_ = model_names
        self.prior_ = None
        if not self.fit_prior or not queries:
            return self
        prior, adjust = self.ruleset_.matrices(model_names, self.model_tiers)
        R = self.ruleset_.fired(queries).astype(np.float64) @ adjust  # (n, m) rule contributions
        obs = np.isfinite(y)
        counts = obs.sum(0)
        goal = np.nansum(y, 0) / np.maximum(counts, 1)
        # the mean is increasing in b, so bisection on [-30, 30] (σ saturates beyond) finds it to 1e-15
        lo, hi = np.full(len(goal), -30.0), np.full(len(goal), 30.0)
        for _ in range(60):
            mid = (lo + hi) / 2
            mean = np.where(obs, _sigmoid(mid[None, :] + R), 0.0).sum(0) / np.maximum(counts, 1)
            lo, hi = np.where(mean < goal, mid, lo), np.where(mean < goal, hi, mid)
        self.prior_ = np.where(counts > 0, (lo + hi) / 2, prior)
        return self

    def export_runtime(self, directory: Path, **graph_options: Any) -> dict[str, Any]:
        """Bundle node (`kronaxis_lab.export.runtimes.RulesRuntime`): the parsed rules spec, the model tiers and
        the fitted prior, inline in router.json (rules are data: features, keywords, regular expressions)."""
        return {"kind": "kronaxis_lab.export.runtimes.RulesRuntime", "label_order": list(self._require_models()),
                "rules": {"spec": to_plain(self.ruleset_.spec), "model_tiers": to_plain(self.model_tiers),
                          "prior": None if self.prior_ is None else [float(v) for v in self.prior_]},
                "files": {}}

    def save_state(self, directory: Path) -> None:
        state = {"prior": None if self.prior_ is None else [float(v) for v in self.prior_]}
        (directory / STATE_FILE).write_text(json.dumps(state, indent=2))

    def load_state(self, directory: Path) -> None:
        state = json.loads((directory / STATE_FILE).read_text())
        self.prior_ = None if state["prior"] is None else np.asarray(state["prior"], dtype=np.float64)
