"""Synthetic check of PLE's claim: the MTL gain of the best PLE/CGC, MMoE and shared-bottom configs
as the task correlation p falls (MMoE paper's benchmark). Per p: a short study, single-task
baselines, then each family's best trial (validation) confirmed on fresh seeds; the gain is the
baseline's test RMSE minus the confirmed test RMSE (positive = sharing helps), per task.

Every balancing method (loss weighting and gradient-based) is in the searched space, so a second
table shows, per p and method, the test gain of the method's best trial (by validation; one seed,
not confirmed): does any of them turn negative transfer into gain?

    python bench/seesaw.py [--trials 24] [--baseline-trials 12] [--seeds 3] [--out results/synthetic-seesaw]
                           [--weighting equal pcgrad ...]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import optuna
import yaml

from ple_search.train.engine import score
from ple_search.data.schema import Task
from ple_search.study.storage import open_storage
from ple_search.evaluate.transfer import gains, transfer_label
from ple_search.train.weighting import SCHEMES

NEEDS_WEIGHTS = ("fixed", "scheduled")  # need per-task weights the space would have to give
P_VALUES = (1.0, 0.5, 0.0, -0.5)
FAMILIES = {
    "PLE/CGC": lambda hp: hp["experts_per_task"] > 0,
    "MMoE": lambda hp: hp["experts_per_task"] == 0 and hp["shared_experts"] > 1,
    "shared-bottom": lambda hp: hp["experts_per_task"] == 0 and hp["shared_experts"] == 1,
}


def ple_search(args: list[str], log: list[str]) -> None:
    log.append("ple-search " + shlex.join(args))
    subprocess.run([sys.executable, "-m", "ple_search.cli.main", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--baseline-trials", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="results/synthetic-seesaw")
    parser.add_argument("--weighting", nargs="+", default=[n for n in SCHEMES if n not in NEEDS_WEIGHTS])
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    storage = str(out / "studies.journal")
    base = yaml.safe_load(Path("ple_search/search_spaces/synthetic.yaml").read_text())
    base["params"]["loss_weighting"] = {"type": "categorical", "choices": list(args.weighting)}
    commands: list[str] = []
    rows, method_rows = [], []
    for p in P_VALUES:
        name = f"seesaw-p{p:+.1f}"
        space = out / f"space-p{p:+.1f}.yaml"
        space.write_text(yaml.safe_dump({**base, "dataset": {"name": "synthetic", "options": {**base["dataset"]["options"], "p": p}}}, sort_keys=False))
        common = ["--study", name, "--storage", storage]
        ple_search(["run", *common, "--space", str(space), "--trials", str(args.trials), "--quiet"], commands)
        ple_search(["baselines", *common, "--trials", str(args.baseline_trials), "--seeds", str(args.seeds)], commands)
        study = optuna.load_study(study_name=name, storage=open_storage(storage))
        tasks = [Task(t, "regression") for t in study.user_attrs["ple_search"]["objectives"]]
        done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        best = {}
        for family, member in FAMILIES.items():
            candidates = [t for t in done if member(t.user_attrs["hparams"])]
            if candidates:
                best[family] = max(candidates, key=lambda t: score(t.user_attrs["val"], tasks))
        confirm = [arg for t in best.values() for arg in ("--trial", str(t.number))]
        ple_search(["confirm", *common, *confirm, "--seeds", str(args.seeds)], commands)
        study = optuna.load_study(study_name=name, storage=open_storage(storage))
        single = {t: b["test_mean"] for t, b in study.user_attrs["baselines"].items()}
        confirmed = study.user_attrs["confirmed"]["trials"]
        cells = [f"{p:+.1f}", " / ".join(f"{v:.4f}" for v in single.values())]
        for family in FAMILIES:
            if family not in best:
                cells.append("not sampled")
                continue
            trial = best[family]
            g = gains(confirmed[str(trial.number)]["test_mean"], single, {t.name: "minimize" for t in tasks})
            method = trial.user_attrs["hparams"]["loss_weighting"]
            cells.append(f"{g['y1']:+.4f} / {g['y2']:+.4f} ({transfer_label(list(g.values()))}; trial {trial.number}, {method})")
        rows.append("| " + " | ".join(cells) + " |")
        per_method = [f"{p:+.1f}"]
        for method in args.weighting:
            candidates = [t for t in done if t.user_attrs["hparams"].get("loss_weighting") == method]
            if not candidates:
                per_method.append("-")
                continue
            trial = max(candidates, key=lambda t: score(t.user_attrs["val"], tasks))
            g = gains(trial.user_attrs["test"], single, {t.name: "minimize" for t in tasks})
            per_method.append(f"{g['y1']:+.3f} / {g['y2']:+.3f} ({len(candidates)})")
        method_rows.append("| " + " | ".join(per_method) + " |")
    table = "\n".join([
        "| p | single-task test RMSE y1 / y2 | PLE/CGC gain y1 / y2 | MMoE gain y1 / y2 | shared-bottom gain y1 / y2 |",
        "|---|---|---|---|---|",
        *rows,
    ])  # fmt: skip
    method_table = "\n".join([
        "| p | " + " | ".join(args.weighting) + " |",
        "|---" * (len(args.weighting) + 1) + "|",
        *method_rows,
    ])  # fmt: skip
    text = (
        "# Synthetic seesaw check\n\n"
        "MTL gain (single-task test RMSE minus multi-task test RMSE; positive = sharing helps) of each "
        "family's best config (by validation) per task correlation p, on the MMoE paper's synthetic "
        f"data (n=12000, d=100). Multi-task results are means over {args.seeds} fresh seeds (`confirm`), "
        f"single-task baselines means over {args.seeds} seeds of the best of {args.baseline_trials} single-task trials. "
        f"Each study: {args.trials} trials of `search_spaces/synthetic.yaml` with the p below.\n\n"
        f"{table}\n\n"
        "Per balancing method: test gain y1 / y2 of its best trial by validation (one seed, not "
        "confirmed; in brackets, how many of the study's finished trials used it):\n\n"
        f"{method_table}\n\n"
        "Produced by `python bench/seesaw.py`, which ran:\n\n```bash\n" + "\n".join(commands) + "\n```\n"
    )
    (out / "README.md").write_text(text)
    print(table)
    print(method_table)


if __name__ == "__main__":
    main()
