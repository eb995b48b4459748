"""Overhead of the real trial path (Lightning trainer, data module, metrics, recorder) against a
bare PyTorch loop over the same module, tensors, batch size and epochs (both validate every epoch).

    python bench/trial.py [--data-dir ../shared/data/census-income-kdd] [--epochs 5] [--batch-size 1024]
"""

from __future__ import annotations

import argparse
import time

import pytorch_lightning as pl
import torch

from ple_search.data import load
from ple_search.data.batches import TensorBatches
from ple_search.cli.progress import quiet_libraries
from ple_search.train.engine import TrialSettings, evaluate, train_config
from ple_search.train.module import PLEModule

PADDLEREC = {"levels": 2, "experts_per_task": 3, "shared_experts": 2, "expert_hidden": [16], "tower_hidden": [8]}


def bare_loop(dataset, hparams, epochs: int, seed: int) -> float:
    """Seconds for ``epochs`` of plain training plus per-epoch validation metrics."""
    pl.seed_everything(seed, verbose=False)
    module = PLEModule(dataset.schema, hparams)
    optimizer = module.configure_optimizers()
    batches = TensorBatches(dataset.train, hparams["batch_size"], shuffle=True, seed=seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        module.train()
        for cat, num, labels in batches:
            optimizer.zero_grad(set_to_none=True)
            losses = module.task_losses(module(cat, num), labels)
            module.weighting(losses, module.model).backward()
            optimizer.step()
        module.weighting.epoch_end(epoch, losses.detach())
        evaluate(module, dataset.val)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/census-income-kdd")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1024, 256])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    quiet_libraries()
    dataset = load("census", data_dir=args.data_dir)
    print(f"census ({dataset.info['split']}), {len(dataset.train):,} train rows, torch threads {torch.get_num_threads()}, {args.epochs} epochs")
    print("| batch | bare loop s/epoch | trial path s/epoch | ratio |")
    print("|---|---|---|---|")
    for batch_size in args.batch_size:
        hparams = {**PADDLEREC, "batch_size": batch_size}
        settings = TrialSettings(objectives=list(dataset.schema.tasks), max_epochs=args.epochs, patience=args.epochs)
        bare, trial = [], []
        for repeat in range(args.repeats):  # interleaved, best of each: the machine is shared and noisy
            bare.append(bare_loop(dataset, hparams, args.epochs, seed=repeat))
            trial.append(train_config(hparams, dataset, settings, seed=repeat)[2])
        b, t = min(bare) / args.epochs, min(trial) / args.epochs
        print(f"| {batch_size} | {b:.3f} | {t:.3f} | {t / b:.2f}x |")


if __name__ == "__main__":
    main()
