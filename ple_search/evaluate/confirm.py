"""Confirm a study's front on fresh seeds, so a lucky trial cannot pose as a winner.

Each chosen trial's config (the whole front, its top K by hypervolume contribution, or named
trials) is retrained on ``seeds`` fresh seeds (offset 10000, never used by the search), with the
study's budget; validation and test metrics are averaged per task. The front is recomputed on the
validation means (the metric the search selected on) and each trial is marked as staying on it
or not. Results are stored in the study's user attribute ``confirmed``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from ple_search.data import Dataset
from ple_search.core.errors import ConfigError, StorageError
from ple_search.train.metrics import summarize
from ple_search.serve.gates import measure as measure_gates
from ple_search.train.engine import SeedRun, TrialSettings, train_on_seeds
from ple_search.study.cluster import RayPlacement, SeedJob, SeedSummary, ray_seed_runs
from ple_search.study.pareto import hypervolume_contributions, nondominated_ranks
from ple_search.study.record import COST, HPARAMS, StudyRecord, finished_trials, write_confirmed

SEED_OFFSET = 10_000


def choose(study: optuna.Study, top: int | None = None, numbers: Sequence[int] = ()) -> list[FrozenTrial]:
    """Named finished trials, else the front or its ``top`` trials by hypervolume contribution."""
    record = StudyRecord.from_study(study)
    trials = finished_trials(study)
    if not trials:
        raise StorageError(f"study '{study.study_name}' has no finished trials to confirm")
    if numbers:
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        for n in numbers:
            if n not in by_number or by_number[n].state != TrialState.COMPLETE:
                raise ConfigError(f"trial {n} of study '{study.study_name}' is not a finished trial")
        return [by_number[n] for n in numbers]
    values = np.array([t.values for t in trials])
    front = [t for t, r in zip(trials, nondominated_ranks(values, record.directions)) if r == 0]
    if top is None or top >= len(front):
        return front
    contributions = hypervolume_contributions(np.array([t.values for t in front]), record.directions, record.reference_point)
    return [front[i] for i in np.argsort(-contributions, kind="stable")[:top]]


def run_confirm(
    study: optuna.Study, dataset: Dataset, trials: Sequence[FrozenTrial], seeds: int = 5, *, accelerator: str = "cpu",
    tensorboard: str | None = None, on_runs: Callable[[FrozenTrial, list[SeedRun]], None] | None = None,
    ray: RayPlacement | None = None, data_dir: str | None = None,
) -> dict[str, Any]:
    """Retrain ``trials`` on fresh seeds, recompute the front on validation means, store and return.
    With ``ray``, every (trial, seed) is one Ray task (``study.cluster.ray_seed_runs``), all at once."""
    record = StudyRecord.from_study(study)
    tasks = dataset.schema.tasks_named(record.task_objectives())
    settings = TrialSettings.from_budget(tasks, record.budget, accelerator=accelerator, tensorboard=tensorboard, experiment=f"{study.study_name}-confirm")
    confirmed = dict(record.confirmed.get("trials", {}))
    fresh = range(SEED_OFFSET, SEED_OFFSET + seeds)
    placed: dict[int, list[Any]] = {}
    if ray is not None:
        jobs = [
            SeedJob(record.dataset, data_dir, tuple(dataset.schema.task_names), tuple(record.task_objectives()), dict(record.budget),
                    trial.user_attrs[HPARAMS], seed, accelerator, ray.cpus, gates=seed == fresh[0])
            for trial in trials for seed in fresh
        ]  # fmt: skip
        summaries = ray_seed_runs(ray, jobs)
        for i, trial in enumerate(trials):
            placed[trial.number] = summaries[i * seeds : (i + 1) * seeds]
    for trial in trials:
        runs = placed.get(trial.number) or list(train_on_seeds(trial.user_attrs[HPARAMS], dataset, settings, fresh))
        if on_runs is not None:
            on_runs(trial, runs)
        val_mean, val_std = summarize([r.val for r in runs])
        test_mean, test_std = summarize([r.test for r in runs])
        for key in set(record.objectives) - set(val_mean):  # a serving cost: the config's, measured once
            val_mean[key], val_std[key] = float(trial.user_attrs[COST][key]), 0.0
        confirmed[str(trial.number)] = {"seeds": seeds, "val_mean": val_mean, "val_std": val_std, "test_mean": test_mean, "test_std": test_std}
        # what the gates do, first fresh seed (`pareto --gates`)
        gates = runs[0].gates if isinstance(runs[0], SeedSummary) else measure_gates(runs[0].module, dataset.test)
        if gates is not None:
            confirmed[str(trial.number)]["gates"] = {**gates, "seed": runs[0].seed}
    numbers = list(confirmed)
    means = np.array([[confirmed[n]["val_mean"][t] for t in record.objectives] for n in numbers])
    for n, rank in zip(numbers, nondominated_ranks(means, record.directions)):
        confirmed[n]["on_front"] = bool(rank == 0)
    result = {"seed_offset": SEED_OFFSET, "trials": confirmed}
    write_confirmed(study, result)
    return result
