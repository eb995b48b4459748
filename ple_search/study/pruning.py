"""Multi-objective early stopping across trials: MO-ASHA (Schmucker et al., 2021).

Optuna's pruners need ``Trial.report``, which multi-objective studies refuse. Here a trial records,
at each rung (after ``min_epochs * eta**k`` epochs), the vector of its per-task validation metrics
at its best epoch so far, in its user attribute ``rungs`` (``{"<epochs>": [v1, v2, ...]}``), which
any storage and any worker can read. It then competes with every trial that reached the same rung:
all are ordered by non-dominated sorting, ties within a front broken by one of

- ``crowding``: NSGA-II crowding distance, larger first (the paper's NSGA-II variant);
- ``epsnet``: farthest-first order in objective space seeded with the front's best point on the
  first objective (the paper's epsilon-net variant);
- ``hypervolume``: exclusive hypervolume contribution against the study's reference point, larger
  first (as in SMS-EMOA): the measure the search is judged on, so a front's extreme point counts by
  how far it leads (often by noise on a saturated metric), not infinitely as under crowding;

and the trial continues only if it is among the best ``max(1, n // eta)`` of the ``n`` vectors,
else it stops as PRUNED. Asynchronous: a trial never waits for others; early on, with few
competitors, only the best one continues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

from ple_search.core.errors import ConfigError
from ple_search.study.pareto import hypervolume_contributions, losses, nondominated_ranks
from ple_search.study.record import RUNGS, StudyRecord



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


def by_crowding(values: np.ndarray, directions: Sequence[str], reference: Sequence[float]) -> np.ndarray:
    """A front's members, least crowded first."""
    return np.argsort(-crowding_distance(losses(values, directions)), kind="stable")


def by_epsnet(values: np.ndarray, directions: Sequence[str], reference: Sequence[float]) -> np.ndarray:
    """A front's members in farthest-first order, starting from the best on the first objective."""
    points = losses(values, directions)
    order = [int(np.argmin(points[:, 0]))]
    nearest = np.linalg.norm(points - points[order[0]], axis=1)
    while len(order) < len(points):
        nearest[order] = -np.inf
        order.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, np.linalg.norm(points - points[order[-1]], axis=1))
    return np.array(order)


def by_hypervolume(values: np.ndarray, directions: Sequence[str], reference: Sequence[float]) -> np.ndarray:
    """A front's members, largest exclusive hypervolume contribution first. Where points lie beyond
    ``reference`` (an RMSE worse than the mean predictor's after one epoch), the reference moves just
    past them, so they are still told apart by the volume they add rather than all counting 0."""
    points = losses(values, directions)
    worst = np.maximum(losses(np.asarray([reference], dtype=float), directions)[0], points.max(axis=0) + 1e-9)
    contributions = hypervolume_contributions(values, directions, losses(worst[None, :], directions)[0])
    return np.argsort(-contributions, kind="stable")


TIE_BREAKS: dict[str, Callable[[np.ndarray, Sequence[str], Sequence[float]], np.ndarray]] = {
    "crowding": by_crowding,
    "epsnet": by_epsnet,
    "hypervolume": by_hypervolume,
}


def mo_order(
    values: np.ndarray,
    directions: Sequence[str],
    tie_break: str,
    reference: Sequence[float] | None = None,
    *,
    limit: int | None = None,
) -> np.ndarray:
    """Indices of ``values`` best first: by Pareto rank, then by ``tie_break`` within each front
    (an exact tie keeps the earlier row). ``reference`` is needed by the hypervolume tie-break;
    with ``limit`` only the fronts that make up the first ``limit`` places are ordered."""
    values = np.asarray(values, dtype=float)
    ranks = nondominated_ranks(values, directions)
    order: list[int] = []
    for rank in np.unique(ranks):
        if limit is not None and len(order) >= limit:
            break
        members = np.flatnonzero(ranks == rank)
        order.extend(members[TIE_BREAKS[tie_break](values[members], directions, reference)])
    return np.array(order, dtype=int)


