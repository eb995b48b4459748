"""One trial of a search, as Optuna's ``_run_trial`` is to its ``_optimize`` loop: claim a place
under the target, sample, reuse a twin's result or train (the training engine), measure the serving
cost, store what the reports read, and turn whatever the trial raised into its state and reason.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from ple_search.core.errors import Interrupted, RankLost, StorageError, TrialFailed
from ple_search.study.parallel import worker_id
from ple_search.study.record import (
    BEST_EPOCH, COST, DEVICE, DUPLICATE_OF, EPOCHS_RUN, FAIL_REASON, HPARAMS, N_PARAMS, OVER_BUDGET, PRUNED_AT, RETRY_OF, TEST,
    TRAIN_SECONDS, VAL, VAL_CURVE, WORKER,
)  # fmt: skip
from ple_search.study.space import SearchSpace

if TYPE_CHECKING:  # the training engine (Lightning) loads only in processes that train
    from ple_search.data import Dataset
    from ple_search.train.engine import EpochHook, TrialSettings
    from ple_search.train.module import PLEModule

SURPLUS = "surplus: other workers reached the target first"


class Reporter(Protocol):
    """What the search loop tells its progress display."""

    def epoch(self, epoch: int, max_epochs: int, best_epoch: int, metrics: dict[str, float]) -> None: ...

    def trial_started(self, number: int) -> None: ...

    def trial_done(self, study: optuna.Study) -> None: ...


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
        if key not in (WORKER, DEVICE, RETRY_OF, DUPLICATE_OF):
            trial.set_user_attr(key, value)
    for key, value in twin.constraints.items():  # the samplers see the same feasibility
        trial.set_constraint(key, value)
    trial.set_user_attr(DUPLICATE_OF, twin.number)
    trial.set_user_attr(TRAIN_SECONDS, 0.0)
    return list(twin.values)


class TrialRun:
    """One trial of a search, as Optuna's ``_run_trial`` is to its ``_optimize`` loop: claim a
    place under the target, sample, reuse a twin's result or train, and turn whatever the trial
    raised into its state and reason (``_outcome``, the one place that does)."""

    def __init__(self, study: optuna.Study, space: SearchSpace, dataset: Dataset, settings: TrialSettings, target: int, reporter: Reporter) -> None:
        self.study, self.space, self.dataset, self.settings = study, space, dataset, settings
        self.target, self.reporter = target, reporter
        self.number: int | None = None

    def run(self) -> FrozenTrial | None:
        """Run one trial through ``study.optimize`` (heartbeats, stale-trial handling); the
        trial as stored afterwards."""
        self.number = None
        self.study.optimize(self, n_trials=1, catch=(TrialFailed,))
        return None if self.number is None else self.study.get_trials(deepcopy=False)[self.number]

    def __call__(self, trial: optuna.Trial) -> list[float]:
        self.number = trial.number
        trial.set_user_attr(WORKER, worker_id())
        if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            trial.set_user_attr(DEVICE, os.environ["CUDA_VISIBLE_DEVICES"])
        if self.surplus(trial.number):
            trial.set_user_attr(FAIL_REASON, SURPLUS)
            raise TrialFailed(SURPLUS)
        self.reporter.trial_started(trial.number)
        try:
            self.space.sample(trial)  # suggestions are cached: run_trial gets the same values
            twin = completed_twin(self.study, trial)
            if twin is not None:
                return reuse_twin(trial, twin)
            return run_trial(trial, self.space, self.dataset, self.settings, hook=self.reporter.epoch)
        except BaseException as exc:  # noqa: BLE001 - classified, recorded and re-raised below
            if isinstance(exc, RankLost) and RETRY_OF not in trial.user_attrs:  # not the config's doing: once more
                self.study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
            raise _outcome(trial, exc) from None

    def surplus(self, number: int) -> bool:
        """Workers that started trials at the same moment can overshoot the target: the trial
        with the higher number yields (the check and ``ask`` are not atomic across processes)."""
        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        ahead = sum(t.state != TrialState.RUNNING or t.number < number for t in trials)
        return ahead >= self.target


def _outcome(trial: optuna.Trial, exc: BaseException) -> BaseException:
    """What a trial's exception means, recorded on the trial; returns what to raise to Optuna:
    pruned stays pruned; Ctrl-C/SIGTERM becomes ``KeyboardInterrupt`` (Optuna marks the trial
    FAIL and re-raises it); a storage failure propagates; anything else is a ``TrialFailed``
    with its reason (Optuna marks it FAIL and the search goes on)."""
    if isinstance(exc, (optuna.TrialPruned, StorageError)):
        return exc
    if isinstance(exc, (KeyboardInterrupt, Interrupted)):
        trial.set_user_attr(FAIL_REASON, "interrupted")
        return exc if isinstance(exc, KeyboardInterrupt) else KeyboardInterrupt()
    if not isinstance(exc, Exception):
        return exc  # SystemExit and the like: not the trial's doing
    reason = str(exc) if isinstance(exc, TrialFailed) else f"{type(exc).__name__}: {exc}"
    trial.set_user_attr(FAIL_REASON, reason[:2000])
    return TrialFailed(reason)


def trial_costs(module: PLEModule, space: SearchSpace) -> dict[str, Any]:
    """Params and FLOPs of every trial; latency too where the space has ``serving:`` or
    optimises or bounds latency."""
    from ple_search.serve.cost import measure_costs

    return measure_costs(module, space.serving_settings(), space.cost_measures())


def _record_cost(trial: optuna.Trial, module: PLEModule, space: SearchSpace, cost: dict[str, Any]) -> None:
    """Store the cost and, with serving limits, the trial's constraint values (cost - limit, Optuna's
    ``Trial.set_constraint``: the samplers learn feasibility from them); a config over the limits
    ends PRUNED before any epoch."""
    cost.update(trial_costs(module, space))
    trial.set_user_attr(COST, cost)
    if not space.limits:
        return
    for key, excess in zip(space.limits.keys(), space.limits.excess(cost)):
        trial.set_constraint(key, excess)
    if not space.limits.allows(cost):
        reason = "over budget: " + "; ".join(space.limits.violations(cost))
        trial.set_user_attr(OVER_BUDGET, reason)
        raise optuna.TrialPruned(reason)


def run_trial(trial: optuna.Trial, space: SearchSpace, dataset: Dataset, settings: TrialSettings, *, hook: EpochHook | None = None) -> list[float]:
    """Train the trial's config and store its curves, test metrics, size and time as user attributes."""
    from ple_search.train.engine import evaluate, train_config  # the engine loads where a trial trains

    hparams = space.sample(trial)
    stop_check = None
    if space.pruner is not None:
        pruner = space.pruner

        def check(epochs_done: int, best: dict[str, float]) -> bool:
            vector = [best[t.name] for t in settings.objectives] + [cost[c] for c in space.cost_objectives]
            return pruner.should_prune(trial, epochs_done, settings.max_epochs, vector)

        stop_check = check

    cost: dict[str, Any] = {}
    module, recorder, seconds = train_config(
        hparams, dataset, settings, settings.seed + trial.number, hook=hook, stop_check=stop_check,
        on_built=lambda module: _record_cost(trial, module, space, cost), run_name=f"trial-{trial.number}",
    )  # fmt: skip
    best = recorder.curve[recorder.best_epoch]
    trial.set_user_attr(HPARAMS, module.resolved)
    trial.set_user_attr(VAL_CURVE, recorder.curve)
    trial.set_user_attr(VAL, best)
    trial.set_user_attr(BEST_EPOCH, recorder.best_epoch + 1)
    trial.set_user_attr(EPOCHS_RUN, len(recorder.curve))
    trial.set_user_attr(N_PARAMS, sum(p.numel() for p in module.parameters()))
    trial.set_user_attr(TRAIN_SECONDS, round(seconds, 3))
    if recorder.pruned_at is not None:
        trial.set_user_attr(PRUNED_AT, recorder.pruned_at)
        raise optuna.TrialPruned(f"pruned by MO-ASHA after {recorder.pruned_at} epochs")
    trial.set_user_attr(TEST, evaluate(module, dataset.test))
    values = [best[t.name] for t in settings.objectives] + [float(cost[c]) for c in space.cost_objectives]
    if any(math.isnan(v) for v in values):
        raise TrialFailed(f"undefined validation metric at the best epoch: {best}")
    return values
