"""The training engine: train one config with Lightning to its best validation epoch, on one or several seeds.

Early stopping and the reported epoch use one score, the mean of the direction-signed objective
metrics (AUC as is, RMSE negated), so every task's value comes from the same model. Test metrics
of that epoch are stored for reporting and never used for selection.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import pytorch_lightning as pl
import torch

from ple_search.data import Dataset, PLEDataModule, Split
from ple_search.data.batches import EVAL_BATCH_SIZE, TensorBatches
from ple_search.data.schema import Task, signed
from ple_search.core.errors import ConfigError, TrialFailed
from ple_search.train.metrics import task_metrics
from ple_search.train.module import PLEModule

EpochHook = Callable[[int, int, int, dict[str, float]], None]
StopCheck = Callable[[int, dict[str, float]], bool]  # (epochs done, best metrics so far) -> stop?


def score(metrics: dict[str, float], objectives: Sequence[Task]) -> float:
    """Mean of direction-signed objective metrics; -inf when any is undefined."""
    values = [signed(metrics[t.name], t.direction) for t in objectives]
    return -math.inf if any(math.isnan(v) for v in values) else sum(values) / len(values)


class EpochRecorder(pl.Callback):
    """Records each epoch's validation metrics, keeps the best epoch's weights in memory and stops
    the run after ``patience`` epochs without improvement."""

    def __init__(
        self, objectives: Sequence[Task], patience: int, hook: EpochHook | None = None, stop_check: StopCheck | None = None
    ) -> None:
        self.objectives, self.patience, self.hook, self.stop_check = list(objectives), patience, hook, stop_check
        self.curve: list[dict[str, float]] = []
        self.best_score, self.best_epoch, self.best_state, self.wait = -math.inf, -1, None, 0
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, module: PLEModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = dict(module.last_metrics["val"])
        self.curve.append(metrics)
        epoch = len(self.curve) - 1
        current = score(metrics, self.objectives)
        if current > self.best_score:
            self.best_score, self.best_epoch, self.wait = current, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.should_stop = True
        # A run that ends here anyway (patience) is paid for: it finishes rather than being pruned.
        checking = self.stop_check is not None and not trainer.should_stop and self.best_epoch >= 0
        if checking and self.stop_check(epoch + 1, self.curve[self.best_epoch]):
            self.pruned_at = epoch + 1
            trainer.should_stop = True
        if trainer.world_size > 1:  # rank 0 owns the trial: its decision (MO-ASHA's included) holds on every rank
            trainer.should_stop, self.pruned_at = trainer.strategy.broadcast((trainer.should_stop, self.pruned_at), src=0)
        if self.hook is not None:
            self.hook(epoch, trainer.max_epochs, self.best_epoch, metrics)


@torch.no_grad()
def evaluate(module: PLEModule, split: Split, batch_size: int = EVAL_BATCH_SIZE) -> dict[str, float]:
    """Per-task metrics of ``module`` on a whole split."""
    module.eval()
    outputs = [module(cat.to(module.device), num.to(module.device)).cpu() for cat, num, _ in TensorBatches(split, batch_size)]
    return task_metrics(torch.cat(outputs), split.labels.cpu(), module.schema.tasks)


@dataclass
class TrialSettings:
    """What every trial of a run shares."""

    objectives: list[Task]
    max_epochs: int
    patience: int
    seed: int = 0
    accelerator: str = "cpu"
    tensorboard: str | None = None  # a folder: Lightning's TensorBoard logger, one version per trial or seed
    experiment: str = "ple-search"  # its name there (the study)
    processes: int = 1  # budget.trial_processes: each config trains with DDP on this many processes (``train.ranks``)

    @classmethod
    def from_budget(
        cls, objectives: Sequence[Task], budget: Mapping[str, int], *, seed: int = 0, accelerator: str = "cpu",
        tensorboard: str | None = None, experiment: str = "ple-search",
    ) -> "TrialSettings":  # fmt: skip
        """Settings from a stored or exported budget (``max_epochs``, ``patience``, ``trial_processes``)."""
        return cls(
            list(objectives), int(budget["max_epochs"]), int(budget["patience"]), seed, accelerator, tensorboard, experiment,
            int(budget.get("trial_processes", 1)),
        )  # fmt: skip


# Lightning sets its loggers to INFO with a handler of its own when it is imported, and then prints
# banners and tips at every Trainer ("GPU available", "Tip: ... litlogger", "`Trainer.fit` stopped").
# Only ple-search's own display speaks: its warnings and errors still reach stderr.
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")


def quiet_lightning() -> None:
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def make_trainer(settings: TrialSettings, callbacks: list[pl.Callback], run_name: str = "run", precision: str = "32", *, rank: int = 0) -> pl.Trainer:
    """A trainer with every per-step extra off: no checkpoints, bars, summaries or banners, and no
    logger unless ``settings.tensorboard`` names a folder (then version ``run_name`` of the
    experiment, written by rank 0). With ``settings.processes`` > 1, DDP over the processes
    ``train.ranks`` started (``strategy``)."""
    quiet_lightning()
    logger: Any = False
    strategy: Any = "auto"
    if settings.processes > 1:
        from ple_search.train.ranks import strategy as ddp

        strategy = ddp(settings.accelerator)
    if settings.tensorboard and rank == 0:
        from pytorch_lightning.loggers import TensorBoardLogger

        logger = TensorBoardLogger(settings.tensorboard, name=settings.experiment, version=run_name, default_hp_metric=False)
    return pl.Trainer(
        max_epochs=settings.max_epochs,
        accelerator=settings.accelerator,
        devices=settings.processes,
        strategy=strategy,
        logger=logger,
        log_every_n_steps=1,
        precision=precision,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def train_config(
    hparams: dict[str, Any],
    dataset: Dataset,
    settings: TrialSettings,
    seed: int,
    *,
    hook: EpochHook | None = None,
    stop_check: StopCheck | None = None,
    on_built: Callable[[PLEModule], None] | None = None,
    run_name: str = "run",
    rank: int = 0,
) -> tuple[PLEModule, EpochRecorder, float]:
    """Train one config to its best validation epoch; returns the module (best weights loaded),
    the recorder and the training seconds. With ``settings.processes`` > 1 this process is rank 0
    (it starts the other ranks, ``train.ranks.Ranks``, and alone calls ``hook`` and
    ``stop_check``) unless ``rank`` says it is one of those."""
    pl.seed_everything(seed, verbose=False)
    try:
        module = PLEModule(dataset.schema, hparams)
    except ConfigError as exc:
        raise TrialFailed(f"config cannot be built: {exc}") from None
    if on_built is not None:  # e.g. serving cost, measured before any epoch is spent
        on_built(module)
    recorder = EpochRecorder(settings.objectives, settings.patience, hook, stop_check)
    data = PLEDataModule(dataset, module.resolved["batch_size"], seed=seed, rank=rank, world=settings.processes)
    start = time.perf_counter()
    precision = module.resolved["precision"]
    if precision == "16-mixed" and not (settings.accelerator in ("gpu", "auto") and torch.cuda.is_available()):
        raise TrialFailed("precision 16-mixed needs a GPU; on CPU use bf16-mixed or 32")
    ranks: Any = contextlib.nullcontext()
    if settings.processes > 1 and rank == 0:
        from ple_search.train.ranks import Ranks

        ranks = Ranks(dataset, module.resolved, settings, seed)
    with ranks:  # the other ranks run while this one trains
        trainer = make_trainer(settings, [recorder], run_name, precision, rank=rank)
        if trainer.logger:
            trainer.logger.log_hyperparams(module.resolved)
        trainer.fit(module, data)
    seconds = time.perf_counter() - start
    if recorder.best_state is None:
        raise TrialFailed("no epoch produced defined validation metrics")
    module.load_state_dict(recorder.best_state)
    return module, recorder, seconds


@dataclass
class SeedRun:
    """One seed's training of a config: the module at its best epoch and its metrics."""

    seed: int
    module: PLEModule
    recorder: EpochRecorder
    seconds: float
    val: dict[str, float]
    test: dict[str, float]

    @property
    def curve(self) -> list[dict[str, float]]:
        """Validation metrics per epoch."""
        return self.recorder.curve