@dataclass(frozen=True)
class MOASHA:
    """Rungs at ``min_epochs * eta**k`` epochs; the best ``1/eta`` of each rung continue.

    Args (symbols of Schmucker et al., 2021, "Multi-objective Asynchronous Successive Halving"):
        min_epochs: r, the minimum resource: the first rung, in epochs.
        eta: eta, the reduction factor: rungs grow by eta and the top 1/eta of a rung continue.
        tie_break: how a front (one non-dominated rank) is ordered when the quota cuts through
            it: ``hypervolume`` (exclusive contribution, as SMS-EMOA), ``crowding`` (NSGA-II, the
            paper's first variant) or ``epsnet`` (the paper's epsilon-net).
    The maximum resource R is the space's ``max_epochs``; no decision is taken there.
    """

    min_epochs: int = 1
    eta: int = 3
    tie_break: str = "hypervolume"

    def is_rung(self, epochs_done: int, max_epochs: int) -> bool:
        """Whether a decision is due; never at ``max_epochs``, where the trial's cost is already spent."""
        rung = self.min_epochs
        while rung < epochs_done:
            rung *= self.eta
        return rung == epochs_done and epochs_done < max_epochs

    def keep(self, own: Sequence[float], others: np.ndarray, directions: Sequence[str], reference: Sequence[float]) -> bool:
        """Whether ``own`` is among the best ``max(1, n // eta)`` of itself and ``others``."""
        others = np.asarray(others, dtype=float).reshape(-1, len(own))
        everything = np.vstack([np.asarray(own, dtype=float)[None, :], others])
        quota = max(1, len(everything) // self.eta)
        return 0 in mo_order(everything, directions, self.tie_break, reference, limit=quota)[:quota]

    def should_prune(self, trial: optuna.Trial, epochs_done: int, max_epochs: int, vector: Sequence[float]) -> bool:
        """Record ``vector`` at this rung in the trial's user attributes and decide."""
        if not self.is_rung(epochs_done, max_epochs):
            return False
        study = trial.study
        rungs = dict(trial.user_attrs.get(RUNGS, {}))
        rungs[str(epochs_done)] = [float(v) for v in vector]
        trial.set_user_attr(RUNGS, rungs)
        others = [
            t.user_attrs[RUNGS][str(epochs_done)]
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number and str(epochs_done) in t.user_attrs.get(RUNGS, {})
            and t.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
        ]  # fmt: skip
        record = StudyRecord.from_study(study)
        return not self.keep(vector, np.array(others), record.directions, record.reference_point)


PRUNER_KEYS = ("type", "min_epochs", "eta", "tie_break")


def parse_pruner(path: str, raw: Any) -> MOASHA | None:
    """The space's ``pruner`` entry: ``none`` / absent, or ``{type: mo-asha, min_epochs, eta, tie_break}``."""
    if raw is None or raw == "none" or (isinstance(raw, dict) and raw.get("type") == "none"):
        return None
    if not isinstance(raw, dict) or raw.get("type") != "mo-asha":
        raise ConfigError(f"{path}: key 'pruner': must be none or {{type: mo-asha, min_epochs: N, eta: N, tie_break: NAME}}")
    unknown = sorted(set(raw) - set(PRUNER_KEYS))
    if unknown:
        raise ConfigError(f"{path}: key 'pruner.{unknown[0]}': unknown; allowed: {', '.join(PRUNER_KEYS)}")
    defaults = MOASHA()
    min_epochs, eta = raw.get("min_epochs", defaults.min_epochs), raw.get("eta", defaults.eta)
    for key, value, low in (("min_epochs", min_epochs, 1), ("eta", eta, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{path}: key 'pruner.{key}': must be an integer >= {low}, got {value!r}")
    tie_break = raw.get("tie_break", defaults.tie_break)
    if tie_break not in TIE_BREAKS:
        raise ConfigError(f"{path}: key 'pruner.tie_break': must be one of {', '.join(TIE_BREAKS)}, got {tie_break!r}")
    return MOASHA(min_epochs, eta, tie_break)
