"""The MMoE paper's synthetic benchmark with controllable task correlation (Ma et al. 2018, 3.2).

Orthogonal unit vectors u1, u2 in R^d; w1 = c u1, w2 = c (p u1 + sqrt(1 - p^2) u2);
x ~ N(0, I_d); y_j = w_j^T x + sum_{i=1..m} sin(alpha_i w_j^T x + beta_i) + noise,
alpha_i, beta_i ~ N(0, 1) shared by both tasks, noise sd 0.01. Lower |p| means less related tasks.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ple_search.data.dataset import Dataset, from_frames
from ple_search.data.schema import Task
from ple_search.core.errors import DataError


def generate(n: int, *, d: int = 100, p: float = 0.5, c: float = 1.0, m: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(x[n, d], y[n, 2])``, deterministic for a seed."""
    if not -1.0 <= p <= 1.0:
        raise DataError(f"synthetic: correlation p = {p} must lie in [-1, 1]")
    if n < 20 or d < 2 or m < 0:
        raise DataError(f"synthetic: need n >= 20, d >= 2, m >= 0 (got n={n}, d={d}, m={m})")
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((d, 2)))
    u1, u2 = basis[:, 0], basis[:, 1]
    w = np.stack([c * u1, c * (p * u1 + math.sqrt(1 - p * p) * u2)])
    alpha, beta = rng.standard_normal(m), rng.standard_normal(m)
    x = rng.standard_normal((n, d))
    z = x @ w.T
    y = z + np.sin(alpha[None, None, :] * z[..., None] + beta).sum(-1) + 0.01 * rng.standard_normal((n, 2))
    return x.astype(np.float32), y.astype(np.float32)


def load_synthetic(
    n: int = 12_000, *, d: int = 100, p: float = 0.5, c: float = 1.0, m: int = 10, seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> Dataset:  # fmt: skip
    """Two regression tasks ``y1``, ``y2`` over ``d`` numeric features, split by ``fractions``."""
    x, y = generate(n, d=d, p=p, c=c, m=m, seed=seed)
    columns = [f"x{i}" for i in range(d)]
    order = np.random.default_rng(seed + 1).permutation(n)
    cuts = np.cumsum([int(round(f * n)) for f in fractions[:2]])
    parts = dict(zip(("train", "val", "test"), np.split(order, cuts)))
    frames = {name: pd.DataFrame(x[idx], columns=columns) for name, idx in parts.items()}
    labels = {name: y[idx] for name, idx in parts.items()}
    options = {"n": n, "d": d, "p": p, "c": c, "m": m, "seed": seed}
    info = {"source": "synthetic", "options": options, "split": f"random {fractions} (seed {seed + 1})"}
    return from_frames(frames, labels, [], columns, tasks=[Task("y1", "regression"), Task("y2", "regression")], info=info, where="synthetic")
