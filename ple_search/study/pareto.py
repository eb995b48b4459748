"""Pareto math on objective vectors: non-dominated ranks, hypervolume and exclusive hypervolume
contributions, for any mix of maximised and minimised objectives. No study, storage or plotting
here: the pruner, ``confirm``, ``export`` and the reports all share these.

The work is done by moocore (López-Ibáñez et al.), which ranks 10,000 points in milliseconds and
computes hypervolumes with the dimension-sweep algorithms of Fonseca, Paquete and López-Ibáñez
(2006) and Beume et al. (2009); 2-objective contributions in O(n log n). One objective (a
single-task baseline study) is plain ordering, done here: moocore needs two columns.
"""

from __future__ import annotations

from typing import Sequence

import moocore
import numpy as np

from ple_search.data.schema import DIRECTIONS


def losses(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Objective values as losses (every column minimised)."""
    sign = np.array([-DIRECTIONS[d] for d in directions])
    return np.asarray(values, dtype=float) * sign


def nondominated_ranks(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Pareto rank of each row (0 = non-dominated, 1 = non-dominated once rank 0 is removed, ...);
    equal rows share a rank."""
    points = losses(values, directions)
    if len(points) == 0:
        return np.zeros(0, dtype=int)
    if points.shape[1] == 1:  # rank = position among the distinct values
        return np.unique(points[:, 0], return_inverse=True)[1].reshape(-1).astype(int)
    return np.asarray(moocore.pareto_rank(points), dtype=int)


def hypervolume(values: np.ndarray, directions: Sequence[str], reference: Sequence[float]) -> float:
    """Volume dominated by the points and bounded by ``reference`` (points beyond it count 0)."""
    points = losses(values, directions)
    ref = losses(np.asarray([reference]), directions)[0]
    inside = points[np.all(points < ref, axis=1)] if len(points) else points
    if not len(inside):
        return 0.0
    if points.shape[1] == 1:
        return float(ref[0] - inside[:, 0].min())
    return float(moocore.hypervolume(inside, ref=ref))


def hypervolume_contributions(values: np.ndarray, directions: Sequence[str], reference: Sequence[float]) -> np.ndarray:
    """How much hypervolume the set loses without each point (0 for dominated, duplicated or
    beyond-reference points)."""
    points = losses(values, directions)
    ref = losses(np.asarray([reference]), directions)[0]
    contributions = np.zeros(len(points))
    inside = np.all(points < ref, axis=1) if len(points) else np.zeros(0, dtype=bool)
    if inside.any() and points.shape[1] == 1:  # only a unique best point contributes: up to the next
        order = np.flatnonzero(inside)[np.argsort(points[inside, 0], kind="stable")]
        following = points[order[1], 0] if len(order) > 1 else ref[0]
        contributions[order[0]] = following - points[order[0], 0]
    elif inside.any():
        contributions[inside] = moocore.hv_contributions(points[inside], ref=ref)
    return contributions
