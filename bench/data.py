"""Data-path benchmark: census time to first batch (cold and cached) and the batch path's epoch
throughput against a default ``DataLoader`` over a ``TensorDataset`` (same tensors, batch 1024),
and at batch 4096 from the memory-mapped cache entry against the same arrays copied into memory.

    python bench/data.py [--data-dir ../shared/data/census-income-kdd] [--epochs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from ple_search.data import load
from ple_search.data.batches import TensorBatches
from ple_search.data.dataset import Split


def first_batch_seconds(data_dir: str) -> float:
    start = time.perf_counter()
    dataset = load("census", data_dir=data_dir)
    next(iter(TensorBatches(dataset.train, 1024, shuffle=True)))
    return time.perf_counter() - start


def epoch_rate(batches, n: int, epochs: int) -> float:
    """Median samples/s of full passes that touch every batch."""
    runs = []
    for _ in range(epochs):
        start = time.perf_counter()
        total = 0.0
        for _cat, _num, labels in batches:
            total += float(labels[0, 0])  # touch the batch
        runs.append(n / (time.perf_counter() - start))
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/census-income-kdd")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PLE_SEARCH_CACHE"] = cache
        cold = first_batch_seconds(args.data_dir)
        cached = statistics.median(first_batch_seconds(args.data_dir) for _ in range(5))
        dataset = load("census", data_dir=args.data_dir)  # memory-mapped from the cache entry
        split = dataset.train
        in_memory = Split(split.cat.clone(), split.num.clone(), split.labels.clone())
        mapped_rate = epoch_rate(TensorBatches(split, 4096, shuffle=True), len(split), args.epochs)
        memory_rate = epoch_rate(TensorBatches(in_memory, 4096, shuffle=True), len(split), args.epochs)
    ours = epoch_rate(TensorBatches(in_memory, 1024, shuffle=True), len(split), args.epochs)
    loader = DataLoader(TensorDataset(in_memory.cat, in_memory.num, in_memory.labels), batch_size=1024, shuffle=True)
    reference = epoch_rate(loader, len(split), args.epochs)
    print(f"census ({dataset.info['split']}), {len(split):,} train rows, torch threads {torch.get_num_threads()}")
    print("| measure | value |")
    print("|---|---|")
    print(f"| time to first batch, cold (parse, preprocess, write cache) | {cold:.2f} s |")
    print(f"| time to first batch, cached | {cached:.3f} s |")
    print(f"| batch path (TensorBatches), batch 1024 | {ours:,.0f} samples/s |")
    print(f"| DataLoader(TensorDataset), batch 1024 | {reference:,.0f} samples/s |")
    print(f"| batch path / DataLoader | {ours / reference:.1f}x |")
    print(f"| batch path, batch 4096, from the memory-mapped cache | {mapped_rate:,.0f} samples/s |")
    print(f"| batch path, batch 4096, arrays in process memory | {memory_rate:,.0f} samples/s |")
    print(f"| mapped / in memory | {mapped_rate / memory_rate:.2f} |")


if __name__ == "__main__":
    main()
