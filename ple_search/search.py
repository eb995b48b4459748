"""The search loop: create or resume a study and run trials until it holds its target of finished trials."""

from __future__ import annotations

import math
import os
import socket
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
from ple_search.storage import with_retry

MAX_CONSECUTIVE_FAILURES = 10
SURPLUS = "surplus: other workers reached the target first"


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


def worker_id(pid: int | None = None) -> str:
    """How a trial records the process running it: ``host:pid``."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def recover_worker_trials(study: optuna.Study, worker: str, reason: str) -> list[int]:
    """Fail the RUNNING trials of a dead ``worker`` and enqueue each config once more (not a
    retry of a retry). Optuna has no public call to fail another process's trial, hence the
    storage API, as ``optuna.storages.fail_stale_trials`` uses it."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("worker") != worker:
            continue
        storage = study._storage
        try:
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        failed.append(trial.number)
        if "retry_of" not in trial.user_attrs:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reclaim_stale_trials(study: optuna.Study) -> None:
    """Fail (and retry once) trials whose worker is gone: by heartbeat on RDB storages, and on any
    storage when the worker was a process of this machine that no longer exists."""
    optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("worker", "")
        name, _, pid = owner.rpartition(":")
        if name == host and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            recover_worker_trials(study, owner, f"worker {pid} is gone")


def run_search(
    study: optuna.Study,
    space: SearchSpace,
    dataset: Dataset,
    settings: TrialSettings,
    target: int,
    reporter: Reporter,
    timeout: float | None = None,
    storage_url: str = "",
    storage_retry: float = 300.0,
) -> int:
    """Run trials until ``target`` finished trials exist (a rerun continues, it does not add more;
    several workers share the target) or ``timeout`` seconds pass. A failing trial is recorded as
    FAIL with its reason and the search goes on; Ctrl-C marks the running trial FAIL and raises
    ``KeyboardInterrupt``. Trials run through ``study.optimize`` so RDB storages get heartbeats,
    stale trials of dead workers are failed and retried once. Returns the finished count."""
    start = time.monotonic()
    failures = 0
    current: dict[str, Any] = {}

    def objective(trial: optuna.Trial) -> list[float]:
        current["number"] = trial.number
        trial.set_user_attr("worker", worker_id())
        if surplus(trial.number):
            trial.set_user_attr("fail_reason", SURPLUS)
            raise TrialFailed(SURPLUS)
        reporter.trial_started(trial.number)
        try:
            return run_trial(trial, space, dataset, settings, hook=reporter.epoch)
        except Interrupted:
            trial.set_user_attr("fail_reason", "interrupted")
            raise KeyboardInterrupt from None  # Optuna marks the trial FAIL, then re-raises
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            raise
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # any failing trial is recorded; the study goes on
            reason = str(exc) if isinstance(exc, TrialFailed) else f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason[:2000])
            raise TrialFailed(reason) from None

    def surplus(number: int) -> bool:
        """Workers that started trials at the same moment can overshoot the target: the trial
        with the higher number yields (the check and ``ask`` are not atomic across processes)."""
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        ahead = sum(t.state != TrialState.RUNNING or t.number < number for t in trials)
        return ahead >= target

    def finished() -> int:
        return with_retry(lambda: count_finished(study), storage_retry, "counting finished trials", storage_url)

    def running() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    # Trials left RUNNING by an earlier run that died (no parent, no heartbeat) are reclaimed first.
    with_retry(lambda: reclaim_stale_trials(study), storage_retry, "reclaiming stale trials", storage_url)
    while (done := finished()) < target:
        if timeout is not None and time.monotonic() - start > timeout:
            break
        if done + with_retry(running, storage_retry, "counting running trials", storage_url) >= target:
            # Other workers' trials may reach the target: wait for them, reclaiming dead ones.
            with_retry(lambda: reclaim_stale_trials(study), storage_retry, "reclaiming stale trials", storage_url)
            time.sleep(1.0)
            continue
        current.clear()
        with_retry(lambda: study.optimize(objective, n_trials=1, catch=(TrialFailed,)), storage_retry, "running a trial", storage_url)
        trial = study.get_trials(deepcopy=False)[current["number"]] if current else None
        if trial is not None and trial.state == TrialState.FAIL and trial.user_attrs.get("fail_reason") != SURPLUS:
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise PLESearchError(f"{failures} trials in a row failed; the last one: {trial.user_attrs.get('fail_reason')}")
        else:
            failures = 0
        reporter.trial_done(study)
    return finished()


def eta_seconds(elapsed: float, done: int, remaining: int) -> float:
    return math.nan if done == 0 else elapsed / done * remaining
