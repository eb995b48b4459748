"""Which architectures, expert types, gates and embedding sharing a study's trials and front use,
then an ablation of one confirmed config (issue 24): the config as found, then each of those
choices switched (architecture PLE <-> AdaTT, each embedding sharing, the other gate type, the
other expert type), each retrained on the same fresh seeds (the confirm offset) under the study's
budget, and the previous census study's confirmed config (trial 246 of study-v2: CGC, shared
embeddings, softmax gates, MLP experts) as the reference measured in the same run; test AUC mean
+- std per task against the study's GBDT yardstick.

    python bench/mtl_choices.py --study census --storage sqlite:///results/census-dev/study-v3.db \
        [--trial N] [--seeds 3] [--data-dir ../shared/data/census-income-kdd]
"""

from __future__ import annotations

import numpy as np

from ple_search.evaluate.confirm import SEED_OFFSET
from ple_search.model.hparams import EMBEDDING_SHARING
from ple_search.study.pareto import nondominated_ranks
from ple_search.study.record import HPARAMS, StudyRecord, finished_trials
from ple_search.train.engine import TrialSettings, train_on_seeds

from ablation import open_study, result_cells, study_arguments  # noqa: E402  (bench/ablation.py: the same options and cells)
from expert_types import TRIAL_246  # noqa: E402

KEYS = ("architecture", "expert_type", "gate_type", "embedding_sharing")
DEFAULTS = {"architecture": "ple", "expert_type": "mlp", "gate_type": "softmax", "embedding_sharing": "shared"}


def usage_table(study, record: StudyRecord) -> None:
    trials = finished_trials(study)
    ranks = nondominated_ranks(np.array([t.values for t in trials]), record.directions)
    groups: dict[tuple, list] = {}
    for trial, rank in zip(trials, ranks):
        hp = trial.user_attrs[HPARAMS]
        groups.setdefault(tuple(hp.get(k, DEFAULTS[k]) for k in KEYS), []).append((trial, rank))
    print("| " + " | ".join(KEYS) + " | finished trials | on the front | " + " | ".join(f"best val {o}" for o in record.objectives) + " |")
    print("|" + "---|" * (len(KEYS) + 2 + len(record.objectives)))
    for key, members in sorted(groups.items(), key=lambda kv: (-sum(r == 0 for _, r in kv[1]), -len(kv[1]))):
        best = [max if d == "maximize" else min for d in record.directions]
        cells = [f"{pick(t.values[k] for t, _ in members):.4f}" for k, pick in enumerate(best)]
        print("| " + " | ".join(key) + f" | {len(members)} | {sum(r == 0 for _, r in members)} | " + " | ".join(cells) + " |")


def arms(base: dict) -> list[tuple[str, dict]]:
    """The config as found, then each choice switched, then the previous study's config."""
    out = [("as found", base)]
    other = "adatt" if base.get("architecture", "ple") == "ple" else "ple"
    out.append((f"architecture {other}", {**base, "architecture": other}))
    for sharing in EMBEDDING_SHARING:
        if sharing != base.get("embedding_sharing", "shared"):
            out.append((f"embedding_sharing {sharing}", {**base, "embedding_sharing": sharing}))
    if base.get("gate_type", "softmax") == "softmax":
        out.append(("gate_type dselect_k (k 2)", {**base, "gate_type": "dselect_k", "gate_k": 2}))
    else:
        out.append(("gate_type softmax", {**base, "gate_type": "softmax"}))
    if base.get("expert_type", "mlp") == "mlp":
        out.append(("expert_type cross (2 layers, rank 8)", {**base, "expert_type": "cross", "cross_layers": 2, "cross_rank": 8}))
    else:
        out.append(("expert_type mlp", {**base, "expert_type": "mlp"}))
    out.append(("previous study's confirmed config (trial 246 of study-v2)", dict(TRIAL_246)))
    return out


def main() -> None:
    args = study_arguments(__doc__).parse_args()
    study, record, dataset, tasks, names, confirmed = open_study(args, threads=2)
    if args.trial is None:  # the confirmed front member with the best validation mean on the first objective
        front = {n: c for n, c in confirmed.items() if c.get("on_front")}
        args.trial = int(max(front, key=lambda n: front[n]["val_mean"][names[0]]))
    base = dict(study.trials[args.trial].user_attrs[HPARAMS])
    settings = TrialSettings.from_budget(tasks, record.budget)
    gbdt = record.gbdt
    print(f"`python bench/mtl_choices.py --study {args.study} --storage {args.storage} --trial {args.trial} --seeds {args.seeds}`\n")
    usage_table(study, record)
    print(f"\nAblation of trial {args.trial} ({', '.join(f'{k} {base.get(k, DEFAULTS[k])}' for k in KEYS)}); {args.seeds} seeds from {SEED_OFFSET}; "
          f"budget {record.budget}; GBDT test " + " / ".join(f"{t} {gbdt[t]['test_mean']:.4f}" for t in names if t in gbdt) + "\n")  # fmt: skip
    print("| arm | " + " | ".join(f"test {t}" for t in names) + " | " + " | ".join(f"vs GBDT {t}" for t in names) + " |")
    print("|---|" + "---|" * (2 * len(names)))
    for label, config in arms(base):
        runs = list(train_on_seeds(config, dataset, settings, range(SEED_OFFSET, SEED_OFFSET + args.seeds)))
        print(f"| {label} | {result_cells(runs, names, gbdt)} |", flush=True)


if __name__ == "__main__":
    main()
