"""On-disk cache of preprocessed datasets, so the next process (the next search worker) skips parsing.

The key hashes the source name, each raw file's path, size and mtime, the load settings and the
cache format; a changed file or setting therefore misses. Entries are one ``.npz`` written
atomically and read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ple_search.data.dataset import SPLITS, Dataset, Split
from ple_search.data.preprocess import Preprocessor
from ple_search.data.schema import Schema
from ple_search.files import atomic_write

FORMAT = 1


def cache_dir() -> Path:
    """``$PLE_SEARCH_CACHE``, else ``~/.cache/ple-search/preprocessed``."""
    env = os.environ.get("PLE_SEARCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ple-search" / "preprocessed"


def cache_key(source: str, files: Sequence[Path], settings: Mapping[str, Any]) -> str:
    stamp = [(str(Path(f).resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    text = json.dumps({"source": source, "files": stamp, "settings": settings, "format": FORMAT}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def save(path: Path, dataset: Dataset) -> None:
    meta = {"schema": dataset.schema.to_dict(), "preprocessor": dataset.preprocessor.to_dict(), "info": dataset.info}
    arrays = {"meta": np.array(json.dumps(meta))}
    for name in SPLITS:
        split = dataset.split(name)
        arrays.update({f"{name}_cat": split.cat.numpy(), f"{name}_num": split.num.numpy(), f"{name}_labels": split.labels.numpy()})

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(path, write)


def load(path: Path) -> Dataset | None:
    """The cached dataset, or None when absent or unreadable (it is then rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            splits = {name: Split.from_numpy(data[f"{name}_cat"], data[f"{name}_num"], data[f"{name}_labels"]) for name in SPLITS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent, torn or stale
        return None
    return Dataset(
        Schema.from_dict(meta["schema"]),
        splits["train"],
        splits["val"],
        splits["test"],
        Preprocessor.from_dict(meta["preprocessor"]),
        meta["info"],
    )


def cached(
    source: str,
    files: Sequence[Path],
    settings: Mapping[str, Any],
    build: Callable[[], Dataset],
    *,
    use_cache: bool = True,
) -> Dataset:
    """``build()`` once per key; later calls (any process) read the cache."""
    if not use_cache:
        return build()
    path = cache_dir() / f"{source}-{cache_key(source, files, settings)}.npz"
    dataset = load(path) if path.exists() else None
    if dataset is None:
        dataset = build()
        save(path, dataset)
    dataset.info["cache"] = str(path)
    return dataset
