"""Numeric-encoding ablation on census-dev: the PLE paper's CGC config (3 experts per task, 2
shared, experts [16], towers [8], lr 1e-3, batch 1024, at most 8 epochs, patience 2) trained with
each numeric encoding on two seeds; validation at the best epoch and test AUC, one torch thread.

    python bench/encoders.py [--data-dir ../shared/data/census-income-kdd] [--seeds 0 1]
"""

from __future__ import annotations

import argparse

import torch

from ple_search.data import load
from ple_search.cli.progress import quiet_libraries
from ple_search.train.engine import TrialSettings, evaluate, train_config

PAPER_CGC = {"levels": 1, "experts_per_task": 3, "shared_experts": 2, "expert_hidden": [16], "tower_hidden": [8], "lr": 1e-3, "batch_size": 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/census-income-kdd")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet_libraries()
    dataset = load("census", data_dir=args.data_dir)
    settings = TrialSettings(list(dataset.schema.tasks), max_epochs=8, patience=2)
    print("| numeric_encoding | seed | val income | val marital | test income | test marital | best epoch |")
    print("|---|---|---|---|---|---|---|")
    for encoding in ("standard", "quantile", "piecewise", "periodic"):
        for seed in args.seeds:
            module, recorder, _ = train_config({**PAPER_CGC, "numeric_encoding": encoding, "numeric_bins": 16}, dataset, settings, seed)
            val, test = recorder.curve[recorder.best_epoch], evaluate(module, dataset.test)
            print(f"| {encoding} | {seed} | {val['income']:.4f} | {val['marital']:.4f} | {test['income']:.4f} | {test['marital']:.4f} | {recorder.best_epoch + 1} |", flush=True)


if __name__ == "__main__":
    main()
