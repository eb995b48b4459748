"""From a study to one self-contained YAML config: pick a trial, export it, load it back.

Pick rules (all on validation metrics of the Pareto front):

* ``best:TASK``: the front trial best on TASK.
* ``weights:a=0.7,b=0.3``: the front trial maximising score = prod_k P_k^(w_k), the Tencent Video
  ranking-fusion form of the PLE paper, on each task's normalised metric
  P_k = (v_k - ref_k) / (best_k - ref_k), clipped to [1e-6, 1], where ref_k is the study's
  reference point (AUC 0.5; RMSE of the mean predictor) and best_k the front's best value on task k.
* ``knee``: the front trial closest (Euclidean) to the ideal point after min-max normalising each
  objective over the front (best = 1, worst = 0).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from ple_search._version import __version__
from ple_search.core.errors import ConfigError, StorageError
from ple_search.study.pareto import nondominated_ranks
from ple_search.serve.cost import Limits
from ple_search.data import absolute_spec
from ple_search.data.schema import DIRECTIONS
from ple_search.study.record import BEST_EPOCH, COST, HPARAMS, TEST, VAL, StudyRecord, finished_trials, within_limits
from ple_search.study.storage import mask_url



def parse_weights(text: str, tasks: list[str]) -> dict[str, float]:
    """``"a=0.7,b=0.3"`` -> ``{"a": 0.7, "b": 0.3}``; every name must be a task."""
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"weights {text!r}: expected task=number pairs, e.g. {tasks[0]}=0.7")
    unknown = [n for n in weights if n not in tasks]
    if unknown or not weights:
        raise ConfigError(f"weights {text!r}: unknown task {unknown[0] if unknown else '(none)'!r}; tasks: {tasks}")
    return weights


class Pick:
    """The Pareto front of a study and the rules that choose one trial from it."""

    def __init__(self, study: optuna.Study, limits: Limits | None = None, confirmed: bool = False) -> None:
        """With serving ``limits``, the front of the trials within them (``excluded``: how many
        trials of the whole front the limits left out). With ``confirmed``, the front of the
        trials ``ple-search confirm`` retrained, on their fresh-seed validation means (``values``)."""
        self.study = study
        self.record = StudyRecord.from_study(study)
        self.tasks: list[str] = self.record.objectives
        self.directions = self.record.directions
        self.sign = np.array([DIRECTIONS[d] for d in self.directions])
        trials = finished_trials(study)
        if not trials:
            raise StorageError(f"study '{study.study_name}' has no finished trials to export")
        if confirmed:
            self._confirmed_front(trials)
            return
        self.excluded = 0
        if limits:
            ranks = nondominated_ranks(np.array([t.values for t in trials]), self.directions)
            self.excluded = sum(1 for t, r in zip(trials, ranks) if r == 0 and not limits.allows(t.user_attrs.get(COST)))
            trials = within_limits(study, trials, limits)
        ranks = nondominated_ranks(np.array([t.values for t in trials]), self.directions)
        self.front: list[FrozenTrial] = [t for t, r in zip(trials, ranks) if r == 0]
        self.values = np.array([t.values for t in self.front])

    def _confirmed_front(self, trials: list[FrozenTrial]) -> None:
        entries = self.record.confirmed.get("trials", {})
        if not entries:
            raise ConfigError(f"--confirmed: study '{self.study.study_name}' has no confirmed trials; run `ple-search confirm --study {self.study.study_name}` first")
        by_number = {t.number: t for t in trials}
        kept = [(by_number[int(n)], c) for n, c in entries.items() if c.get("on_front") and int(n) in by_number]
        self.excluded = 0
        self.front = [t for t, _ in kept]
        self.values = np.array([[c["val_mean"][o] for o in self.tasks] for _, c in kept])
    def choose(self, trial: int | None = None, pick: str | None = None) -> tuple[FrozenTrial, str]:
        """The chosen trial and a sentence saying why."""
        if trial is not None:
            found = [t for t in self.study.get_trials(deepcopy=False) if t.number == trial]
            if not found:
                raise ConfigError(f"study '{self.study.study_name}' has no trial {trial}")
            if found[0].state != TrialState.COMPLETE:
                raise ConfigError(f"trial {trial} is {found[0].state.name}, not finished; pick a COMPLETE trial")
            return found[0], f"trial {trial} as asked"
        kind, _, arg = (pick or "").partition(":")
        if kind == "best":
            if arg not in self.tasks:
                raise ConfigError(f"--pick best:{arg}: unknown task; tasks: {self.tasks}")
            k = self.tasks.index(arg)
            i = int(np.argmax(self.sign[k] * self.values[:, k]))
            return self.front[i], f"best {arg} on the Pareto front"
        if kind == "weights":
            weights = parse_weights(arg, self.tasks)
            scores = self.fusion_scores(weights)
            i = int(np.argmax(scores))
            return self.front[i], f"highest fused score prod_k P_k^w_k = {scores[i]:.4f} with weights {weights}"
        if kind == "knee":
            i = int(np.argmin(self.knee_distances()))
            return self.front[i], "knee: closest to the ideal point of the min-max normalised front"
        raise ConfigError(f"--pick {pick!r}: use knee, best:TASK or weights:TASK=W,...")

    def fusion_scores(self, weights: dict[str, float]) -> np.ndarray:
        ref = np.array(self.record.reference_point)
        best = (self.sign * self.values).max(axis=0) * self.sign
        span = np.where(best != ref, best - ref, 1.0)
        normalised = np.clip((self.values - ref) / span, 1e-6, 1.0)
        w = np.array([weights.get(t, 0.0) for t in self.tasks])
        return np.prod(normalised**w, axis=1)

    def knee_distances(self) -> np.ndarray:
        signed = self.sign * self.values
        low, high = signed.min(axis=0), signed.max(axis=0)
        normalised = np.where(high > low, (signed - low) / np.where(high > low, high - low, 1.0), 1.0)
        return np.sqrt(((1.0 - normalised) ** 2).sum(axis=1))

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {t: (float(self.values[:, k].min()), float(self.values[:, k].max())) for k, t in enumerate(self.tasks)}


def build_config(study: optuna.Study, trial: FrozenTrial, storage_url: str, reason: str) -> dict[str, Any]:
    """The export: everything needed to retrain without the study."""
    record = StudyRecord.from_study(study)
    return {
        "ple_search_version": __version__,
        "hparams": trial.user_attrs[HPARAMS],
        "dataset": absolute_spec(record.dataset),  # trains from any working directory
        "split": record.split,
        "schema": record.schema,
        "objectives": record.task_objectives(),
        "training": {
            "max_epochs": int(trial.user_attrs[BEST_EPOCH]), "patience": int(record.budget["patience"]),
            **({"trial_processes": record.budget["trial_processes"]} if record.budget.get("trial_processes", 1) > 1 else {}),
        },  # fmt: skip
        "provenance": {
            "study": study.study_name,
            "storage": mask_url(storage_url),
            "trial": trial.number,
            "pick": reason,
            "val": trial.user_attrs.get(VAL),
            "test": trial.user_attrs.get(TEST),
            "package_version": __version__,
            "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    }
