"""The search loop: create or resume a study and run trials until it holds its target of finished trials."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import optuna
from optuna.trial import TrialState

from ple_search._version import __version__
from ple_search.data import absolute_spec
from ple_search.core.errors import ConfigError, PLESearchError, StorageError
from ple_search.study.parallel import reclaim_stale_trials, worker_id
from ple_search.study.trial import SURPLUS, Reporter, TrialRun
from ple_search.study.record import FAIL_REASON, META_KEY, count_finished, directions_of, write_meta
from ple_search.study.space import SearchSpace
from ple_search.study.storage import with_retry

if TYPE_CHECKING:  # the data's arrays and the training engine load only in processes that train:
    from ple_search.data import Dataset
    from ple_search.train.engine import TrialSettings  # a --jobs parent coordinates without it

MAX_CONSECUTIVE_FAILURES = 10


def reference_point(dataset: Dataset, objectives: list[str]) -> list[float]:
    """Worst sensible value per objective: AUC 0.5; RMSE of predicting the train mean on validation."""
    ref = []
    for name in objectives:
        if name not in dataset.schema.task_names:  # a dependent task's conditional AUC (conversion@click)
            ref.append(0.5)
            continue
        k = dataset.schema.task_names.index(name)
        if dataset.schema.tasks[k].kind.probability:
            ref.append(0.5)
        else:
            train, val = dataset.train.labels[:, k], dataset.val.labels[:, k]
            mean = float(train[~train.isnan()].mean())
            known = val[~val.isnan()]
            ref.append(float(((known - mean) ** 2).mean().sqrt()))
    return ref


def objectives_of(space: SearchSpace, dataset: Dataset) -> list:
    """The tasks the space optimises (default: every task of the dataset)."""
    return dataset.schema.tasks_named(space.objectives or dataset.schema.task_names, space.path)


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
    names = [t.name for t in tasks] + space.cost_objectives
    directions = [t.direction for t in tasks] + ["minimize"] * len(space.cost_objectives)
    if space.limits:
        check_limits_reachable(space, dataset)
    reference = None
    if name not in optuna.get_all_study_names(storage):  # a new study: whatever can fail, before it exists
        reference = reference_point(dataset, [t.name for t in tasks]) + cost_reference(space, dataset)
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=directions)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        created = False
    stored = directions_of(study)
    meta = study.user_attrs.get(META_KEY)
    if stored != directions or (meta and meta["objectives"] != names):
        raise StorageError(
            f"study '{name}' already exists with objectives {meta['objectives'] if meta else stored}; "
            f"this space optimises {names}: pick another --study name"
        )
    if meta is not None:
        _check_same_search(name, study, meta, space, dataset, allow_space_change, notify)
    stream = seed if created else joining_seed(seed, study)
    study.sampler = space.make_sampler(sampler, stream)
    if meta is None:
        study.set_metric_names(names)
        write_meta(study, {
            "version": __version__,
            "dataset": space.dataset,
            "split": dataset.info.get("split"),
            "schema": dataset.schema.to_dict(),
            "space": space.raw,
            "space_file": space.path,
            "objectives": names,
            "metrics": _metrics(space, dataset),
            "reference_point": reference or reference_point(dataset, [t.name for t in tasks]) + cost_reference(space, dataset),
            "budget": space.budget,
        })  # fmt: skip
        for config in space.enqueue:
            study.enqueue_trial(space.enqueue_params(config), skip_if_exists=True)
    return study


def _metrics(space: SearchSpace, dataset: Dataset) -> list[str]:
    """What each objective measures: the tasks' metrics, then the cost keys."""
    return [t.metric for t in objectives_of(space, dataset)] + space.cost_objectives


def _model_cost(space: SearchSpace, dataset: Dataset, largest: bool) -> dict[str, Any]:
    from ple_search.serve.cost import measure_costs
    from ple_search.train.module import PLEModule

    module = PLEModule(dataset.schema, space.extreme_config(largest))
    return measure_costs(module, space.serving_settings(), space.cost_measures())


