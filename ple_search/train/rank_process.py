"""A rank other than 0 of a multi-process trial (``train.ranks``): ``python -m
ple_search.train.rank_process SPEC RANK`` loads what the spec names, says it is ready on stdout,
trains its shard in step with the others and exits; its reason for failing is its last stderr line."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

from ple_search.core.errors import TrialFailed
from ple_search.data import cache
from ple_search.train.engine import TrialSettings, train_config
from ple_search.train.ranks import READY


def _watch_parent() -> None:
    """End this rank when rank 0 (the parent) is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def main(spec_path: str, rank: int) -> int:
    """One rank other than 0: load what the spec names, say ready on stdout, train, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle
    warnings.simplefilter("ignore")  # stderr's last line is this rank's reason for rank 0
    _watch_parent()
    try:
        spec = json.loads(Path(spec_path).read_text())
        torch.set_num_threads(int(spec["threads"]))
        dataset = cache.load(Path(spec["data"]))
        if dataset is None:
            raise TrialFailed(f"cannot read the dataset's cache entry {spec['data']}")
        given = spec["settings"]
        tasks = {t.name: t for t in dataset.schema.tasks}
        settings = TrialSettings(
            [tasks[name] for name in given["objectives"]], given["max_epochs"], given["patience"], given["seed"], given["accelerator"],
            processes=given["processes"],
        )  # fmt: skip
        print(READY, flush=True)
        devnull = os.open(os.devnull, os.O_WRONLY)  # rank 0 reads no further: a full pipe would block this rank
        os.dup2(devnull, 1)
        train_config(spec["hparams"], dataset, settings, int(spec["seed"]), rank=rank)
    except BaseException as exc:  # noqa: BLE001 - rank 0 reports it as the trial's reason
        print(f"{type(exc).__name__}: {exc}" if not isinstance(exc, TrialFailed) else str(exc), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
