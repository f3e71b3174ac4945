"""A cache across runs: decoded images and context outputs on disk, keyed by content, so a
second run after a recipe change decodes nothing and runs again only what changed.

Where: ``$QUANTDOCTOR_CACHE`` (a folder), else ``$XDG_CACHE_HOME/quantdoctor`` or
``~/.cache/quantdoctor``; ``QUANTDOCTOR_CACHE=off`` (or ``--no-cache``) turns it off. Size:
at most ``$QUANTDOCTOR_CACHE_GB`` gigabytes (default 5); the entries used longest ago go
first. Keys hold everything an entry is computed from (file names, sizes and modification
times, the preprocessing, the model's content, the plan and ranges, the batch size, the
versions of quantdoctor and ONNX Runtime), so an entry is never used for other inputs.

>>> cache = DiskCache.from_environment()                  # None when off  # doctest: +SKIP
>>> cache.put("outputs", key, {"logits": logits})          # doctest: +SKIP
>>> cache.get("outputs", key)["logits"]                    # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_GB = 5.0


def content_key(*parts: Any) -> str:
    """A stable hash of JSON-able parts (the cache key of an entry)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def files_key(paths: list[Path]) -> list[tuple[str, int, int]]:
    """Files by name, size and modification time: a file edited in place is a new entry."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((str(p), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(p), -1, -1))  # unreadable: its failure is cached as such
    return out


class DiskCache:
    """Arrays by kind and key in ``folder`` (one ``.npz`` per entry, written atomically)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_environment(cls) -> DiskCache | None:
        """The cache the environment asks for, or None (off, or a folder that cannot be
        written: then the run goes on without it, with one warning)."""
        where = os.environ.get("QUANTDOCTOR_CACHE", "")
        if where.lower() in ("off", "0", "no", "false", "none"):
            return None
        if where:
            folder = Path(where)
        else:
            base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            folder = Path(base) / "quantdoctor"
        try:
            gb = float(os.environ.get("QUANTDOCTOR_CACHE_GB", DEFAULT_GB))
        except ValueError:
            gb = DEFAULT_GB
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            log.warning("cache folder %s not usable (%s): running without the cache", folder,
                        err.strerror or err)
            return None
        return cls(folder, int(gb * 2**30))

    def _path(self, kind: str, key: str) -> Path:
        return self.folder / kind / f"{key}.npz"

    def get(self, kind: str, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key``, or None. A damaged entry is removed."""
        path = self._path(kind, key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            os.utime(path)  # recently used: evicted last
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return arrays

    def put(
        self, kind: str, key: str, arrays: dict[str, np.ndarray], evict: bool = True
    ) -> None:
        """Store ``arrays`` under ``key``; a full disk or a read-only folder only costs the
        entry (a warning), never the run. ``evict=False`` for many small entries in a row:
        then call :meth:`evict` once after them."""
        path = self._path(kind, key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
            tmp = None
        except OSError as err:
            log.warning("cache entry not written (%s): %s", err.strerror or err, path)
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        if evict:
            self.evict()

    def evict(self) -> None:
        """Remove the entries used longest ago until the cache is within its size."""
        entries = []
        for p in self.folder.glob("*/*.npz"):
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size


__all__ = ["DiskCache", "content_key", "files_key"]