def cost_reference(space: SearchSpace, dataset: Dataset) -> list[float]:
    """Reference point of each cost objective: 1.1 x the cost of the space's largest model (a
    trial costlier than that, e.g. a latency outlier, adds no hypervolume)."""
    if not space.cost_objectives:
        return []
    cost = _model_cost(space, dataset, largest=True)
    return [1.1 * float(cost[key]) for key in space.cost_objectives]


def check_limits_reachable(space: SearchSpace, dataset: Dataset) -> None:
    """Refuse serving limits that not even the space's smallest model meets, before any trial."""
    try:
        cost = _model_cost(space, dataset, largest=False)
    except ConfigError:
        return  # the smallest corner is not a valid model: the trials will tell
    violated = space.limits.violations(cost)
    if violated:
        raise ConfigError(
            f"{space.path}: key 'limits': no config of the space can meet it: its smallest model has {'; '.join(violated)}"
        )


def joining_seed(seed: int, study: optuna.Study) -> int:
    """The sampler seed of a process joining ``study``: stable for a given seed, process and study
    state, different for every process (host and pid) and every rerun (trials already there)."""
    started = sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))
    text = f"{seed}:{worker_id()}:{started}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def dataset_identity(described: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two dataset descriptions the same data: the source (a spec file by its absolute
    path) and its options, except where the files live (``data_dir``)."""
    options = {k: v for k, v in (described.get("options") or {}).items() if k != "data_dir"}
    return {"name": absolute_spec(described)["name"], "options": options}


def space_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Differences in the searched and fixed hyperparameters and the serving limits of two raw
    spaces, one phrase each (what ``--allow-space-change`` may continue with: every stored value
    keeps its meaning)."""
    changes = []
    for section in ("params", "fixed", "limits"):
        old, new = _section(before, section), _section(after, section)
        for key in sorted(set(old) | set(new)):
            if key not in new:
                changes.append(f"{section}.{key} removed")
            elif key not in old:
                changes.append(f"{section}.{key} added ({new[key]!r})")
            elif old[key] != new[key]:
                changes.append(f"{section}.{key} {old[key]!r} -> {new[key]!r}")
    return changes


def _section(raw: Mapping[str, Any], section: str) -> dict[str, Any]:
    if section == "limits":  # formerly `constraints:`
        return dict(raw.get("limits") or raw.get("constraints") or {})
    return dict(raw.get(section) or {})


def incomparable_changes(meta: Mapping[str, Any], space: SearchSpace, dataset: Dataset) -> list[str]:
    """What would give the new trials' values another meaning than the stored ones: another task
    metric, serving settings for a study that measures latency, or data preprocessed differently
    (vocabularies, numeric bin edges, label scaling). No flag continues through these."""
    changes = []
    metrics = _metrics(space, dataset)
    if meta.get("metrics") and meta["metrics"] != metrics:
        changes.append(f"metrics {meta['metrics']} -> {metrics}")
    old_serving, new_serving = meta["space"].get("serving"), space.raw.get("serving")
    if old_serving != new_serving and "latency" in space.cost_measures():
        changes.append(f"serving {old_serving!r} -> {new_serving!r} (latencies measured differently)")
    stored, now = meta.get("schema"), dataset.schema.to_dict()
    if stored is not None and stored != now:
        what = [k for k in sorted(set(stored) | set(now)) if stored.get(k) != now.get(k)]
        changes.append(f"the data's preprocessing ({', '.join(what)}) differs from when the study was created")
    return changes


