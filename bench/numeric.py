"""Loading the quick start's synthetic table (12,000 x 100 floats): numbers taken as numbers
against the text path every value went through before (``astype(string).str.strip`` then parse),
measured in one run, median of 3; the loaded arrays are checked bit-equal.

    python bench/numeric.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from ple_search.data import preprocess
from ple_search.data.synthetic import load_synthetic


def seconds(repeats: int = 3) -> tuple[float, object]:
    times, dataset = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        dataset = load_synthetic(n=12000)
        times.append(time.perf_counter() - start)
    return statistics.median(times), dataset


def main() -> None:
    fast, ours = seconds()
    original = preprocess.to_numeric
    preprocess.to_numeric = lambda values, where, column: original(values.astype(object).map(repr).astype("string"), where, column)
    try:
        slow, text = seconds()
    finally:
        preprocess.to_numeric = original
    for split in ("train", "val", "test"):
        assert np.array_equal(ours.split(split).num.numpy(), text.split(split).num.numpy()), split
    print("| synthetic 12,000 x 100 | seconds | vs text path |")
    print("|---|---|---|")
    print(f"| text path (before) | {slow:.3f} | 1.00x |")
    print(f"| numbers as numbers | {fast:.3f} | {slow / fast:.1f}x faster |")


if __name__ == "__main__":
    main()
