"""Helper servers for the backend tests (run as `python -m tests.servers.<name>` from the repo root)."""
