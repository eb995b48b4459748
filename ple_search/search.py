"""The search loop: create or resume a study and run trials until it holds its target of finished trials."""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

import numpy as np
import optuna
from optuna.trial import TrialState

import ple_search
from ple_search.data import Dataset
from ple_search.errors import Interrupted, PLESearchError, StorageError, TrialFailed
from ple_search.objective import EpochHook, TrialSettings, run_trial
from ple_search.pareto import META_KEY, finished_trials, hypervolume, nondominated_ranks
from ple_search.space import SearchSpace

MAX_CONSECUTIVE_FAILURES = 10


class Reporter(Protocol):
    """What the search loop tells its progress display."""

    epoch: EpochHook

    def trial_started(self, number: int) -> None: ...

    def trial_done(self, study: optuna.Study) -> None: ...


def reference_point(dataset: Dataset, objectives: list[str]) -> list[float]:
    """Worst sensible value per objective: AUC 0.5; RMSE of predicting the train mean on validation."""
    ref = []
    for name in objectives:
        k = dataset.schema.task_names.index(name)
        if dataset.schema.tasks[k].type == "binary":
            ref.append(0.5)
        else:
            train, val = dataset.train.labels[:, k], dataset.val.labels[:, k]
            mean = float(train[~train.isnan()].mean())
            known = val[~val.isnan()]
            ref.append(float(((known - mean) ** 2).mean().sqrt()))
    return ref


def objectives_of(space: SearchSpace, dataset: Dataset) -> list:
    names = space.objectives or dataset.schema.task_names
    unknown = [n for n in names if n not in dataset.schema.task_names]
    if unknown:
        raise PLESearchError(f"{space.path}: objective '{unknown[0]}' is not a task of the dataset; tasks: {dataset.schema.task_names}")
    return [dataset.schema.tasks[dataset.schema.task_names.index(n)] for n in names]


def open_study(
    name: str,
    storage: optuna.storages.BaseStorage,
    space: SearchSpace,
    dataset: Dataset,
    sampler: optuna.samplers.BaseSampler,
) -> optuna.Study:
    """Resume the study ``name`` or create it, recording everything later commands need."""
    tasks = objectives_of(space, dataset)
    directions = [t.direction for t in tasks]
    study = optuna.create_study(study_name=name, storage=storage, directions=directions, sampler=sampler, load_if_exists=True)
    stored = [d.name.lower() for d in study.directions]
    meta = study.user_attrs.get(META_KEY)
    if stored != directions or (meta and meta["objectives"] != [t.name for t in tasks]):
        raise StorageError(
            f"study '{name}' already exists with objectives {meta['objectives'] if meta else stored}; "
            f"this space optimises {[t.name for t in tasks]}: pick another --study name"
        )
    if meta is None:
        study.set_metric_names([t.name for t in tasks])
        study.set_user_attr(META_KEY, {
            "version": ple_search.__version__,
            "dataset": space.dataset,
            "split": dataset.info.get("split"),
            "schema": dataset.schema.to_dict(),
            "space": space.raw,
            "space_file": space.path,
            "objectives": [t.name for t in tasks],
            "metrics": [t.metric for t in tasks],
            "reference_point": reference_point(dataset, [t.name for t in tasks]),
            "budget": space.budget,
        })  # fmt: skip
        for config in space.enqueue:
            study.enqueue_trial(space.enqueue_params(config), skip_if_exists=True)
    return study


def front_summary(study: optuna.Study) -> dict[str, Any]:
    """Front size, hypervolume and best value per objective of the finished trials."""
    meta = study.user_attrs[META_KEY]
    trials = finished_trials(study)
    directions = [d.name.lower() for d in study.directions]
    if not trials:
        return {"front": 0, "hypervolume": 0.0, "best": {}}
    values = np.array([t.values for t in trials])
    front = values[nondominated_ranks(values, directions) == 0]
    best = {
        name: float(values[:, k].max() if d == "maximize" else values[:, k].min())
        for k, (name, d) in enumerate(zip(meta["objectives"], directions))
    }
    return {"front": len(front), "hypervolume": hypervolume(front, directions, meta["reference_point"]), "best": best}


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr("fail_reason", reason[:2000])
    study.tell(trial, state=TrialState.FAIL)


def run_search(
    study: optuna.Study,
    space: SearchSpace,
    dataset: Dataset,
    settings: TrialSettings,
    target: int,
    reporter: Reporter,
    timeout: float | None = None,
) -> int:
    """Run trials until ``target`` finished trials exist (a rerun continues, it does not add more)
    or ``timeout`` seconds pass. A failing trial is recorded as FAIL with its reason and the search
    goes on; Ctrl-C marks the running trial FAIL and re-raises. Returns the finished count."""
    start = time.monotonic()
    failures = 0
    while (finished := count_finished(study)) < target:
        if timeout is not None and time.monotonic() - start > timeout:
            break
        trial = study.ask()
        try:
            reporter.trial_started(trial.number)
            values = run_trial(trial, space, dataset, settings, hook=reporter.epoch)
        except (KeyboardInterrupt, Interrupted):
            _fail(study, trial, "interrupted")
            raise
        except Exception as exc:  # any failing trial is recorded; the study goes on
            reason = str(exc) if isinstance(exc, TrialFailed) else f"{type(exc).__name__}: {exc}"
            _fail(study, trial, reason)
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise PLESearchError(f"{failures} trials in a row failed; the last one: {reason}") from None
        else:
            study.tell(trial, values)
            failures = 0
        reporter.trial_done(study)
    return count_finished(study)


def eta_seconds(elapsed: float, done: int, remaining: int) -> float:
    return math.nan if done == 0 else elapsed / done * remaining
