"""Expert types on census-dev: the confirmed front config of the census study (trial 246: CGC,
2 experts per task + 2 shared of [32], towers [32, 16], embedding 8, periodic encoding, PCGrad)
retrained with MLP experts and with cross experts (DCN-V2), same seeds, same budget; test AUC per
task, seconds per epoch and parameters, the MLP arm as the reference measured in the same run.

    python bench/expert_types.py [--data-dir ../shared/data/census-income-kdd] [--seeds 2]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from ple_search.cli.progress import quiet_libraries
from ple_search.data import load
from ple_search.train.engine import TrialSettings, train_on_seeds

TRIAL_246 = {
    "levels": 1, "experts_per_task": 2, "shared_experts": 2, "expert_hidden": [32], "tower_hidden": [32, 16], "gate_hidden": [],
    "embedding_dim": 8, "numeric_encoding": "periodic", "periodic_frequencies": 16, "periodic_sigma": 0.70,
    "loss_weighting": "pcgrad", "lr": 5.1e-3, "batch_size": 512, "weight_decay": 1e-4, "dropout": 0.04, "optimizer": "adam",
}  # fmt: skip
ARMS = {
    "mlp (reference)": {},
    "cross, 2 layers, rank 8": {"expert_type": "cross", "cross_layers": 2, "cross_rank": 8},
    "cross, 1 layer, full rank": {"expert_type": "cross", "cross_layers": 1, "cross_rank": 0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parent.parent.parent / "shared/data/census-income-kdd"))
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    quiet_libraries()
    dataset = load("census", tasks=["income", "marital"], data_dir=args.data_dir)
    settings = TrialSettings(list(dataset.schema.tasks), max_epochs=8, patience=2)
    print(f"census-dev, trial 246's config, seeds 0..{args.seeds - 1}, 8 epochs (patience 2), test AUC mean +- std\n")
    print("| experts | income | marital | s/epoch | params |")
    print("|---|---|---|---|---|")
    for name, extra in ARMS.items():
        runs = list(train_on_seeds({**TRIAL_246, **extra}, dataset, settings, range(args.seeds)))
        cells = []
        for task in ("income", "marital"):
            values = [r.test[task] for r in runs]
            cells.append(f"{statistics.mean(values):.4f} +- {statistics.pstdev(values):.4f}")
        per_epoch = statistics.mean(r.seconds / len(r.recorder.curve) for r in runs)
        params = sum(p.numel() for p in runs[0].module.parameters())
        print(f"| {name} | {cells[0]} | {cells[1]} | {per_epoch:.2f} | {params:,} |", flush=True)


if __name__ == "__main__":
    main()
