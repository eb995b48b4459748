"""MO-ASHA against no pruning on the census-dev study: same space, sampler and seed, the same
wall-clock budget each. Both arms run at the same time with one torch thread each, so they see the
same machine. Prints a table and writes a hypervolume-over-time plot, the table, each arm's space and journal.

    python bench/pruning.py [--minutes 15] [--min-epochs 1] [--eta 3] [--data-dir ../shared/data/census-income-kdd] [--out results/pruning]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import yaml

from ple_search.pareto import hypervolume
from ple_search.storage import open_storage



def hypervolume_curve(study: optuna.Study) -> tuple[np.ndarray, np.ndarray]:
    """(seconds since the study's first trial started, hypervolume of trials completed by then)."""
    trials = study.get_trials(deepcopy=False)
    start = min(t.datetime_start for t in trials if t.datetime_start)
    done = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.datetime_complete)
    ref = study.user_attrs["ple_search"]["reference_point"]
    directions = [d.name.lower() for d in study.directions]
    times, volumes = [0.0], [0.0]
    for i, trial in enumerate(done):
        times.append((trial.datetime_complete - start).total_seconds())
        volumes.append(hypervolume(np.array([t.values for t in done[: i + 1]]), directions, ref))
    return np.array(times), np.array(volumes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--data-dir", default="../shared/data/census-income-kdd")
    parser.add_argument("--space", default="search_spaces/census.yaml")
    parser.add_argument("--out", default="results/pruning")
    parser.add_argument("--min-epochs", type=int, default=1)
    parser.add_argument("--eta", type=int, default=3)
    args = parser.parse_args()
    arms = {
        "no pruning": "none",
        f"MO-ASHA (min {args.min_epochs} epochs, eta {args.eta})": {"type": "mo-asha", "min_epochs": args.min_epochs, "eta": args.eta},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(Path(args.space).read_text())
    tag = f"min{args.min_epochs}-eta{args.eta}"
    procs, storages = {}, {}
    for i, (name, pruner) in enumerate(arms.items()):
        space = out / ("space-no-pruning.yaml" if i == 0 else f"space-mo-asha-{tag}.yaml")
        space.write_text(yaml.safe_dump({**base, "pruner": pruner}, sort_keys=False))
        storages[name] = str(out / f"arm{i}.journal")
        Path(storages[name]).unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "ple_search.cli.main", "run", "--study", f"arm{i}", "--space", str(space),
               "--data-dir", args.data_dir, "--trials", "100000", "--timeout", str(args.minutes * 60),
               "--storage", storages[name], "--threads", "1", "--quiet"]  # fmt: skip
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for proc in procs.values():
        proc.wait()
    studies = {name: optuna.load_study(study_name=f"arm{i}", storage=open_storage(storages[name])) for i, name in enumerate(arms)}
    curves = {name: hypervolume_curve(study) for name, study in studies.items()}
    baseline_name, pruned_name = list(arms)
    target = curves[baseline_name][1][-1]
    budget = args.minutes * 60
    lines = [
        f"census-dev, {args.minutes:g} min wall clock per arm (both at once, 1 torch thread each), TPE seed 0, "
        f"space {args.space}, reference point {studies[baseline_name].user_attrs['ple_search']['reference_point']}",
        "",
        "| arm | trials complete | trials pruned | final hypervolume | time to reach the unpruned final hypervolume |",
        "|---|---|---|---|---|",
    ]
    for name, study in studies.items():
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        times, volumes = curves[name]
        reached = times[np.argmax(volumes >= target)] if (volumes >= target).any() else None
        shown = f"{reached:.0f} s ({reached / budget:.0%} of the budget)" if reached is not None else "not reached"
        lines.append(f"| {name} | {states.count('COMPLETE')} | {states.count('PRUNED')} | {volumes[-1]:.6f} | {shown} |")
    table = "\n".join(lines)
    print(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for name, (times, volumes) in curves.items():
        axes.step(times / 60, volumes, where="post", label=name)
    axes.set_xlabel("minutes")
    axes.set_ylabel("hypervolume (validation AUC income x marital, ref 0.5)")
    firsts = [volumes[1] for _, volumes in curves.values() if len(volumes) > 1]
    if firsts:  # start the axis at the first completed trial: the interesting part is the top
        axes.set_ylim(bottom=min(firsts) - 0.002)
    axes.legend()
    axes.grid(alpha=0.3)
    figure.savefig(out / f"hypervolume-{tag}.png", dpi=110, bbox_inches="tight")
    (out / f"table-{tag}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
