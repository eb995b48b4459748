"""Multi-objective early stopping across trials: MO-ASHA (Schmucker et al., 2021).

Optuna's pruners need ``Trial.report``, which multi-objective studies refuse. Here a trial records,
at each rung (after ``min_epochs * eta**k`` epochs), the vector of its per-task validation metrics
at its best epoch so far, in its user attribute ``rungs`` (``{"<epochs>": [v1, v2, ...]}``), which
any storage and any worker can read. It then competes with every trial that reached the same rung:
all are ordered by non-dominated sorting, ties within a front broken by crowding distance (larger
first, as in NSGA-II; the paper's alternative is an epsilon-net); the trial continues only if it is
among the best ``max(1, n // eta)`` of the ``n`` vectors, else it stops as PRUNED. Asynchronous: a
trial never waits for others; early on, with few competitors, only the best one continues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

from ple_search.errors import ConfigError
from ple_search.pareto import losses, nondominated_ranks

RUNGS_KEY = "rungs"
PRUNER_TYPES = ("mo-asha", "none")


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each point (loss form) within its set; boundary points are inf."""
    n, m = points.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(points[:, j], kind="stable")
        span = points[order[-1], j] - points[order[0], j]
        distance[order[0]] = distance[order[-1]] = np.inf
        if span > 0:
            distance[order[1:-1]] += (points[order[2:], j] - points[order[:-2], j]) / span
    return distance


def mo_order(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Indices of ``values`` best first: by Pareto rank, then by crowding distance (larger first),
    then by index (so an exact tie keeps the earlier row)."""
    values = np.asarray(values, dtype=float)
    ranks = nondominated_ranks(values, directions)
    crowd = np.zeros(len(values))
    points = losses(values, directions)
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        crowd[members] = crowding_distance(points[members])
    return np.array(sorted(range(len(values)), key=lambda i: (ranks[i], -crowd[i], i)))


@dataclass(frozen=True)
class MOASHA:
    """Rungs at ``min_epochs * eta**k`` epochs; the best ``1/eta`` of each rung continue."""

    min_epochs: int = 1
    eta: int = 3

    def is_rung(self, epochs_done: int) -> bool:
        rung = self.min_epochs
        while rung < epochs_done:
            rung *= self.eta
        return rung == epochs_done

    def keep(self, own: Sequence[float], others: np.ndarray, directions: Sequence[str]) -> bool:
        """Whether ``own`` is among the best ``max(1, n // eta)`` of itself and ``others``."""
        others = np.asarray(others, dtype=float).reshape(-1, len(own))
        everything = np.vstack([np.asarray(own, dtype=float)[None, :], others])
        quota = max(1, len(everything) // self.eta)
        return 0 in mo_order(everything, directions)[:quota]

    def should_prune(self, trial: optuna.Trial, epochs_done: int, vector: Sequence[float]) -> bool:
        """Record ``vector`` at this rung in the trial's user attributes and decide."""
        if not self.is_rung(epochs_done):
            return False
        study = trial.study
        rungs = dict(trial.user_attrs.get(RUNGS_KEY, {}))
        rungs[str(epochs_done)] = [float(v) for v in vector]
        trial.set_user_attr(RUNGS_KEY, rungs)
        others = [
            t.user_attrs[RUNGS_KEY][str(epochs_done)]
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number and str(epochs_done) in t.user_attrs.get(RUNGS_KEY, {})
            and t.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
        ]  # fmt: skip
        directions = [d.name.lower() for d in study.directions]
        return not self.keep(vector, np.array(others), directions)


def parse_pruner(path: str, raw: Any) -> MOASHA | None:
    """The space's ``pruner`` entry: ``none`` / absent, or ``{type: mo-asha, min_epochs, eta}``."""
    if raw is None or raw == "none" or (isinstance(raw, dict) and raw.get("type") == "none"):
        return None
    if not isinstance(raw, dict) or raw.get("type") != "mo-asha":
        raise ConfigError(f"{path}: key 'pruner': must be none or {{type: mo-asha, min_epochs: N, eta: N}}")
    unknown = sorted(set(raw) - {"type", "min_epochs", "eta"})
    if unknown:
        raise ConfigError(f"{path}: key 'pruner.{unknown[0]}': unknown; allowed: type, min_epochs, eta")
    min_epochs, eta = raw.get("min_epochs", 1), raw.get("eta", 3)
    for key, value, low in (("min_epochs", min_epochs, 1), ("eta", eta, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{path}: key 'pruner.{key}': must be an integer >= {low}, got {value!r}")
    return MOASHA(min_epochs, eta)
