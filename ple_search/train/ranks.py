"""Trials trained on several processes: Lightning DDP over ``budget.trial_processes`` processes of
one machine (gloo on CPU, NCCL on GPU with one GPU per rank).

The process that trains the config (a search worker, ``train``, ``confirm``) is rank 0. It alone
talks to the study: it samples the config, measures the serving cost, records the rungs and takes
MO-ASHA's decisions, and stores the result. For the length of one ``fit`` it starts the other
ranks (``Ranks``): ``python -m ple_search.train.rank_process SPEC RANK`` processes that read the config,
the settings and the seed from a JSON spec, open the dataset memory-mapped from its cache entry (a
dataset that has none is written to a private entry once per process, ``shared_entry``), build
the same model from the same seed, and only train. Each rank reads its own shard of every pass
(``data.batches.TensorBatches``); DDP averages the gradients, so the ranks hold one model; the
validation outputs are gathered, so the metrics are the whole split's
(``PLEModule.on_validation_epoch_end``); whether to stop is rank 0's word (``EpochRecorder``).

A rank that fails fails the trial on rank 0 with its reason; one that is killed fails it as
``RankLost`` (the search runs the config once more, ``study.trial``); rank 0 that dies takes
the others with it (each watches its parent); Ctrl-C reaches rank 0 only (the others ignore
SIGINT), which stops them.

Where a gradient-balancing scheme (PCGrad, MGDA, CAGrad, Aligned-MTL, Nash-MTL, GradNorm) combines
per-task gradients, each rank combines those of its shard and DDP averages the combined
directions: the scheme applied per shard, not to the global batch's gradients.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping

import torch

from ple_search.core.errors import RankLost, TrialFailed
from ple_search.data import cache
from ple_search.data.dataset import Dataset

ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "OMP_NUM_THREADS")
READY = "ready"
START_SECONDS = 300.0  # a rank that has not loaded its data and built its model by then fails the trial
COLLECTIVE_TIMEOUT = timedelta(minutes=30)  # rank 0 may wait out a storage outage between epochs


def strategy(accelerator: str) -> Any:
    """The DDP strategy every rank's trainer uses: processes started here, not by Lightning (the
    environment's ``LOCAL_RANK``), gloo on CPU and NCCL on GPUs."""
    from lightning_fabric.plugins.environments import LightningEnvironment
    from pytorch_lightning.strategies import DDPStrategy

    gpu = accelerator in ("gpu", "auto") and torch.cuda.is_available()
    return DDPStrategy(
        cluster_environment=LightningEnvironment(), process_group_backend="nccl" if gpu else "gloo",
        static_graph=True, gradient_as_bucket_view=True, timeout=COLLECTIVE_TIMEOUT,  # static: a config's parameters that get no gradient never do
    )  # fmt: skip


_ENTRIES: dict[int, tuple[weakref.ref, Path]] = {}  # by id, with a weak reference: an id is reused once its dataset is gone


