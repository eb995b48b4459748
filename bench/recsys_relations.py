"""Task relations on the generated recommender logs (``data.recsys``): the conversion model
trained on clicked impressions only (``independent``), ESMM and AITM, each on the same data and
seeds; test AUCs of click (CTR), conversion over every impression (CTCVR), conversion on the
clicked impressions (CVR, what a clicks-only model is validated on), and the conditional CVR
over the entire space against ``conversion_if_clicked`` (a conversion drawn from the generator's
true CVR on every impression: what selection bias costs where the model is served). Repeated
with the generator's ``relatedness`` knob at each value given (0: unrelated tasks).

    python bench/recsys_relations.py [--n 2000000] [--seeds 3] [--relatedness 0.5 0.0] [--epochs 2] [--lr 2e-3] [--embedding-dim 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pyarrow.parquet as pq
import torch

from ple_search.cli.progress import quiet_libraries
from ple_search.data import load
from ple_search.data.table import _time_rows, time_order
from ple_search.train.engine import TrialSettings, train_config
from ple_search.train.metrics import roc_auc

CONFIG = {  # a small PLE of the kind a CTR/CVR team starts from
    "levels": 1, "experts_per_task": 1, "shared_experts": 2, "expert_hidden": [64], "tower_hidden": [32], "embedding_dim": 8,
    "lr": 2e-3, "batch_size": 2048, "loss_weighting": "equal",
}  # fmt: skip
RELATIONS = ("independent", "esmm", "aitm")
COLUMNS = ("CTR AUC", "CTCVR AUC (all)", "CVR AUC (clicks)", "CVR AUC (entire space, vs truth)")


def truth(dataset) -> dict[str, np.ndarray]:
    """The generator's columns beside the labels (``conversion_if_clicked``, ``true_ctr``,
    ``true_cvr``) for the test split's rows, in the split's order."""
    table = dataset.info["table"]
    ts = pq.read_table(table, columns=["ts"]).column("ts").to_pandas()
    rows = _time_rows(time_order(ts, table, "ts"), {"fractions": [0.8, 0.1, 0.1]})["test"]
    columns = pq.read_table(table, columns=["conversion_if_clicked", "true_ctr", "true_cvr"])
    return {name: columns.column(name).to_numpy()[rows] for name in columns.column_names}


@torch.no_grad()
def scores(module, split) -> torch.Tensor:
    module.eval()
    parts = [module.predict_outputs(split.cat[i : i + 65536].long(), split.num[i : i + 65536]) for i in range(0, len(split), 65536)]
    return torch.cat(parts)


def run(dataset, config: dict, relation: str, seed: int, epochs: int, counterfactual: torch.Tensor) -> tuple[list[float], float]:
    tasks = [t for t in dataset.schema.tasks if t.name in ("click", "conversion")]
    start = time.perf_counter()
    module, _, _ = train_config({**config, "task_relation": relation}, dataset, TrialSettings(tasks, epochs, epochs), seed=seed)
    seconds = time.perf_counter() - start
    out, labels = scores(module, dataset.test), dataset.test.labels
    names = dataset.schema.output_names
    click, joint, conditional = out[:, names.index("click")], out[:, names.index("conversion")], out[:, names.index("conversion@click")]
    clicked = labels[:, 0] == 1
    return [
        roc_auc(click, labels[:, 0]), roc_auc(joint, labels[:, 1]), roc_auc(conditional[clicked], labels[clicked, 1]), roc_auc(conditional, counterfactual),
    ], seconds  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2_000_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--relatedness", type=float, nargs="+", default=[0.5, 0.0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=CONFIG["lr"])
    parser.add_argument("--embedding-dim", type=int, default=CONFIG["embedding_dim"])
    args = parser.parse_args()
    config = {**CONFIG, "lr": args.lr, "embedding_dim": args.embedding_dim}
    quiet_libraries()
    torch.set_num_threads(2)
    print(f"`python bench/recsys_relations.py --n {args.n} --seeds {args.seeds} --relatedness {' '.join(map(str, args.relatedness))} "
          f"--epochs {args.epochs} --lr {args.lr:g} --embedding-dim {args.embedding_dim}`")  # fmt: skip
    print(f"\nconfig: {config}, {args.epochs} epochs; test split = the latest 10% of impressions; mean +- std over seeds 0..{args.seeds - 1}\n")
    for relatedness in args.relatedness:
        dataset = load("recsys", n=args.n, relatedness=relatedness)
        labels = dataset.test.labels
        known = truth(dataset)
        counterfactual = torch.from_numpy(known["conversion_if_clicked"].astype(np.float32))
        print(f"### relatedness {relatedness}: {args.n:,} impressions, click rate {float(dataset.train.labels[:, 0].mean()):.3%}, "
              f"conversions per click {float(dataset.train.labels[dataset.train.labels[:, 0] == 1, 1].mean()):.2%} (train)\n")  # fmt: skip
        print("| relation | " + " | ".join(COLUMNS) + " | s per run |")
        print("|---|" + "---|" * (len(COLUMNS) + 1))
        ctr, cvr = torch.from_numpy(known["true_ctr"]), torch.from_numpy(known["true_cvr"])
        clicked = labels[:, 0] == 1
        ceiling = [roc_auc(ctr, labels[:, 0]), roc_auc(ctr * cvr, labels[:, 1]), roc_auc(cvr[clicked], labels[clicked, 1]), roc_auc(cvr, counterfactual)]
        print("| the generator's true probabilities (the ceiling) | " + " | ".join(f"{v:.4f}" for v in ceiling) + " | |")
        reference = None
        for relation in RELATIONS:
            runs = [run(dataset, config, relation, seed, args.epochs, counterfactual) for seed in range(args.seeds)]
            means = [statistics.fmean(r[0][i] for r in runs) for i in range(len(COLUMNS))]
            stds = [statistics.pstdev([r[0][i] for r in runs]) for i in range(len(COLUMNS))]
            reference = reference or means
            cells = [f"{m:.4f} +- {s:.4f}" + ("" if relation == RELATIONS[0] else f" ({m - r:+.4f})") for m, s, r in zip(means, stds, reference)]
            print(f"| {relation} | " + " | ".join(cells) + f" | {statistics.fmean(r[1] for r in runs):.0f} |", flush=True)
        print(f"\n(in brackets: the difference to `independent` in the same run; {len(labels):,} test impressions, "
              f"{int(labels[:, 0].sum()):,} clicked)\n")  # fmt: skip


if __name__ == "__main__":
    main()
