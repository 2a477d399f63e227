"""OpenAI-compatible server over a backend config: a thin entry point over
`kronaxis_lab.backends.openai_server` (where the reusable `create_app` lives).

    python -m tests.servers.openai_server --backend-config configs/backend/transformers_smollm2.yaml --port 8001
"""

from kronaxis_lab.backends.openai_server import main

if __name__ == "__main__":
    main()
