"""On-disk cache of preprocessed datasets, so the next process (the next search worker) skips parsing.

The key hashes the source name, each raw file's path, size and mtime, the load settings and the
cache format; a changed file or setting therefore misses. An entry is a folder of uncompressed
``.npy`` arrays (one per split and kind) plus ``meta.json``, built under a temporary name and
renamed into place (never seen half-written). Entries are opened memory-mapped: training reads
batches straight from the mapping, so every process on the machine (every ``--jobs`` worker)
shares the operating system's one cached copy, and a table larger than memory pages in from disk
instead of failing. Read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ple_search.data.dataset import SPLITS, Dataset, Split
from ple_search.data.preprocess import Preprocessor
from ple_search.data.schema import Schema
from ple_search.core.errors import DataError
from ple_search.core.files import follow_umask, fsync_path, fsync_tree, strict_json

FORMAT = 2
KINDS = ("cat", "num", "labels")
META = "meta.json"


def cache_dir() -> Path:
    """``$PLE_SEARCH_CACHE``, else ``~/.cache/ple-search/preprocessed``."""
    env = os.environ.get("PLE_SEARCH_CACHE")
    if env and Path(env).exists() and not Path(env).is_dir():
        raise DataError(f"PLE_SEARCH_CACHE={env} is a file; name a folder for the preprocessed-data cache (it is created if missing)")
    return Path(env) if env else Path.home() / ".cache" / "ple-search" / "preprocessed"


def cache_key(source: str, files: Sequence[Path], settings: Mapping[str, Any]) -> str:
    stamp = [(str(Path(f).resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    text = json.dumps({"source": source, "files": stamp, "settings": settings, "format": FORMAT}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def save(path: Path, dataset: Dataset) -> None:
    """Write the entry folder ``path`` atomically; if another process got there first with a
    readable entry, keep that one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        shapes = {}
        for name in SPLITS:
            split = dataset.split(name)
            for kind in KINDS:
                array = getattr(split, kind).numpy()
                np.save(tmp / f"{name}_{kind}.npy", array, allow_pickle=False)
                shapes[f"{name}_{kind}"] = [list(array.shape), array.dtype.str]
        meta = {"schema": dataset.schema.to_dict(), "preprocessor": dataset.preprocessor.to_dict(), "info": dataset.info, "arrays": shapes}
        (tmp / META).write_text(strict_json(meta))
        follow_umask(tmp)
        fsync_tree(tmp)
        if path.exists():
            if load(path) is not None:
                return  # a concurrent writer finished first
            shutil.rmtree(path, ignore_errors=True)  # torn or stale: replace it
        os.rename(tmp, path)
        fsync_path(path.parent)
    except OSError:
        if not (path.exists() and load(path) is not None):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load(path: Path) -> Dataset | None:
    """The cached dataset with memory-mapped arrays, or None when absent or unreadable (then rebuilt)."""
    try:
        meta = json.loads((path / META).read_text())
        splits = {}
        for name in SPLITS:
            arrays = []
            for kind in KINDS:
                shape, dtype = meta["arrays"][f"{name}_{kind}"]
                # copy-on-write mapping: pages come from the shared page cache and nothing writes
                array = np.load(path / f"{name}_{kind}.npy", mmap_mode="c", allow_pickle=False)
                if list(array.shape) != shape or array.dtype.str != dtype:
                    return None
                arrays.append(array)
            splits[name] = Split.from_numpy(*arrays)
        dataset = Dataset(
            Schema.from_dict(meta["schema"]), splits["train"], splits["val"], splits["test"],
            Preprocessor.from_dict(meta["preprocessor"]), meta["info"],
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, EOFError):  # absent, torn or stale
        return None
    return dataset


def cached(
    source: str,
    files: Sequence[Path],
    settings: Mapping[str, Any],
    build: Callable[[], Dataset],
    *,
    use_cache: bool = True,
) -> Dataset:
    """``build()`` once per key; later calls (any process) read the cache. The built dataset is
    returned mapped from its entry too, so the builder holds no private copy while it trains."""
    if not use_cache:
        return build()
    path = cache_dir() / f"{source}-{cache_key(source, files, settings)}"
    dataset = load(path) if path.exists() else None
    if dataset is None:
        dataset = build()
        save(path, dataset)
        dataset = load(path) or dataset
    dataset.info["cache"] = str(path)
    return dataset
