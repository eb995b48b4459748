"""Progress of a running search: a rich live panel, or one log line per trial with ``--quiet``."""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import optuna
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ple_search.study.record import FAIL_REASON, OVER_BUDGET, PRUNED_AT, TRAIN_SECONDS, count_finished
from ple_search.evaluate.report import front_summary


def quiet_libraries() -> None:
    """Optuna's per-trial logs are noise beside our display (Lightning's banners are silenced where
    trainers are made, ``train.engine.quiet_lightning``: it resets its loggers when imported)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def eta_seconds(elapsed: float, done: int, remaining: int) -> float:
    return math.nan if done == 0 else elapsed / done * remaining


def _clock(seconds: float) -> str:
    if seconds != seconds:  # NaN: unknown yet
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _Base:
    def __init__(self, study: optuna.Study, target: int, console: Console | None = None) -> None:
        self.study, self.target = study, target
        self.console = console or Console(stderr=True)
        self.start = time.monotonic()
        self.finished_at_start = count_finished(study)
        self.finished = self.finished_at_start
        self.running: int | None = None
        self.epoch_text = ""
        self.summary: dict[str, Any] = front_summary(study)

    def trial_started(self, number: int) -> None:
        self.running, self.epoch_text = number, "starting"

    def pruned(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))

    def epoch(self, epoch: int, max_epochs: int, best_epoch: int, metrics: dict[str, float]) -> None:
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        self.epoch_text = f"epoch {epoch + 1}/{max_epochs} {shown}"

    def trial_done(self, study: optuna.Study) -> None:
        self.finished = count_finished(study)
        self.summary = front_summary(study)
        self.running = None


class LogReporter(_Base):
    """One plain line per finished or failed trial, for logs and batch jobs."""

    def trial_done(self, study: optuna.Study) -> None:
        number = self.running
        super().trial_done(study)
        trial = study.trials[number] if number is not None else None
        if trial is None:
            return
        if trial.state == optuna.trial.TrialState.COMPLETE:
            values = " ".join(f"{k}={v:.4f}" for k, v in zip(self.summary["best"], trial.values))
            outcome = f"{values} in {trial.user_attrs.get(TRAIN_SECONDS, 0):.1f}s"
        elif trial.state == optuna.trial.TrialState.PRUNED:
            over = trial.user_attrs.get(OVER_BUDGET)
            outcome = f"PRUNED before training, {over}" if over else f"PRUNED after {trial.user_attrs.get(PRUNED_AT)} epochs"
        else:
            outcome = f"{trial.state.name}: {trial.user_attrs.get(FAIL_REASON, '')}"
        self.console.print(
            f"trial {number}: {outcome} | {self.finished}/{self.target} finished, "
            f"front {self.summary['front']}, hypervolume {self.summary['hypervolume']:.5f}",
            highlight=False,
        )

    def __enter__(self) -> "LogReporter":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class LiveReporter(_Base):
    """A live panel: progress toward the target, the running trial and its epoch, elapsed and
    ETA, Pareto front size, hypervolume and best value per task."""

    def __init__(self, study: optuna.Study, target: int, console: Console | None = None) -> None:
        super().__init__(study, target, console)
        self.live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False)

    def render(self) -> Table:
        elapsed = time.monotonic() - self.start
        done = self.finished - self.finished_at_start
        table = Table(title=f"ple-search: study {self.study.study_name}", show_header=False, box=None)
        table.add_row("trials", f"{self.finished}/{self.target} finished ({self.pruned()} pruned)")
        table.add_row("running", f"trial {self.running}: {self.epoch_text}" if self.running is not None else "-")
        table.add_row("elapsed / ETA", f"{_clock(elapsed)} / {_clock(eta_seconds(elapsed, done, self.target - self.finished))}")
        table.add_row("Pareto front", f"{self.summary['front']} trials, hypervolume {self.summary['hypervolume']:.5f}")
        table.add_row("best", " ".join(f"{k}={v:.4f}" for k, v in self.summary["best"].items()) or "-")
        return table

    def _refresh(self) -> None:
        self.live.update(self.render())

    def trial_started(self, number: int) -> None:
        super().trial_started(number)
        self._refresh()

    def epoch(self, epoch: int, max_epochs: int, best_epoch: int, metrics: dict[str, float]) -> None:
        super().epoch(epoch, max_epochs, best_epoch, metrics)
        self._refresh()

    def trial_done(self, study: optuna.Study) -> None:
        super().trial_done(study)
        self._refresh()

    def __enter__(self) -> "LiveReporter":
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._refresh()
        self.live.__exit__(*exc)


class WorkersReporter(_Base):
    """The parent's display for ``--jobs N``: polls the storage, shows every worker's last line
    (``echo``: print worker lines as they come instead of a live panel)."""

    def __init__(self, study: optuna.Study, target: int, console: Console, jobs: int, echo: bool) -> None:
        super().__init__(study, target, console)
        self.echo = echo
        self.lines = ["starting"] * jobs
        self.last_poll = 0.0
        self.live = None if echo else Live(self.render(), console=self.console, refresh_per_second=2)

    def worker_line(self, index: int, line: str) -> None:
        self.lines[index] = line
        if self.echo:
            self.console.print(f"[worker {index}] {line}", highlight=False, markup=False)

    def tick(self) -> None:
        if time.monotonic() - self.last_poll < 2.0:
            return
        self.last_poll = time.monotonic()
        self.trial_done(self.study)
        if self.live is not None:
            self.live.update(self.render())

    def render(self) -> Table:
        elapsed = time.monotonic() - self.start
        done = self.finished - self.finished_at_start
        running = len(self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
        table = Table(title=f"ple-search: study {self.study.study_name}, {len(self.lines)} workers", show_header=False, box=None)
        table.add_row("trials", f"{self.finished}/{self.target} finished ({self.pruned()} pruned), {running} running")
        table.add_row("elapsed / ETA", f"{_clock(elapsed)} / {_clock(eta_seconds(elapsed, done, self.target - self.finished))}")
        table.add_row("Pareto front", f"{self.summary['front']} trials, hypervolume {self.summary['hypervolume']:.5f}")
        table.add_row("best", " ".join(f"{k}={v:.4f}" for k, v in self.summary["best"].items()) or "-")
        for i, line in enumerate(self.lines):
            table.add_row(f"worker {i}", line[:120])
        return table

    def __enter__(self) -> "WorkersReporter":
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.last_poll = 0.0
        self.tick()
        if self.live is not None:
            self.live.__exit__(*exc)
