"""The data directory: where importers read public recorded outcomes and question sets.

Resolution (first that is set wins):
- data dir: `paths.data_dir` in config, else env `KRONAXIS_DATA_DIR`, else `<project root>/data`;
- mirror (a local directory laid out like the data dir): `paths.data_mirror`, else env
  `KRONAXIS_DATA_MIRROR`, else `<project root>/../shared/data` when it exists;
- HTTP mirror (same layout, e.g. an internal file server): `paths.data_base_url` / `KRONAXIS_DATA_BASE_URL`;
- otherwise each file's public source URL from configs/data/sources.yaml (GitHub raw at a pinned commit).

Every fetched file is checked against the sha256 in the manifest, written to `<name>.part` and renamed only
once verified, so an interrupted or corrupted download never leaves a half file under its real name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


class DataError(FileNotFoundError):
    pass


def project_root() -> Path:
    """The checkout root when running from a source tree (pyproject.toml beside the package), else cwd."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def _pick(value: Any, env: str) -> str | None:
    if value not in (None, "", "null"):
        return str(value)
    v = os.environ.get(env)
    return v if v else None


def resolve_data_dir(value: Any = None) -> Path:
    return Path(_pick(value, "KRONAXIS_DATA_DIR") or project_root() / "data").expanduser().resolve()


def resolve_mirror(value: Any = None) -> Path | None:
    picked = _pick(value, "KRONAXIS_DATA_MIRROR")
    if picked:
        return Path(picked).expanduser().resolve()
    default = project_root().parent / "shared" / "data"
    return default.resolve() if default.is_dir() else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the data dir
    sha256: str | None = None
    url: str | None = None  # public source; None when no verbatim public copy exists
    note: str | None = None


class DataStore:
    """Finds (and on demand fetches) files of the data directory."""

    def __init__(
        self,
        data_dir: Any = None,
        mirror: Any = None,
        base_url: Any = None,
        sources: Iterable[Mapping[str, Any] | SourceFile] = (),
        verify: bool = True,
        timeout_s: float = 60.0,
    ):
        self.data_dir = resolve_data_dir(data_dir)
        self.mirror = resolve_mirror(mirror)
        self.base_url = _pick(base_url, "KRONAXIS_DATA_BASE_URL")
        self.sources = {s.path: s for s in (x if isinstance(x, SourceFile) else SourceFile(**dict(x)) for x in sources)}
        self.verify, self.timeout_s = verify, timeout_s

    # -- lookup --------------------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        """Path of `rel` inside the data dir, fetching it first if it is not there yet."""
        target = self.data_dir / rel
        if target.exists():
            return target
        if rel not in self.sources and self.mirror and (self.mirror / rel).exists():
            # a file not in the manifest (e.g. a user's own data) is still read from the mirror
            return self.mirror / rel
        self.fetch(rel)
        return target

    def glob(self, pattern: str) -> list[Path]:
        """Files matching `pattern`: manifest entries (fetched on demand) plus whatever is on disk."""
        from fnmatch import fnmatch

        rels = {r for r in self.sources if fnmatch(r, pattern)}
        for root in (self.data_dir, self.mirror):
            if root and root.exists():
                rels |= {str(p.relative_to(root)) for p in root.glob(pattern) if p.is_file()}
        return [self.path(r) for r in sorted(rels)]

    # -- fetching ------------------------------------------------------------------------------------
    def fetch(self, rel: str) -> Path:
        target = self.data_dir / rel
        src = self.sources.get(rel)
        tmp = target.with_name(target.name + ".part")
        target.parent.mkdir(parents=True, exist_ok=True)
        origin: str
        try:
            if self.mirror and (self.mirror / rel).is_file():
                origin = str(self.mirror / rel)
                shutil.copyfile(self.mirror / rel, tmp)
            elif self.base_url:
                origin = self.base_url.rstrip("/") + "/" + rel
                self._download(origin, tmp)
            elif src and src.url:
                origin = src.url
                self._download(origin, tmp)
            else:
                why = f" ({src.note})" if src and src.note else ""
                raise DataError(
                    f"{rel}: not in the data dir {self.data_dir}, no mirror has it, and it has no public URL{why}. "
                    "Set KRONAXIS_DATA_MIRROR (or paths.data_mirror) to a directory that has it."
                )
            if self.verify and src and src.sha256:
                got = sha256_file(tmp)
                if got != src.sha256:
                    raise DataError(f"{rel}: sha256 mismatch for {origin}: expected {src.sha256}, got {got}")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("fetched %s from %s", rel, origin)
        return target

    def _download(self, url: str, dest: Path) -> None:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp, open(dest, "wb") as f:
                shutil.copyfileobj(resp, f)
        except OSError as e:
            raise DataError(f"download of {url} failed: {e}") from e

    def fetch_all(self, only: Iterable[str] | None = None) -> dict[str, str]:
        """Fetch every manifest file (or those under the given prefixes); returns {path: status}."""
        rels = [r for r in self.sources if not only or any(r.startswith(p) for p in only)]
        status: dict[str, str] = {}
        for rel in tqdm(rels, desc="data", unit="file"):
            target = self.data_dir / rel
            if target.exists():
                src = self.sources[rel]
                ok = not (self.verify and src.sha256) or sha256_file(target) == src.sha256
                status[rel] = "present" if ok else "present (sha256 differs from manifest)"
                continue
            self.fetch(rel)
            status[rel] = "fetched"
        return status
