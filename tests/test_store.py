"""The data directory: mirror copy, HTTP download with sha256 verification, clear errors."""

import functools
import hashlib
import http.server
import threading

import pytest

from kronaxis_lab.data.store import DataError, DataStore, resolve_data_dir


@pytest.fixture
def http_mirror(tmp_path):
    root = tmp_path / "served"
    (root / "gsm8k").mkdir(parents=True)
    (root / "gsm8k/test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    (root / "gsm8k/train.jsonl").write_text("tampered\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_download_from_http_with_sha256(tmp_path, http_mirror):
    root, url = http_mirror
    good = (root / "gsm8k/test.jsonl").read_text()
    sources = [{"path": "gsm8k/test.jsonl", "sha256": sha(good), "url": "https://example.invalid/never-used"},
               {"path": "gsm8k/train.jsonl", "sha256": sha("the real file\n"), "url": None}]
    store = DataStore(data_dir=tmp_path / "data", mirror=tmp_path / "none", base_url=url, sources=sources)
    p = store.path("gsm8k/test.jsonl")
    assert p == tmp_path / "data/gsm8k/test.jsonl" and p.read_text() == good
    with pytest.raises(DataError, match=r"gsm8k/train.jsonl: sha256 mismatch"):
        store.path("gsm8k/train.jsonl")
    assert not (tmp_path / "data/gsm8k/train.jsonl").exists()  # nothing half-written left behind
    assert not list((tmp_path / "data/gsm8k").glob("*.part"))


def test_download_by_upstream_url(tmp_path, http_mirror):
    root, url = http_mirror
    good = (root / "gsm8k/test.jsonl").read_text()
    store = DataStore(data_dir=tmp_path / "d", mirror=tmp_path / "none",
                      sources=[{"path": "gsm8k/test.jsonl", "sha256": sha(good), "url": f"{url}/gsm8k/test.jsonl"}])
    assert store.fetch_all() == {"gsm8k/test.jsonl": "fetched"}
    assert store.fetch_all() == {"gsm8k/test.jsonl": "present"}


def test_mirror_copy_and_missing_file_errors(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "a").mkdir(parents=True)
    (mirror / "a/x.txt").write_text("x")
    store = DataStore(data_dir=tmp_path / "data", mirror=mirror, sources=[{"path": "a/x.txt", "sha256": sha("x")}])
    assert store.path("a/x.txt").read_text() == "x"
    assert (tmp_path / "data/a/x.txt").exists()
    with pytest.raises(DataError, match=r"b/y.txt: not in the data dir .* no public URL \(private\)"):
        DataStore(data_dir=tmp_path / "data", mirror=mirror, sources=[{"path": "b/y.txt", "note": "private"}]).path("b/y.txt")


def test_unreachable_url_is_a_clear_error(tmp_path):
    store = DataStore(data_dir=tmp_path, mirror=tmp_path / "none",
                      sources=[{"path": "f.txt", "url": "http://127.0.0.1:9/f.txt"}], timeout_s=2)
    with pytest.raises(DataError, match=r"download of http://127.0.0.1:9/f.txt failed"):
        store.path("f.txt")


def test_env_overrides_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("KRONAXIS_DATA_DIR", str(tmp_path / "elsewhere"))
    assert resolve_data_dir(None) == (tmp_path / "elsewhere").resolve()
    assert resolve_data_dir(str(tmp_path / "cfg")) == (tmp_path / "cfg").resolve()


def test_manifest_matches_mirror(shared_data):
    """configs/data/sources.yaml must describe the mirror byte for byte (regenerate with the script)."""
    import yaml

    from kronaxis_lab.data.store import sha256_file
    from tests.conftest import CONFIGS

    files = yaml.safe_load((CONFIGS / "data/sources.yaml").read_text())["files"]
    assert len(files) > 70
    for f in files:
        assert sha256_file(shared_data / f["path"]) == f["sha256"], f["path"]
