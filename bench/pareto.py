"""Pareto math benchmark: ranks, hypervolume and exclusive contributions of ``ple_search.study.pareto``
(moocore) against the implementation it replaced (one n x n domination matrix peeled front by
front; Optuna's private WFG hypervolume; contributions as n + 1 hypervolumes), measured in the same
run on the same random points, with a check that both give the same answers. Peak memory is the
Python heap (tracemalloc), which sees numpy's arrays but not moocore's C allocations, so it is shown
for the old code only.

    python bench/pareto.py [--sizes 1000 10000] [--objectives 2 3]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from optuna._hypervolume import compute_hypervolume  # the private API the old code used

from ple_search.study.pareto import hypervolume, hypervolume_contributions, losses, nondominated_ranks


def reference_ranks(values: np.ndarray, directions: list[str]) -> np.ndarray:
    points = losses(values, directions)
    n = len(points)
    dominators = np.zeros((n, n), dtype=bool)
    for start in range(0, n, 1024):
        block = points[start : start + 1024, None, :]
        dominators[start : start + 1024] = np.all(points[None] <= block, axis=2) & np.any(points[None] < block, axis=2)
    remaining = dominators.sum(axis=1)
    ranks, rank = np.full(n, -1), 0
    current = np.flatnonzero(remaining == 0)
    while current.size:
        ranks[current] = rank
        remaining -= dominators[:, current].sum(axis=1)
        remaining[current] = -1
        current = np.flatnonzero(remaining == 0)
        rank += 1
    return ranks


def reference_hypervolume(values: np.ndarray, directions: list[str], ref: list[float]) -> float:
    points = losses(values, directions)
    r = losses(np.asarray([ref]), directions)[0]
    inside = points[np.all(points < r, axis=1)]
    return float(compute_hypervolume(inside, r)) if len(inside) else 0.0


def reference_contributions(values: np.ndarray, directions: list[str], ref: list[float]) -> np.ndarray:
    total = reference_hypervolume(values, directions, ref)
    return np.array([total - reference_hypervolume(np.delete(values, i, axis=0), directions, ref) for i in range(len(values))])


def timed(action):
    tracemalloc.start()
    start = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--objectives", type=int, nargs="+", default=[2, 3])
    args = parser.parse_args()
    print("| trials x objectives | measure | before s | before peak MiB (numpy) | moocore s | speed-up | same result |")
    print("|---|---|---|---|---|---|---|")
    for d in args.objectives:
        for n in args.sizes:
            rng = np.random.default_rng(0)
            values = rng.uniform(0.5, 1.0, size=(n, d))  # AUC-like, maximised
            directions, ref = ["maximize"] * d, [0.5] * d
            old, t_old, m_old = timed(lambda: reference_ranks(values, directions))
            new, t_new, m_new = timed(lambda: nondominated_ranks(values, directions))
            rows = [("ranks", t_old, m_old, t_new, m_new, bool(np.array_equal(old, new)))]
            front = values[new == 0]
            old, t_old, m_old = timed(lambda: reference_hypervolume(front, directions, ref))
            new_hv, t_new, m_new = timed(lambda: hypervolume(front, directions, ref))
            rows.append((f"hypervolume ({len(front)} front)", t_old, m_old, t_new, m_new, bool(abs(old - new_hv) <= 1e-12 * max(1.0, abs(old)))))
            old, t_old, m_old = timed(lambda: reference_contributions(front, directions, ref))
            new, t_new, m_new = timed(lambda: hypervolume_contributions(front, directions, ref))
            rows.append((f"contributions ({len(front)} front)", t_old, m_old, t_new, m_new, bool(np.allclose(old, new, rtol=0, atol=1e-12))))
            for name, t_old, m_old, t_new, m_new, same in rows:
                print(f"| {n:,} x {d} | {name} | {t_old:.4f} | {m_old:.1f} | {t_new:.4f} | {t_old / max(t_new, 1e-9):.0f}x | {same} |")


if __name__ == "__main__":
    main()
