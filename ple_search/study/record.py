"""The study record: every key ple-search writes to an Optuna study or trial, and a typed view of
what a study holds. Every reader and writer goes through here, so each key has one spelling and
one owner, and any storage (journal, SQLite, PostgreSQL) read from any process sees the same.

Study user attributes:

* ``ple_search`` (``META_KEY``), written once by ``run`` when it creates the study: the dataset and
  its split, the schema, the space (and ``space_changes`` after ``--allow-space-change``), the
  objectives with their metrics, the hypervolume reference point and the per-trial budget.
* ``baselines`` (``BASELINES_KEY``), by ``baselines``: per task, the single-task study and trial,
  its hparams and the fresh-seed means and stds.
* ``confirmed`` (``CONFIRMED_KEY``), by ``confirm``: per trial, fresh-seed means and stds and
  whether it stays on the front.
* ``gbdt`` (``GBDT_KEY``), by ``baselines``: per task, the gradient-boosted trees yardstick's
  chosen config and its test mean and std over seeds (``gbdt.py``).

Trial user attributes: the constants below the study keys, written by one trial
(``study.trial``), the search loop (``study.search``), the workers (``study.parallel``) and the
pruner (``study.pruning``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from ple_search.data.schema import Schema, Task
from ple_search.core.errors import StorageError

META_KEY = "ple_search"
BASELINES_KEY = "baselines"
CONFIRMED_KEY = "confirmed"
GBDT_KEY = "gbdt"

# Trial user attributes.
HPARAMS = "hparams"  # the full resolved hyperparameter dict
VAL_CURVE = "val_curve"  # per-epoch validation metrics
VAL = "val"  # validation metrics of the best epoch (the trial's values)
TEST = "test"  # test metrics of that epoch (reported, never selected on)
BEST_EPOCH = "best_epoch"  # 1-based
EPOCHS_RUN = "epochs_run"
N_PARAMS = "n_params"
TRAIN_SECONDS = "train_seconds"
RUNGS = "rungs"  # MO-ASHA: {"epochs": [objective vector at the best epoch so far]}
PRUNED_AT = "pruned_at"  # MO-ASHA: epochs run when pruned
FAIL_REASON = "fail_reason"
WORKER = "worker"  # "host:pid" of the process running the trial
DEVICE = "device"  # the GPU(s) visible to that process (CUDA_VISIBLE_DEVICES), where set
RETRY_OF = "retry_of"  # the failed trial whose config this one retries
DUPLICATE_OF = "duplicate_of"  # the COMPLETE trial whose result this one took over
COST = "cost"  # serving cost measured before training: params, flops, latency_ms, latency_spread_ms
OVER_BUDGET = "over_budget"  # why a config over the space's serving limits was never trained (stored name kept)


def directions_of(study: optuna.Study) -> list[str]:
    """``["maximize", "minimize", ...]``, one per objective."""
    return [d.name.lower() for d in study.directions]


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The COMPLETE trials (the ones with objective values)."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def count_finished(study: optuna.Study) -> int:
    """COMPLETE and PRUNED trials: what counts toward a run's ``--trials`` target."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def within_limits(study: optuna.Study, trials: Sequence[FrozenTrial], limits: Any) -> list[FrozenTrial]:
    """The trials whose measured cost is within ``limits`` (a ``serve.cost.Limits``); none is an error."""
    kept = [t for t in trials if limits.allows(t.user_attrs.get(COST))]
    if not kept:
        raise StorageError(f"no finished trial of study '{study.study_name}' is within the serving limits ({limits.describe()})")
    return kept


def state_counts(study: optuna.Study) -> dict[str, int]:
    """``{"complete": n, "pruned": n, "fail": n, "running": n}``."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {s.name.lower(): states.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}


@dataclass(frozen=True)
class StudyRecord:
    """What ``run`` stored about a study, plus what ``baselines`` and ``confirm`` added."""

    name: str
    directions: list[str]
    objectives: list[str]
    reference_point: list[float]
    metrics: list[str] = field(default_factory=list)
    schema: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, int] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    split: str | None = None
    space: dict[str, Any] = field(default_factory=dict)
    space_file: str | None = None
    baselines: dict[str, Any] = field(default_factory=dict)
    confirmed: dict[str, Any] = field(default_factory=dict)
    gbdt: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # the stored dict itself

    @classmethod
    def from_study(cls, study: optuna.Study) -> "StudyRecord":
        attrs = study.user_attrs  # one storage call (one round trip through a proxy), not one per key
        meta = attrs.get(META_KEY)
        if meta is None:
            raise StorageError(f"study '{study.study_name}' was not created by ple-search run")
        return cls(
            name=study.study_name, directions=directions_of(study), objectives=list(meta["objectives"]),
            reference_point=list(meta["reference_point"]), metrics=list(meta.get("metrics") or []),
            schema=dict(meta.get("schema") or {"tasks": []}),
            budget=dict(meta.get("budget") or {}), dataset=dict(meta.get("dataset") or {}), split=meta.get("split"),
            space=dict(meta.get("space") or {}), space_file=meta.get("space_file"),
            baselines=dict(attrs.get(BASELINES_KEY) or {}),
            confirmed=dict(attrs.get(CONFIRMED_KEY) or {}), gbdt=dict(attrs.get(GBDT_KEY) or {}),
            meta=dict(meta),
        )  # fmt: skip

    @functools.cached_property
    def parsed_schema(self) -> Schema:
        """``schema`` as a ``Schema``, parsed once (reports ask it for every row)."""
        return Schema.from_dict(self.schema if self.schema.get("tasks") is not None else {"tasks": []})

    def task_objectives(self) -> list[str]:
        """The objectives that are tasks, or a dependent task's conditional output
        (``conversion@click``); the others are serving costs, minimised."""
        tasks = set(self.parsed_schema.output_names)
        return [name for name in self.objectives if name in tasks] if tasks else list(self.objectives)

    def tasks(self) -> list[Task]:
        """The objectives as ``Task``s of the stored schema."""
        return self.parsed_schema.tasks_named(self.task_objectives(), f"study '{self.name}'")


def is_ple_study(study: optuna.Study) -> bool:
    return META_KEY in study.user_attrs


def write_meta(study: optuna.Study, meta: Mapping[str, Any]) -> None:
    study.set_user_attr(META_KEY, dict(meta))


def write_baselines(study: optuna.Study, baselines: Mapping[str, Any]) -> None:
    study.set_user_attr(BASELINES_KEY, dict(baselines))


def write_gbdt(study: optuna.Study, gbdt: Mapping[str, Any]) -> None:
    study.set_user_attr(GBDT_KEY, dict(gbdt))


def write_confirmed(study: optuna.Study, confirmed: Mapping[str, Any]) -> None:
    study.set_user_attr(CONFIRMED_KEY, dict(confirmed))