def shared_entry(dataset: Dataset) -> Path:
    """A cache entry the other ranks can map ``dataset`` from: its own when it was loaded from one
    with this schema, else a private copy written once per dataset and removed when this process ends."""
    own = dataset.info.get("cache")
    if own:
        try:
            if json.loads((Path(own) / cache.META).read_text())["schema"] == dataset.schema.to_dict():
                return Path(own)
        except (OSError, ValueError, KeyError):
            pass
    known = _ENTRIES.get(id(dataset))
    if known is not None and known[0]() is dataset:
        return known[1]
    folder = Path(tempfile.mkdtemp(prefix="ple-search-ranks-"))
    atexit.register(shutil.rmtree, folder, True)
    cache.save(folder / "data", dataset)
    _ENTRIES[id(dataset)] = (weakref.ref(dataset), folder / "data")
    return folder / "data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ranks:
    """Ranks 1..P-1 of one ``fit`` on this machine, with rank 0 (this process) set up to join them:
    the environment Lightning reads (``LOCAL_RANK`` 0, ``WORLD_SIZE``, the address and a free
    port) and this process's torch threads kept, for the length of the ``with`` block. Entering
    returns once every rank has loaded its data (or fails the trial with the
    rank's reason); leaving waits for them to end (or stops them when the block raised), tears the
    process group down and restores the environment, so the next trial starts clean."""

    def __init__(self, dataset: Dataset, hparams: Mapping[str, Any], settings: Any, seed: int) -> None:
        self.dataset, self.hparams, self.settings, self.seed = dataset, dict(hparams), settings, seed
        self.world = settings.processes
        self.helpers: list[subprocess.Popen] = []
        self.folder: Path | None = None

    def __enter__(self) -> "Ranks":
        self.threads = torch.get_num_threads()
        self.saved = {key: os.environ.get(key) for key in ENV_KEYS}
        entry = shared_entry(self.dataset)
        self.folder = Path(tempfile.mkdtemp(prefix="ple-search-trial-"))
        spec = {
            "data": str(entry), "hparams": self.hparams, "seed": self.seed, "threads": self.threads,
            "settings": {
                "objectives": [t.name for t in self.settings.objectives], "max_epochs": self.settings.max_epochs,
                "patience": self.settings.patience, "seed": self.settings.seed, "accelerator": self.settings.accelerator,
                "processes": self.world,
            },
        }  # fmt: skip
        (self.folder / "spec.json").write_text(json.dumps(spec))
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(self.world), NODE_RANK="0", LOCAL_RANK="0",
            OMP_NUM_THREADS=str(self.threads),  # else Lightning sets this process's threads to cores / processes
        )  # fmt: skip
        try:
            for rank in range(1, self.world):
                with open(self.folder / f"rank-{rank}.err", "wb") as err:
                    self.helpers.append(subprocess.Popen(
                        [sys.executable, "-m", "ple_search.train.rank_process", str(self.folder / "spec.json"), str(rank)],
                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env={**os.environ, "LOCAL_RANK": str(rank)},
                    ))  # fmt: skip
            self._wait_ready()
        except BaseException:
            self._stop()
            self._restore()
            raise
        return self

    def _wait_ready(self) -> None:
        waiting = {h.stdout.fileno(): (rank, h) for rank, h in enumerate(self.helpers, start=1) if h.stdout}
        deadline = time.monotonic() + START_SECONDS
        while waiting:
            readable, _, _ = select.select(list(waiting), [], [], 1.0)
            for fd in readable:
                rank, helper = waiting[fd]
                line = helper.stdout.readline().decode(errors="replace").strip() if helper.stdout else ""
                if line == READY:
                    del waiting[fd]
                elif helper.poll() is not None or not line:
                    helper.wait()
                    raise self._failure(rank, helper)
            for fd, (rank, helper) in list(waiting.items()):
                if helper.poll() is not None and fd not in readable:
                    raise self._failure(rank, helper)
            if waiting and time.monotonic() > deadline:
                raise TrialFailed(f"rank {min(r for r, _ in waiting.values())} of {self.world} did not start within {START_SECONDS:.0f} s")

    def _failure(self, rank: int, helper: subprocess.Popen) -> TrialFailed:
        """The trial's reason when ``rank`` failed: the last line it wrote to stderr, or its exit."""
        lines = [] if self.folder is None else (self.folder / f"rank-{rank}.err").read_text(errors="replace").strip().splitlines()
        if helper.returncode is not None and helper.returncode < 0:
            return RankLost(f"rank {rank} of {self.world} was killed by {signal.Signals(-helper.returncode).name}")
        why = lines[-1] if lines else f"exit status {helper.returncode}"
        return TrialFailed(f"rank {rank} of {self.world} failed: {why}")

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            failed = None
            if exc is None:
                for helper in self.helpers:
                    try:
                        helper.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        pass
            elif isinstance(exc, Exception):  # a collective broken by a rank that died: say which and why
                time.sleep(0.5)
                failed = next(((r, h) for r, h in enumerate(self.helpers, start=1) if h.poll() not in (None, 0)), None)
            self._stop()
            if failed is not None:
                raise self._failure(*failed) from None
        finally:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            self._restore()

    def _stop(self) -> None:
        for helper in self.helpers:
            if helper.poll() is None:
                helper.kill()
        for helper in self.helpers:
            helper.wait()
            if helper.stdout:
                helper.stdout.close()

    def _restore(self) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.set_num_threads(self.threads)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
