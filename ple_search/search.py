"""The search loop: create or resume a study and run trials until it holds its target of finished trials."""

from __future__ import annotations

import hashlib
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from ple_search._version import __version__
from ple_search.data import Dataset
from ple_search.errors import ConfigError, Interrupted, PLESearchError, StorageError, TrialFailed
from ple_search.objective import EpochHook, TrialSettings, run_trial
from ple_search.pareto import META_KEY
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
    *,
    sampler: str | None = None,
    seed: int = 0,
    allow_space_change: bool = False,
    notify: Callable[[str], None] | None = None,
) -> optuna.Study:
    """Resume the study ``name`` or create it, recording everything later commands need.

    Args:
        sampler: overrides the space's sampler name.
        seed: the sampler seed of the process that creates the study (so a fresh study repeats
            exactly); a process that joins an existing study (a rerun to a higher target, a second
            terminal or machine, a ``--jobs`` worker) samples with its own stream, derived from
            ``seed``, its identity and the trials already there, so it never replays the configs
            of the first process.
        allow_space_change: resume a study whose stored space searches other params; without
            it that is refused with the list of changes. A different dataset is always refused.
    """
    tasks = objectives_of(space, dataset)
    directions = [t.direction for t in tasks]
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=directions)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        created = False
    stored = [d.name.lower() for d in study.directions]
    meta = study.user_attrs.get(META_KEY)
    if stored != directions or (meta and meta["objectives"] != [t.name for t in tasks]):
        raise StorageError(
            f"study '{name}' already exists with objectives {meta['objectives'] if meta else stored}; "
            f"this space optimises {[t.name for t in tasks]}: pick another --study name"
        )
    if meta is not None:
        _check_same_search(name, study, meta, space, allow_space_change, notify)
    stream = seed if created else joining_seed(seed, study)
    study.sampler = space.make_sampler(sampler, stream)
    if meta is None:
        study.set_metric_names([t.name for t in tasks])
        study.set_user_attr(META_KEY, {
            "version": __version__,
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


def joining_seed(seed: int, study: optuna.Study) -> int:
    """The sampler seed of a process joining ``study``: stable for a given seed, process and study
    state, different for every process (host and pid) and every rerun (trials already there)."""
    started = sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))
    text = f"{seed}:{worker_id()}:{started}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def dataset_identity(described: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two dataset descriptions the same data: the source (a spec file by its absolute
    path) and its options, except where the files live (``data_dir``)."""
    name = str(described["name"])
    if name.endswith((".yaml", ".yml")):
        name = str(Path(name).resolve())
    options = {k: v for k, v in (described.get("options") or {}).items() if k != "data_dir"}
    return {"name": name, "options": options}


def space_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Differences in the searched and fixed hyperparameters of two raw spaces, one phrase each."""
    changes = []
    for section in ("params", "fixed"):
        old, new = before.get(section) or {}, after.get(section) or {}
        for key in sorted(set(old) | set(new)):
            if key not in new:
                changes.append(f"{section}.{key} removed")
            elif key not in old:
                changes.append(f"{section}.{key} added ({new[key]!r})")
            elif old[key] != new[key]:
                changes.append(f"{section}.{key} {old[key]!r} -> {new[key]!r}")
    return changes


def _check_same_search(
    name: str, study: optuna.Study, meta: dict[str, Any], space: SearchSpace, allow: bool, notify: Callable[[str], None] | None
) -> None:
    if dataset_identity(meta["dataset"]) != dataset_identity(space.dataset):
        raise StorageError(
            f"study '{name}' was created on dataset {dataset_identity(meta['dataset'])}; {space.path} names "
            f"{dataset_identity(space.dataset)}: pick another --study name"
        )
    changes = space_changes(meta["space"], space.raw)
    if not changes:
        return
    if not allow:
        raise StorageError(
            f"study '{name}' was searched with another space ({'; '.join(changes)}); pass --allow-space-change "
            "to continue it with this one, or pick another --study name"
        )
    if notify is not None:
        notify(f"study '{name}': continuing with a changed space: {'; '.join(changes)}")
    history = [*meta.get("space_changes", []), {"changes": changes, "space_file": space.path}]
    study.set_user_attr(META_KEY, {**meta, "space": space.raw, "space_file": space.path, "space_changes": history})


def load_run_space(study: str, storage: optuna.storages.BaseStorage, path: str | Path | None) -> SearchSpace:
    """The space of a ``run``: ``path`` if given, else ``search_spaces/STUDY.yaml`` (the working
    directory's, else the shipped one), else the space stored in the study."""
    from ple_search.space import find_space, load_space, parse_space

    found = Path(path) if path else find_space(study)
    if found is not None:
        return load_space(found)
    try:
        stored = optuna.load_study(study_name=study, storage=storage).user_attrs.get(META_KEY)
    except KeyError:
        stored = None
    if stored is None:
        raise ConfigError(f"no search space for study '{study}': search_spaces/{study}.yaml not found; pass --space FILE")
    return parse_space(stored["space"], f"stored space of study '{study}'")


def completed_twin(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial | None:
    """The earliest COMPLETE trial with exactly ``trial``'s params, if any."""
    params = trial.params
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if other.number != trial.number and other.params == params:
            return other
    return None


def reuse_twin(trial: optuna.Trial, twin: FrozenTrial) -> list[float]:
    """Record ``twin``'s result as ``trial``'s instead of training the same config again."""
    for key, value in twin.user_attrs.items():
        if key not in ("worker", "retry_of", "duplicate_of"):
            trial.set_user_attr(key, value)
    trial.set_user_attr("duplicate_of", twin.number)
    trial.set_user_attr("train_seconds", 0.0)
    return list(twin.values)


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
            space.sample(trial)  # suggestions are cached: run_trial gets the same values
            twin = completed_twin(study, trial)
            if twin is not None:
                return reuse_twin(trial, twin)
            return run_trial(trial, space, dataset, settings, hook=reporter.epoch)
        except Interrupted:
            trial.set_user_attr("fail_reason", "interrupted")
            raise KeyboardInterrupt from None  # Optuna marks the trial FAIL, then re-raises
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            raise
        except (optuna.TrialPruned, StorageError):
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
