"""Test helpers: tiny deterministic datasets."""

from __future__ import annotations

import numpy as np

from ple_search.data.dataset import Dataset, Split
from ple_search.data.preprocess import Preprocessor
from ple_search.data.schema import Schema, Task


def make_dataset(n: int = 300, types: tuple[str, ...] = ("binary", "binary"), seed: int = 0) -> Dataset:
    """Two categorical features (vocab 5), three numeric ones, tasks of the given types."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, 5, size=(n, 2))
    num = rng.standard_normal((n, 3)).astype(np.float32)
    signal = num[:, 0] + 0.5 * (cat[:, 0] == 2) - 0.5 * num[:, 1]
    labels = []
    for k, kind in enumerate(types):
        z = signal + (0.3 * k) * num[:, 2] + 0.3 * rng.standard_normal(n)
        labels.append((z > 0).astype(np.float32) if kind == "binary" else z.astype(np.float32))
    y = np.stack(labels, 1)
    cut1, cut2 = int(n * 0.6), int(n * 0.8)
    splits = [Split.from_numpy(cat[a:b], num[a:b], y[a:b]) for a, b in ((0, cut1), (cut1, cut2), (cut2, n))]
    schema = Schema(("c0", "c1"), (5, 5), ("n0", "n1", "n2"), tuple(Task(f"t{k}", t) for k, t in enumerate(types)))
    return Dataset(schema, *splits, Preprocessor(), {"source": "test"})


def user_table(folder, n: int = 400, seed: int = 0):
    """A user's CSV (two binary tasks, categorical and numeric features, a split column) and its
    dataset spec; returns the spec path."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    country = rng.choice(["de", "fr", "us", "jp"], n)
    price = rng.exponential(10, n).round(2)
    age = rng.integers(18, 80, n)
    z = (country == "de") * 1.0 + np.log1p(price) * 0.5 - 1.5 + rng.normal(0, 0.7, n)
    frame = pd.DataFrame({
        "country": country, "price": price, "age": age,
        "click": np.where(z > 0, "yes", "no"),
        "buy": (z + 0.02 * (age - 50) + rng.normal(0, 0.7, n) > 0.5).astype(int),
        "split": np.where(np.arange(n) < n * 0.6, "train", np.where(np.arange(n) < n * 0.8, "val", "test")),
    })  # fmt: skip
    frame.to_csv(folder / "events.csv", index=False)
    (folder / "events.yaml").write_text(
        "file: events.csv\ncategorical: [country]\nnumeric: [price, age]\nlog1p: [price]\n"
        "tasks:\n  - {name: click, type: binary, labels: {'yes': 1, 'no': 0}}\n  - {name: buy, type: binary}\n"
        "split: {column: split}\n"
    )
    return folder / "events.yaml"


def tiny_space(epochs: int = 1, **extra):
    """A search space over the synthetic data small enough for a CLI test: 800 rows, a random
    sampler, ``epochs`` epochs, a searched learning rate; ``extra`` keys replace or add sections."""
    return {
        "dataset": {"name": "synthetic", "options": {"n": 800, "d": 5}},
        "sampler": {"name": "random", "seed": 0},
        "budget": {"max_epochs": epochs, "patience": epochs},
        "fixed": {"batch_size": 128},
        "params": {"lr": {"type": "float", "low": 0.001, "high": 0.01}},
        **extra,
    }


def make_cascade(n: int = 600, seed: int = 0, conditional_labels_only: bool = False) -> Dataset:
    """A click -> buy cascade: click from one signal, buy (given a click) from a related one;
    ``buy`` is 0 on every unclicked row, or NaN there with ``conditional_labels_only``."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, 5, size=(n, 2))
    num = rng.standard_normal((n, 3)).astype(np.float32)
    click = (num[:, 0] + 0.5 * (cat[:, 0] == 2) + 0.5 * rng.standard_normal(n) > 0.3).astype(np.float32)
    given = (num[:, 1] + 0.5 * num[:, 0] + 0.5 * rng.standard_normal(n) > 0.5).astype(np.float32)
    buy = click * given
    if conditional_labels_only:
        buy = np.where(click == 1, buy, np.nan).astype(np.float32)
    y = np.stack([click, buy], 1)
    cut1, cut2 = int(n * 0.6), int(n * 0.8)
    splits = [Split.from_numpy(cat[a:b], num[a:b], y[a:b]) for a, b in ((0, cut1), (cut1, cut2), (cut2, n))]
    schema = Schema(("c0", "c1"), (5, 5), ("n0", "n1", "n2"), (Task("click", "binary"), Task("buy", "binary", depends_on="click")))
    return Dataset(schema, *splits, Preprocessor(), {"source": "test"})


# A search space over the synthetic data for the scale-out tests (workers, proxies, clusters):
# short trials, a searched dropout so no two trials share a config.
WORKER_SPACE = {
    "dataset": {"name": "synthetic", "options": {"n": 1500, "d": 6}},
    "sampler": {"name": "random", "seed": 0},
    "budget": {"max_epochs": 2, "patience": 2},
    "fixed": {"lr": 0.02, "batch_size": 64, "tower_hidden": [4]},
    "params": {"dropout": {"type": "float", "low": 0.0, "high": 0.2}},
}


def free_port() -> int:
    """A TCP port nothing listens on now (for a server a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_url() -> str:
    """PLE_SEARCH_TEST_POSTGRES (``bash .ci/run`` starts the server and sets it); skipped
    without it, and a failure on CI, which must run every service-backed test."""
    import os

    import pytest

    url = os.environ.get("PLE_SEARCH_TEST_POSTGRES")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must provide PLE_SEARCH_TEST_POSTGRES (.ci/run starts PostgreSQL)")
        pytest.skip("PostgreSQL not available: set PLE_SEARCH_TEST_POSTGRES (bash .ci/run does)")
    return url


def run_export_train(folder, space: dict, study: str):
    """A one-trial study of ``space`` through the CLI, its trial exported and trained on one seed
    into ``folder/model``; returns the model's metrics.json."""
    import json

    import yaml

    from ple_search.cli.main import main

    (folder / "space.yaml").write_text(yaml.safe_dump(space))
    storage = str(folder / "s.journal")
    assert main(["run", "--study", study, "--space", str(folder / "space.yaml"), "--trials", "1", "--storage", storage, "--quiet", "--threads", "1"]) == 0
    assert main(["export", "--study", study, "--storage", storage, "--trial", "0", "--out", str(folder / "best.yaml")]) == 0
    assert main(["train", "--config", str(folder / "best.yaml"), "--seeds", "1", "--out", str(folder / "model")]) == 0
    return json.loads((folder / "model" / "metrics.json").read_text())


def processes(marker: bytes, parent: int | None = None) -> list[int]:
    """Pids of this machine's processes whose command line contains ``marker`` (and whose parent
    is ``parent``, when given), read from /proc."""
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if marker in cmdline and (parent is None or ppid == parent):
            found.append(int(entry.name))
    return found
