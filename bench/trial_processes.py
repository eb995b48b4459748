"""Trials on several processes (``budget.trial_processes``, Lightning DDP) against one process,
on the same cores, in the same run: seconds per trial (the other ranks' start-up included) and
the validation metrics each arm reaches (the same model up to float rounding: the global batch is
the config's ``batch_size`` in every arm).

    python bench/trial_processes.py [--rows 400000] [--epochs 2] [--processes 2]

Arms: one process on one thread (the reference), one process on P threads (intra-op threads,
what a single trial gets without this feature), P processes of one thread each.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from ple_search.data import load_described
from ple_search.train.engine import TrialSettings, quiet_lightning, train_config

HPARAMS = {"levels": 2, "experts_per_task": 2, "shared_experts": 2, "expert_hidden": [256, 128], "tower_hidden": [64], "batch_size": 1024, "lr": 0.003}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    quiet_lightning()
    dataset = load_described({"name": "synthetic", "options": {"n": args.rows, "d": 16}})
    tasks = list(dataset.schema.tasks)
    p = args.processes
    arms = [(f"1 process x 1 thread (reference)", 1, 1), (f"1 process x {p} threads", 1, p), (f"{p} processes x 1 thread", p, 1)]
    print(f"`python bench/trial_processes.py --rows {args.rows} --epochs {args.epochs} --processes {p}`: "
          f"{len(dataset.train):,} train rows, {args.epochs} epochs, {HPARAMS}, on {os.cpu_count()} cores\n")  # fmt: skip
    print("| arm | s per trial | ratio to the reference | " + " | ".join(f"val {t.name}" for t in tasks) + " |")
    print("|---|---|---|" + "---|" * len(tasks))
    reference = None
    for name, processes, threads in arms:
        torch.set_num_threads(threads)
        settings = TrialSettings(tasks, args.epochs, args.epochs, processes=processes)
        start = time.perf_counter()
        _, recorder, _ = train_config(HPARAMS, dataset, settings, 0)
        seconds = time.perf_counter() - start
        reference = reference or seconds
        best = recorder.curve[recorder.best_epoch]
        print(f"| {name} | {seconds:.1f} | {reference / seconds:.2f}x | " + " | ".join(f"{best[t.name]:.4f}" for t in tasks) + " |")


if __name__ == "__main__":
    main()
