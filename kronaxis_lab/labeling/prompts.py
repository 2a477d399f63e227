"""Prompt templates per task, kept in YAML (configs/prompt/*.yaml), turned into backend requests.

Each task has two styles, because the fleet mixes model kinds:

- ``chat`` (instruct models): ``system`` (optional) and ``user`` templates → a `messages` request; the
  backend applies the model's chat template.
- ``completion`` (base models, e.g. Gemma-3-270M base): one text template, usually few-shot → a raw
  `prompt` request, sent as is.

Templates may use ``{text}``, ``{task}`` and ``{category}`` (the query's columns). Substitution replaces
exactly these placeholders and nothing else, so code and JSON in templates need no brace escaping.
A task without its own entry uses ``default``. Generation settings per task (``max_tokens``, ``stop``)
live beside the templates; ``stop`` may differ per style (``stop: {chat: [...], completion: [...]}``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd

from kronaxis_lab.backends.base import GenRequest

STYLES = ("chat", "completion")
_FIELD = re.compile(r"\{(text|task|category)\}")


class PromptError(ValueError):
    pass


def render(template: str, fields: Mapping[str, str]) -> str:
    """Replace `{text}`, `{task}`, `{category}` in `template` (other braces are left alone)."""
    return _FIELD.sub(lambda m: str(fields.get(m.group(1)) or ""), template)


@dataclass
class TaskPrompt:
    """Templates and generation settings of one task."""

    user: str = "{text}"
    system: str | None = None
    completion: str = "{text}"
    max_tokens: int = 256
    stop: dict[str, list[str]] = field(default_factory=dict)  # style → stop strings

    @classmethod
    def from_config(cls, task: str, cfg: Mapping[str, Any]) -> "TaskPrompt":
        cfg = dict(cfg or {})
        unknown = set(cfg) - {"user", "system", "completion", "max_tokens", "stop"}
        if unknown:
            raise PromptError(f"prompt for task '{task}': unknown field(s) {sorted(unknown)} "
                              "(allowed: user, system, completion, max_tokens, stop)")
        stop = cfg.pop("stop", None)
        if stop is None:
            stops: dict[str, list[str]] = {}
        elif isinstance(stop, Mapping):
            bad = set(stop) - set(STYLES)
            if bad:
                raise PromptError(f"prompt for task '{task}': stop styles must be {STYLES}, got {sorted(bad)}")
            stops = {k: list(v or []) for k, v in stop.items()}
        else:
            stops = {s: list(stop) for s in STYLES}
        p = cls(**cfg, stop=stops)
        if int(p.max_tokens) < 1:
            raise PromptError(f"prompt for task '{task}': max_tokens must be >= 1, got {p.max_tokens}")
        for name in ("user", "completion"):
            if "{text}" not in str(getattr(p, name)):
                raise PromptError(f"prompt for task '{task}': the '{name}' template must contain '{{text}}'")
        p.max_tokens = int(p.max_tokens)
        return p


class PromptBook:
    """Task → `TaskPrompt`; builds the `GenRequest` of each (query, model style).

    Args:
        templates: `{task: {user, system, completion, max_tokens, stop}}`; `default` covers other tasks.
        temperature: sampling temperature of every request (0 = greedy, the labelling default).
        extra: further OpenAI-style params sent with every request (e.g. `{seed: 0}`), part of the cache key.
    """

    def __init__(self, templates: Mapping[str, Mapping[str, Any]], temperature: float = 0.0,
                 extra: Mapping[str, Any] | None = None):
        if not templates:
            raise PromptError("no prompt templates configured")
        self.prompts = {str(task): TaskPrompt.from_config(str(task), cfg) for task, cfg in templates.items()}
        self.temperature = float(temperature)
        self.extra = dict(extra or {}) or None

    def for_task(self, task: str) -> TaskPrompt:
        p = self.prompts.get(task) or self.prompts.get("default")
        if p is None:
            raise PromptError(f"no prompt template for task '{task}' and no 'default' (have {sorted(self.prompts)})")
        return p

    def check_tasks(self, tasks: Sequence[str]) -> None:
        for t in set(tasks):
            self.for_task(t)

    def request(self, query: Mapping[str, Any], style: str) -> GenRequest:
        """The request for one query row (query_id, text, messages, task, category) in `style`."""
        if style not in STYLES:
            raise PromptError(f"prompt style must be one of {STYLES}, got {style!r}")
        task = str(query.get("task") or "default")
        p = self.for_task(task)
        fields = {"text": str(query["text"]), "task": task, "category": str(query.get("category") or task)}
        stop = p.stop.get(style) or None
        common = dict(max_tokens=p.max_tokens, temperature=self.temperature, stop=stop,
                      request_id=str(query["query_id"]), extra=self.extra)
        if style == "completion":
            return GenRequest(prompt=render(p.completion, fields), **common)
        msgs = _messages(query.get("messages"))
        if msgs is None:  # single-turn: the task template wraps the text
            msgs = [{"role": "user", "content": render(p.user, fields)}]
        if p.system and not any(m.get("role") == "system" for m in msgs):
            msgs = [{"role": "system", "content": render(p.system, fields)}, *msgs]
        return GenRequest(messages=msgs, **common)


def _messages(value: Any) -> list[dict[str, str]] | None:
    """A conversation stored as a JSON string in the queries table (None/NaN/empty → None)."""
    if isinstance(value, str):
        if not value.strip():
            return None
    elif value is None or pd.isna(value) is True:  # None / NaN / pd.NA (a list gives an array, not True)
        return None
    msgs = json.loads(value) if isinstance(value, str) else value
    if not isinstance(msgs, list) or not all(isinstance(m, Mapping) and "role" in m for m in msgs):
        raise PromptError(f"messages must be a JSON list of {{role, content}}, got {str(value)[:80]!r}")
    return [dict(m) for m in msgs]