def train_on_seeds(
    hparams: dict[str, Any],
    dataset: Dataset,
    settings: TrialSettings,
    seeds: Sequence[int],
    *,
    hook: Callable[[int], EpochHook] | None = None,
) -> Iterator[SeedRun]:
    """Train ``hparams`` once per seed, yielding each run with validation (best epoch) and test metrics."""
    for seed in seeds:
        module, recorder, seconds = train_config(hparams, dataset, settings, seed, hook=hook(seed) if hook else None, run_name=f"seed-{seed}")
        yield SeedRun(seed, module, recorder, seconds, recorder.curve[recorder.best_epoch], evaluate(module, dataset.test))


def step_seconds(module: PLEModule, split: Split, threads: int, *, steps: int = 3, warmup: int = 1) -> float:
    """Median seconds of one training step (forward, backward, optimiser) of ``module`` on a batch
    of ``split`` at its batch size, on ``threads`` torch threads; the weights are restored after."""
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    optimizer = module.configure_optimizers()
    cat, num, labels = next(iter(TensorBatches(split, module.resolved["batch_size"])))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    module.train()
    try:
        times = []
        for i in range(warmup + steps):
            start = time.perf_counter()
            optimizer.zero_grad()
            module.task_losses(module(cat, num), labels).sum().backward()
            optimizer.step()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
        module.load_state_dict(state)
    return sorted(times)[len(times) // 2]


def pick_threads(module: PLEModule, split: Split, available: int, *, gain: float = 1.25) -> tuple[int, str]:
    """Torch threads per trial for models like ``module``: more than one only where a measured
    training step shows they pay (at least ``gain`` x faster on ``available`` threads than on
    one). Small multi-task models gain little from intra-op threads and lose much when another
    process holds a core, so one thread is the default answer. Returns (threads, why)."""
    if available <= 1:
        return 1, "one core per trial"
    one = step_seconds(module, split, 1)
    many = step_seconds(module, split, available)
    speedup = one / many
    if speedup >= gain:
        return available, f"{available} threads ran the largest model's training step {speedup:.2f}x as fast as one"
    return 1, f"{available} threads ran the largest model's training step only {speedup:.2f}x as fast as one"
