"""Experiment tracking: MLflow runs for studies, trials and training seeds.

``--mlflow URI`` on ``run``, ``baselines``, ``train`` and ``confirm``: an MLflow experiment per
study, one parent run per command kind (``search``, ``train``, ``confirm``; found again by its tags
on a rerun or by another worker), and a nested run per trial or seed with its hyperparameters, its
per-epoch validation curve (``val/<task>`` at step = epoch), its final validation and test
metrics, its serving cost and its state. Trials are logged as they finish, from what the study
stored, so every storage, worker and rerun logs the same thing. ``--tensorboard DIR`` is
Lightning's TensorBoard logger inside the training engine (``TrialSettings.tensorboard``).

Needs the optional extra: ``pip install 'ple-search[track]'`` (mlflow-skinny, tensorboard). A
local store is ``sqlite:///mlflow.db``; MLflow's plain-folder store is in maintenance mode.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import optuna

from ple_search.core.errors import ConfigError
from ple_search.study.record import COST, FAIL_REASON, HPARAMS, TEST, VAL, VAL_CURVE
from ple_search.study.storage import mask_url, scrub

STUDY_TAG, ROLE_TAG = "ple_search.study", "ple_search.role"


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise ConfigError("--mlflow needs the track extra: pip install 'ple-search[track]'") from None
    return mlflow


CONNECT_SECONDS = 3.0


def _reachable(uri: str) -> None:
    """An MLflow server that does not answer is one line within a few seconds (MLflow itself
    retries for minutes); later calls time out and retry a little, not for minutes."""
    import os
    import socket
    from urllib.parse import urlsplit

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    parts = urlsplit(uri)
    if parts.scheme == "sqlite":  # MLflow retries a store it cannot open for a minute
        from pathlib import Path

        path = Path(uri.split(":///", 1)[-1] if ":///" in uri else "")
        if not str(path) or path.is_dir() or not path.parent.is_dir():
            problem = "is a folder" if path.is_dir() else "has no folder to be created in"
            raise ConfigError(f"--mlflow {mask_url(uri)}: the SQLite file {path} {problem}; name a file, e.g. sqlite:///mlflow.db")
        return
    if parts.scheme not in ("http", "https"):
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname or "localhost", port), timeout=CONNECT_SECONDS):
            pass
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ConfigError(f"--mlflow {mask_url(uri)}: no MLflow server answers there ({reason}); start it, or use a local store: sqlite:///mlflow.db") from None


def _params(hparams: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params are strings: lists and None as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in hparams.items()}


class MLflowTracker:
    """Logs to the MLflow tracking server or store at ``uri``, experiment ``experiment``."""

    def __init__(self, uri: str, experiment: str) -> None:
        _reachable(uri)
        mlflow = _mlflow()
        from mlflow.tracking import MlflowClient

        try:
            self.client = MlflowClient(uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        except Exception as exc:  # noqa: BLE001 - a store MLflow refuses or cannot open: one line naming the flag
            reason = scrub(" ".join(str(exc).strip().split(". ")[0].rstrip(".").split())[:300], uri)
            raise ConfigError(f"--mlflow {mask_url(uri)}: {reason}; a local store is sqlite:///mlflow.db, a server http://host:5000") from None
        self.experiment = experiment
        self._mlflow = mlflow

    def parent(self, role: str) -> str:
        """The run id of this experiment's ``role`` run (created on first use)."""
        query = f"tags.`{STUDY_TAG}` = '{self.experiment}' and tags.`{ROLE_TAG}` = '{role}'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1)
        if runs:
            return runs[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=role, tags={STUDY_TAG: self.experiment, ROLE_TAG: role})
        self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    def log_run(
        self, role: str, name: str, *, params: Mapping[str, Any], curve: Sequence[Mapping[str, float]],
        metrics: Mapping[str, float], tags: Mapping[str, Any], status: str = "FINISHED",
    ) -> str:  # fmt: skip
        """One nested run under the ``role`` parent; returns its id."""
        parent = self.parent(role)
        run = self.client.create_run(
            self.experiment_id, run_name=name,
            tags={"mlflow.parentRunId": parent, STUDY_TAG: self.experiment, ROLE_TAG: f"{role}-member", **{k: str(v) for k, v in tags.items()}},
        )  # fmt: skip
        run_id = run.info.run_id
        from mlflow.entities import Metric, Param

        timestamp = run.info.start_time
        history = [Metric(f"val/{key}", float(value), timestamp, step) for step, row in enumerate(curve) for key, value in row.items() if value == value]
        finals = [Metric(key, float(value), timestamp, 0) for key, value in metrics.items() if value is not None and value == value]
        self.client.log_batch(run_id, metrics=history + finals, params=[Param(k, v) for k, v in _params(params).items()])
        self.client.set_terminated(run_id, status=status)
        return run_id

    def log_trial(self, trial: optuna.trial.FrozenTrial, objectives: Sequence[str]) -> str:
        """A finished, pruned or failed trial of a search, from what the study stored."""
        attrs = trial.user_attrs
        metrics = {f"val_best/{k}": v for k, v in (attrs.get(VAL) or {}).items()}
        metrics.update({f"test/{k}": v for k, v in (attrs.get(TEST) or {}).items()})
        metrics.update({f"cost/{k}": v for k, v in (attrs.get(COST) or {}).items()})
        if trial.values:
            metrics.update({f"objective/{k}": v for k, v in zip(objectives, trial.values)})
        tags = {"trial": trial.number, "state": trial.state.name}
        if attrs.get(FAIL_REASON):
            tags["fail_reason"] = str(attrs[FAIL_REASON])[:500]
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(trial.state.name, "FAILED")
        return self.log_run("search", f"trial {trial.number}", params=attrs.get(HPARAMS) or trial.params,
                            curve=attrs.get(VAL_CURVE) or [], metrics=metrics, tags=tags, status=status)  # fmt: skip

    def log_seeds(self, role: str, hparams: Mapping[str, Any], runs: Sequence[Any], extra_tags: Mapping[str, Any] | None = None) -> list[str]:
        """The seed runs of ``train`` or ``confirm`` (``train.engine.SeedRun``s, or ``study.cluster.SeedSummary``s from Ray)."""
        ids = []
        for run in runs:
            metrics = {**{f"val_best/{k}": v for k, v in run.val.items()}, **{f"test/{k}": v for k, v in run.test.items()}}
            tags = {"seed": run.seed, "state": "COMPLETE", **(extra_tags or {})}
            ids.append(self.log_run(role, f"{role} seed {run.seed}", params=hparams, curve=run.curve, metrics=metrics, tags=tags))
        return ids


class TrackingReporter:
    """A search reporter that logs every trial to MLflow as it finishes, then tells the display."""

    def __init__(self, reporter: Any, tracker: MLflowTracker, objectives: Sequence[str]) -> None:
        self.reporter, self.tracker, self.objectives = reporter, tracker, list(objectives)
        self.running: int | None = None

    def epoch(self, epoch: int, max_epochs: int, best_epoch: int, metrics: dict[str, float]) -> None:
        self.reporter.epoch(epoch, max_epochs, best_epoch, metrics)

    def trial_started(self, number: int) -> None:
        self.running = number
        self.reporter.trial_started(number)

    def trial_done(self, study: optuna.Study) -> None:
        if self.running is not None:
            self.tracker.log_trial(study.get_trials(deepcopy=False)[self.running], self.objectives)
            self.running = None
        self.reporter.trial_done(study)

    def __enter__(self) -> "TrackingReporter":
        self.reporter.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.reporter.__exit__(*exc)
