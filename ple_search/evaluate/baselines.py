"""Single-task baselines of a study, the reference for MTL gain, seesaw and negative transfer.

Protocol, per task of the study: a single-task study ``<study>:single:<task>`` in the same storage
searches the same space (loss-weighting keys dropped: one task has nothing to weigh) with the same
per-trial budget, for the same ``PLE`` with ``num_tasks=1`` (its experts and one tower) on the same
features and splits; its best config (validation) is then retrained on ``seeds`` seeds and
evaluated on test. Mean and std per task are stored in the study's user attribute ``baselines``.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

import optuna

from ple_search.data import Dataset
from ple_search.model.hparams import WEIGHTING_KEYS
from ple_search.train.metrics import summarize
from ple_search.train.engine import TrialSettings, train_on_seeds
from ple_search.study.record import HPARAMS, StudyRecord, write_baselines, write_gbdt
from ple_search.study.cluster import RayPlacement, SeedJob, ray_search, ray_seed_runs
from ple_search.study.search import open_study, run_search
from ple_search.study.trial import Reporter
from ple_search.study.space import SearchSpace, parse_space


def single_task_space(raw: dict[str, Any], task: str, where: str) -> SearchSpace:
    """The study's space for one task: task-balancing keys (``model.hparams.WEIGHTING_KEYS``) removed
    everywhere, and so is any parameter searched only under a removed key (``when``)."""
    raw = copy.deepcopy(raw)
    raw["objectives"] = [task]
    params = raw.get("params") or {}
    removed = set(WEIGHTING_KEYS) | {n for n, spec in params.items() if isinstance(spec, dict) and set(spec.get("when") or {}) & set(WEIGHTING_KEYS)}
    for section in (params, raw.get("fixed") or {}):
        for name in removed:
            section.pop(name, None)
    raw["enqueue"] = [{k: v for k, v in config.items() if k not in removed} for config in raw.get("enqueue") or []]
    return parse_space(raw, where)


def run_gbdt(study: optuna.Study, dataset: Dataset, seeds: int) -> dict[str, Any]:
    """The GBDT yardstick for every task objective of ``study``; stored and returned."""
    from ple_search.evaluate.gbdt import fit_gbdt

    record = StudyRecord.from_study(study)
    results = fit_gbdt(dataset, record.task_objectives(), seeds)
    write_gbdt(study, {**record.gbdt, **results})
    return results


def baseline_study_name(study: str, task: str) -> str:
    return f"{study}:single:{task}"


def run_baselines(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    dataset: Dataset,
    trials: int,
    *,
    seeds: int,
    reporter: Callable[[optuna.Study, int], Reporter],
    sampler_seed: int = 0,
    accelerator: str = "cpu",
    tensorboard: str | None = None,
    ray: RayPlacement | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Search and retrain a single-task baseline per objective; store and return the results.
    With ``ray``, each search runs on ``ray.jobs`` Ray workers and each seed is one Ray task
    (``study.cluster``); ``data_dir`` is where the nodes find the census files."""
    record = StudyRecord.from_study(study)
    results = dict(record.baselines)
    for task in record.task_objectives():
        single = dataset.select_tasks([task])
        space = single_task_space(record.space, task, f"single-task space of study '{study.study_name}' ({task})")
        name = baseline_study_name(study.study_name, task)
        baseline = open_study(name, storage, space, single, seed=sampler_seed)
        settings = TrialSettings.from_budget(
            list(single.schema.tasks), record.budget, seed=sampler_seed, accelerator=accelerator, tensorboard=tensorboard, experiment=name,
        )  # fmt: skip
        if ray is not None:
            ray_search(ray, baseline, trials, tasks=[task], accelerator=accelerator, data_dir=data_dir)
        else:
            with reporter(baseline, trials) as progress:
                run_search(baseline, space, single, settings, target=trials, reporter=progress)
        best = baseline.best_trial
        if ray is not None:
            job = SeedJob(record.dataset, data_dir, (task,), (task,), dict(record.budget), best.user_attrs[HPARAMS], 0, accelerator, ray.cpus)
            runs: list[Any] = ray_seed_runs(ray, [dataclasses.replace(job, seed=seed) for seed in range(seeds)])
        else:
            runs = list(train_on_seeds(best.user_attrs[HPARAMS], single, settings, range(seeds)))
        val_mean, val_std = summarize([r.val for r in runs])
        test_mean, test_std = summarize([r.test for r in runs])
        results[task] = {
            "study": name, "trial": best.number, "hparams": best.user_attrs[HPARAMS], "seeds": seeds,
            "val_mean": val_mean[task], "val_std": val_std[task], "test_mean": test_mean[task], "test_std": test_std[task],
        }  # fmt: skip
        write_baselines(study, results)
    return results
