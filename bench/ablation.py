"""Which numeric encodings and balancing methods a study's trials and front use, then an ablation
of its chosen config (issue 16): the same config with each numeric encoding, with
its balancing method and with equal weighting, each on fresh seeds (the confirm offset) under the
study's budget; then the config itself with ``--longer`` times the epoch budget (same patience
rule); test AUC mean +- std per task, against the study's GBDT yardstick.

    python bench/ablation.py --study census --storage sqlite:///results/census-dev/study-v2.db \
        [--trial N] [--seeds 3] [--data-dir ../shared/data/census-income-kdd]

Without ``--trial``: the confirmed trial with the best mean test rank over the tasks.
"""

from __future__ import annotations

import argparse

import torch

from ple_search.model.hparams import NUMERIC_ENCODINGS
from ple_search.evaluate.confirm import SEED_OFFSET
from ple_search.train.metrics import summarize
from ple_search.cli.progress import quiet_libraries
from ple_search.train.engine import TrialSettings, train_on_seeds
from ple_search.study.pareto import nondominated_ranks
from ple_search.study.record import HPARAMS, StudyRecord, finished_trials
from ple_search.study.search import load_study_and_data


def usage_table(study, record: StudyRecord) -> None:
    """Per (numeric encoding, balancing method): finished trials, front trials, best validation
    value per objective."""
    import numpy as np

    trials = finished_trials(study)
    ranks = nondominated_ranks(np.array([t.values for t in trials]), record.directions)
    groups: dict[tuple[str, str], list] = {}
    for trial, rank in zip(trials, ranks):
        hp = trial.user_attrs[HPARAMS]
        groups.setdefault((hp.get("numeric_encoding", "standard"), hp.get("loss_weighting", "equal")), []).append((trial, rank))
    print("| numeric_encoding | balancing | finished trials | on the front | " + " | ".join(f"best val {o}" for o in record.objectives) + " |")
    print("|---|---|---|---|" + "---|" * len(record.objectives))
    for (encoding, method), members in sorted(groups.items(), key=lambda kv: (-sum(r == 0 for _, r in kv[1]), -len(kv[1]))):
        best = [max if d == "maximize" else min for d in record.directions]
        cells = [f"{pick(t.values[k] for t, _ in members):.4f}" for k, pick in enumerate(best)]
        print(f"| {encoding} | {method} | {len(members)} | {sum(r == 0 for _, r in members)} | " + " | ".join(cells) + " |")


def result_cells(runs, names: list[str], gbdt: dict) -> str:
    """Test mean +- std per task, then the gap to the GBDT yardstick per task, as table cells."""
    mean, std = summarize([r.test for r in runs])
    cells = [f"{mean[t]:.4f} +- {std[t]:.4f}" for t in names]
    gaps = [f"{mean[t] - gbdt[t]['test_mean']:+.4f}" if t in gbdt else "-" for t in names]
    return " | ".join(cells) + " | " + " | ".join(gaps)


def study_arguments(doc: str) -> argparse.ArgumentParser:
    """The options every ablation script takes: the study, its storage, the trial, seeds, data."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--study", default="census")
    parser.add_argument("--storage", required=True)
    parser.add_argument("--trial", type=int)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data-dir", default="../shared/data/census-income-kdd")
    return parser


def open_study(args: argparse.Namespace, threads: int):
    """``(study, record, dataset, tasks, task names, confirmed trials)`` of ``args``' study."""
    torch.set_num_threads(threads)
    quiet_libraries()
    _, study, dataset = load_study_and_data(args.study, args.storage, args.data_dir)
    record = StudyRecord.from_study(study)
    tasks = dataset.schema.tasks_named(record.task_objectives())
    return study, record, dataset, tasks, [t.name for t in tasks], record.confirmed.get("trials", {})


def main() -> None:
    parser = study_arguments(__doc__)
    parser.add_argument("--longer", type=int, default=3, help="epoch-budget multiple of the last row (0: skip)")
    args = parser.parse_args()
    study, record, dataset, tasks, names, confirmed = open_study(args, threads=1)
    if args.trial is None:
        if not confirmed:
            parser.error("the study has no confirmed trials; pass --trial")
        ranked = {n: sum(sorted((-c["test_mean"][t] for c in confirmed.values())).index(-confirmed[n]["test_mean"][t]) for t in names) for n in confirmed}
        args.trial = int(min(ranked, key=ranked.get))
    base = dict(study.trials[args.trial].user_attrs[HPARAMS])
    settings = TrialSettings.from_budget(tasks, record.budget)
    gbdt = record.gbdt
    usage_table(study, record)
    print(f"\ntrial {args.trial}: {base}; budget {record.budget}")
    print(f"{args.seeds} seeds from {SEED_OFFSET}; GBDT test " + " / ".join(f"{t} {gbdt[t]['test_mean']:.4f}" for t in names if t in gbdt))
    print("| numeric_encoding | balancing | " + " | ".join(f"test {t}" for t in names) + " | " + " | ".join(f"vs GBDT {t}" for t in names) + " |")
    print("|---|---|" + "---|" * (2 * len(names)))
    methods = [base.get("loss_weighting", "equal")] + (["equal"] if base.get("loss_weighting", "equal") != "equal" else [])
    for encoding in NUMERIC_ENCODINGS:
        for method in methods:
            config = {**base, "numeric_encoding": encoding, "loss_weighting": method}
            config.setdefault("numeric_bins", 16)
            runs = list(train_on_seeds(config, dataset, settings, range(SEED_OFFSET, SEED_OFFSET + args.seeds)))
            marker = " (the trial's)" if encoding == base.get("numeric_encoding", "standard") and method == methods[0] else ""
            print(f"| {encoding}{marker} | {method} | {result_cells(runs, names, gbdt)} |", flush=True)
    if args.longer:
        budget = {**record.budget, "max_epochs": record.budget["max_epochs"] * args.longer, "patience": record.budget["patience"] * 2}
        longer = TrialSettings.from_budget(tasks, budget)
        runs = list(train_on_seeds(base, dataset, longer, range(SEED_OFFSET, SEED_OFFSET + args.seeds)))
        epochs = [r.recorder.best_epoch + 1 for r in runs]
        label = f"{base.get('numeric_encoding', 'standard')}, {budget['max_epochs']} epochs, patience {budget['patience']} (best epochs {epochs})"
        print(f"| {label} | {methods[0]} | {result_cells(runs, names, gbdt)} |", flush=True)


if __name__ == "__main__":
    main()
