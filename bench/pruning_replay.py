"""Replay MO-ASHA settings on recorded, unpruned trials: which tie-break, min_epochs and eta reach
the no-pruning hypervolume soonest, over many random trial orders.

A trial's recorded validation curve says what it would have shown at every rung, and its training
time per epoch what stopping it there would have saved, so one pool of unpruned trials answers
"what if" for every setting at no training cost. Each order is a single worker running the pool's
trials in that order: without pruning it reaches some hypervolume by the budget; with pruning the
same order is replayed through the shipped ``MOASHA.keep`` and the time it needs to reach that
hypervolume is recorded. Trials are drawn at random here, not by TPE, so this ranks settings;
``bench/pruning.py`` then measures the chosen one in real searches.

    python bench/pruning_replay.py POOL.journal:STUDY [...] [--budget-minutes 10] [--orders 300] [--tie-breaks ...]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import optuna

from ple_search.study.pareto import hypervolume, losses, nondominated_ranks
from ple_search.study.record import TRAIN_SECONDS, VAL_CURVE, StudyRecord
from ple_search.study.pruning import MOASHA, TIE_BREAKS
from ple_search.study.storage import open_storage

SETTINGS = [(1, 2), (1, 3), (2, 2), (2, 3)]


@dataclass
class Recorded:
    """One unpruned trial: its validation curve (rows = epochs), final values and seconds per epoch."""

    curve: np.ndarray
    values: np.ndarray
    epoch_seconds: float
    overhead: float

    def vector_at(self, epochs: int, directions: Sequence[str]) -> np.ndarray:
        """The metrics of the best epoch within the first ``epochs`` (mean signed score, first best)."""
        scores = losses(self.curve[:epochs], directions).mean(axis=1)
        return self.curve[int(np.argmin(scores))]


def load_pool(sources: Sequence[str]) -> tuple[list[Recorded], list[str], list[float], int]:
    """Complete trials of ``journal:study`` sources; all must share objectives and epoch budget."""
    pool, setup = [], None
    for source in sources:
        path, name = source.rsplit(":", 1)
        study = optuna.load_study(study_name=name, storage=open_storage(path))
        record = StudyRecord.from_study(study)
        this = (record.directions, record.reference_point, record.budget["max_epochs"], record.objectives)
        if setup is not None and this != setup:
            raise SystemExit(f"{source}: objectives, reference or epoch budget differ from the first source")
        setup = this
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            curve = np.array([[row[name] for name in record.objectives] for row in t.user_attrs[VAL_CURVE]])
            epochs = len(curve)
            train = t.user_attrs[TRAIN_SECONDS]
            pool.append(Recorded(curve, np.array(t.values), train / epochs, max(0.0, t.duration.total_seconds() - train)))
    assert setup is not None
    return pool, setup[0], setup[1], setup[2]


def replay(
    pool: list[Recorded], order: np.ndarray, pruner: MOASHA | None, directions: list[str], reference: list[float],
    max_epochs: int, until: float, target: float = np.inf,
) -> tuple[np.ndarray, np.ndarray]:
    """(completion times, hypervolume after each completion) of one worker running ``order``, up to
    ``until`` seconds, or on until the hypervolume reaches ``target``."""
    clock, front, times, volumes = 0.0, np.empty((0, len(directions))), [0.0], [0.0]
    rungs: dict[int, list[np.ndarray]] = {}
    for index in order:
        trial = pool[index]
        epochs = len(trial.curve)
        ran, pruned = epochs, False
        for e in range(1, epochs):  # the last epoch is paid for whatever the rung says
            if pruner is None or not pruner.is_rung(e, max_epochs):
                continue
            vector = trial.vector_at(e, directions)
            seen = rungs.setdefault(e, [])
            keep = pruner.keep(vector, np.array(seen).reshape(-1, len(directions)), directions, reference)
            seen.append(vector)
            if not keep:
                ran, pruned = e, True
                break
        clock += ran * trial.epoch_seconds + trial.overhead
        if not pruned:
            front = np.vstack([front, trial.values])
            front = front[nondominated_ranks(front, directions) == 0]
            times.append(clock)
            volumes.append(hypervolume(front, directions, reference))
        if clock > until and volumes[-1] >= target:
            break
    return np.array(times), np.array(volumes)


def at(times: np.ndarray, volumes: np.ndarray, moment: float) -> float:
    """Hypervolume reached by ``moment``."""
    return float(volumes[np.searchsorted(times, moment, side="right") - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="JOURNAL:STUDY of unpruned ple-search studies")
    parser.add_argument("--budget-minutes", type=float, default=10.0)
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tie-breaks", nargs="+", choices=list(TIE_BREAKS), default=list(TIE_BREAKS))
    args = parser.parse_args()
    pool, directions, reference, max_epochs = load_pool(args.sources)
    budget = args.budget_minutes * 60
    pool_seconds = sum(len(t.curve) * t.epoch_seconds + t.overhead for t in pool)
    print(f"pool: {len(pool)} trials, {pool_seconds / 60:.1f} min of unpruned training; budget {args.budget_minutes:g} min; "
          f"{args.orders} random orders; max_epochs {max_epochs}")  # fmt: skip
    rng = np.random.default_rng(args.seed)
    orders = [rng.permutation(len(pool)) for _ in range(args.orders)]
    targets = [at(*replay(pool, o, None, directions, reference, max_epochs, budget), budget) for o in orders]
    print("\n| tie-break | min_epochs | eta | median time to the unpruned hypervolume (x budget) | orders within half the budget | not reached before the pool ran out | median hypervolume at the budget minus unpruned |")
    print("|---|---|---|---|---|---|---|")
    for tie_break in args.tie_breaks:
        for min_epochs, eta in SETTINGS:
            pruner = MOASHA(min_epochs, eta, tie_break)
            ratios, gains = [], []
            for order, target in zip(orders, targets):
                times, volumes = replay(pool, order, pruner, directions, reference, max_epochs, budget, target)
                reached = volumes >= target - 1e-12
                ratios.append(times[np.argmax(reached)] / budget if reached.any() else np.inf)
                gains.append(at(times, volumes, budget) - target)
            ratios = np.array(ratios)
            print(f"| {tie_break} | {min_epochs} | {eta} | {np.median(ratios):.2f} | {np.mean(ratios <= 0.5):.0%} | "
                  f"{np.mean(np.isinf(ratios)):.0%} | {np.median(gains):+.6f} |")  # fmt: skip


if __name__ == "__main__":
    main()