def _check_same_search(
    name: str, study: optuna.Study, meta: dict[str, Any], space: SearchSpace, dataset: Dataset, allow: bool,
    notify: Callable[[str], None] | None,
) -> None:  # fmt: skip
    if dataset_identity(meta["dataset"]) != dataset_identity(space.dataset):
        raise StorageError(
            f"study '{name}' was created on dataset {dataset_identity(meta['dataset'])}; {space.path} names "
            f"{dataset_identity(space.dataset)}: pick another --study name"
        )
    never = incomparable_changes(meta, space, dataset)
    if never:
        raise StorageError(
            f"study '{name}' cannot continue: {'; '.join(never)}; its stored values would not be comparable with new ones "
            "(not even with --allow-space-change): pick another --study name"
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
    write_meta(study, {**meta, "space": space.raw, "space_file": space.path, "space_changes": history})


def load_run_space(study: str, storage: optuna.storages.BaseStorage, path: str | Path | None) -> SearchSpace:
    """The space of a ``run``: ``path`` if given, else ``search_spaces/STUDY.yaml`` (the working
    directory's, else the shipped one), else the space stored in the study."""
    from ple_search.study.space import find_space, load_space, parse_space

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


def load_space_dataset(space: SearchSpace, data_dir: str | None = None) -> Dataset:
    """The dataset a space names; ``data_dir`` (census files) is recorded in the space's options."""
    from ple_search.data import load_described, with_data_dir

    space.dataset = with_data_dir(space.dataset, data_dir)
    return load_described(space.dataset)


def load_study_and_data(name: str, storage_url: str, data_dir: str | None = None) -> tuple[optuna.storages.BaseStorage, optuna.Study, Dataset]:
    """A stored study and its dataset, re-described from what ``run`` recorded (for ``baselines``
    and ``confirm``); ``data_dir`` overrides where the census files are."""
    from ple_search.data import load_described
    from ple_search.study.record import StudyRecord
    from ple_search.study.storage import load_study, open_storage

    storage = open_storage(storage_url)
    study = load_study(name, storage)
    return storage, study, load_described(StudyRecord.from_study(study).dataset, data_dir)


def run_search(
    study: optuna.Study,
    space: SearchSpace,
    dataset: Dataset,
    settings: TrialSettings,
    *,
    target: int,
    reporter: Reporter,
    timeout: float | None = None,
    storage_url: str = "",
    storage_retry: float = 300.0,
) -> int:
    """Run trials until the study holds ``target`` finished (COMPLETE or PRUNED) trials, or
    ``timeout`` seconds pass; returns the finished count. The loop; one trial is ``TrialRun``.

    A rerun continues to the target rather than adding more, and several workers share it. A
    failing trial is recorded FAIL with its reason and the search goes on (ten in a row stop it);
    Ctrl-C marks the running trial FAIL and raises ``KeyboardInterrupt``. Trials run through
    ``study.optimize`` so RDB storages get heartbeats; trials of dead workers are failed and
    retried once (``parallel.reclaim_stale_trials``).

    Args:
        study, space, dataset, settings: the study as ``open_study`` returned it, its search space,
            the data and what every trial shares (objectives, budget, seed, accelerator).
        target: finished trials the study must hold (``--trials``).
        reporter: the progress display (``Reporter``).
        timeout: stop starting trials after this many seconds.
        storage_url, storage_retry: for the messages and the retry budget of loop-level storage
            calls on an unreachable storage (RDB calls retry on their own; see ``storage``).
    """

    def retrying(action: Callable[[], Any], what: str) -> Any:
        return with_retry(action, storage_retry, what, storage_url)

    one = TrialRun(study, space, dataset, settings, target, reporter)
    start, failures = time.monotonic(), 0
    # Trials left RUNNING by an earlier run that died (no parent, no heartbeat) are reclaimed first.
    retrying(lambda: reclaim_stale_trials(study), "reclaiming stale trials")
    while (done := retrying(lambda: count_finished(study), "counting finished trials")) < target:
        if timeout is not None and time.monotonic() - start > timeout:
            break
        if done + retrying(lambda: count_running(study), "counting running trials") >= target:
            # Other workers' trials may reach the target: wait for them, reclaiming dead ones.
            retrying(lambda: reclaim_stale_trials(study), "reclaiming stale trials")
            time.sleep(1.0)
            continue
        trial = retrying(one.run, "running a trial")
        failed = trial is not None and trial.state == TrialState.FAIL and trial.user_attrs.get(FAIL_REASON) != SURPLUS
        failures = failures + 1 if failed else 0
        if failures >= MAX_CONSECUTIVE_FAILURES:
            raise PLESearchError(f"{failures} trials in a row failed; the last one: {trial.user_attrs.get(FAIL_REASON)}")
        reporter.trial_done(study)
    return retrying(lambda: count_finished(study), "counting finished trials")


def count_running(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
