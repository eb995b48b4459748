"""Per-step cost of each loss-weighting scheme against ``equal``, measured in one run: the same
model (2 tasks, 2 levels, 3 experts per task + 2 shared of [64]) trained for ``--epochs`` epochs
on the same synthetic data (20,000 rows, batch 1024) by the real training engine; gradient-based
schemes need one extra backward pass per task on the shared extraction network.

    python bench/weighting.py [--epochs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from ple_search.data import load
from ple_search.cli.progress import quiet_libraries
from ple_search.train.engine import TrialSettings, train_config
from ple_search.train.weighting import SCHEMES

CONFIG = {"levels": 2, "experts_per_task": 3, "shared_experts": 2, "expert_hidden": [64], "tower_hidden": [16], "batch_size": 1024, "lr": 3e-3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_libraries()
    dataset = load("synthetic", n=20_000, d=50, seed=0)
    settings = TrialSettings(list(dataset.schema.tasks), max_epochs=args.epochs, patience=args.epochs)
    steps = args.epochs * -(-len(dataset.train) // CONFIG["batch_size"])
    train_config({**CONFIG, "loss_weighting": "equal"}, dataset, settings, 0)  # warm-up, untimed
    seconds = {}
    for name in SCHEMES:
        runs = [train_config({**CONFIG, "loss_weighting": name}, dataset, settings, seed)[2] for seed in range(args.repeats)]
        seconds[name] = statistics.median(runs)
    reference = seconds["equal"]
    print(f"| scheme | ms per step (median of {args.repeats}) | vs equal |")
    print("|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {1000 * value / steps:.2f} | {value / reference:.2f}x |")


if __name__ == "__main__":
    main()
