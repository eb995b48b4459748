"""MO-ASHA against no pruning on a study (census-dev by default): same space, sampler and seed, the same
wall-clock budget each. Both arms of a seed run at the same time with one torch thread each, so they
see the same machine; seeds run one after another. Prints a table and writes a hypervolume-over-time
plot (a panel per seed), the table, each arm's space and journal (``--reuse`` reports from those
journals again without running).

    python bench/pruning.py [--minutes 15] [--min-epochs 1] [--eta 3] [--tie-break hypervolume] [--seeds 0 1]
                            [--data-dir ../shared/data/census-income-kdd] [--out results/pruning]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import yaml

from ple_search.study.pareto import hypervolume
from ple_search.study.record import directions_of
from ple_search.study.storage import open_storage



def hypervolume_curve(study: optuna.Study) -> tuple[np.ndarray, np.ndarray]:
    """(seconds since the study's first trial started, hypervolume of trials completed by then)."""
    trials = study.get_trials(deepcopy=False)
    start = min(t.datetime_start for t in trials if t.datetime_start)
    done = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.datetime_complete)
    ref = study.user_attrs["ple_search"]["reference_point"]
    directions = directions_of(study)
    times, volumes = [0.0], [0.0]
    for i, trial in enumerate(done):
        times.append((trial.datetime_complete - start).total_seconds())
        volumes.append(hypervolume(np.array([t.values for t in done[: i + 1]]), directions, ref))
    return np.array(times), np.array(volumes)


def run_pair(args: argparse.Namespace, base: dict, out: Path, tag: str, seed: int) -> dict[str, optuna.Study]:
    """Both arms of one seed at the same time; returns their studies."""
    pruner = {"type": "mo-asha", "min_epochs": args.min_epochs, "eta": args.eta, "tie_break": args.tie_break}
    arms = {"no pruning": "none", f"MO-ASHA ({tag})": pruner}
    procs, storages = {}, {}
    for i, (name, setting) in enumerate(arms.items()):
        space = out / (f"space-{Path(args.space).stem}-no-pruning.yaml" if i == 0 else f"space-mo-asha-{tag}.yaml")
        space.write_text(yaml.safe_dump({**base, "pruner": setting}, sort_keys=False))
        storages[name] = str(out / f"arm{i}-{tag}-seed{seed}.journal")
        if args.reuse and Path(storages[name]).exists():
            continue
        Path(storages[name]).unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "ple_search.cli.main", "run", "--study", f"arm{i}", "--space", str(space),
               "--data-dir", args.data_dir, "--trials", "100000", "--timeout", str(args.minutes * 60), "--seed", str(seed),
               "--storage", storages[name], "--threads", "1", "--quiet"]  # fmt: skip
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for proc in procs.values():
        proc.wait()
    return {name: optuna.load_study(study_name=f"arm{i}", storage=open_storage(storages[name])) for i, name in enumerate(arms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--data-dir", default="../shared/data/census-income-kdd")
    parser.add_argument("--space", default="ple_search/search_spaces/census.yaml")
    parser.add_argument("--out", default="results/pruning")
    parser.add_argument("--min-epochs", type=int, default=1)
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--tie-break", default="hypervolume")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one pair of runs per seed (sampler and training)")
    parser.add_argument("--reuse", action="store_true", help="report from the journals an earlier run left in --out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = {key: value for key, value in yaml.safe_load(Path(args.space).read_text()).items() if key != "pruner"}
    tag = f"{Path(args.space).stem}-min{args.min_epochs}-eta{args.eta}-{args.tie_break}"
    budget = args.minutes * 60
    lines = [
        f"{args.minutes:g} min wall clock per arm (both arms of a seed at once, 1 torch thread each), TPE, "
        f"space {args.space}, pruned arm: MO-ASHA min_epochs {args.min_epochs}, eta {args.eta}, tie-break {args.tie_break}",
        "",
        "| seed | arm | trials complete | trials pruned | final hypervolume | time to reach the unpruned final hypervolume |",
        "|---|---|---|---|---|---|",
    ]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, len(args.seeds), figsize=(6 * len(args.seeds), 4.5), squeeze=False)
    fractions, higher = [], 0  # the pruned arm's time to the target / budget; seeds where it ends higher
    for seed, axes in zip(args.seeds, panels[0]):
        studies = run_pair(args, base, out, tag, seed)
        curves = {name: hypervolume_curve(study) for name, study in studies.items()}
        (_, unpruned), (pruned_times, pruned) = curves.values()
        target = unpruned[-1]
        for name, study in studies.items():
            states = [t.state.name for t in study.get_trials(deepcopy=False)]
            times, volumes = curves[name]
            reached = times[np.argmax(volumes >= target)] if (volumes >= target).any() else None
            shown = f"{reached:.0f} s ({reached / budget:.0%} of the budget)" if reached is not None else "not reached"
            lines.append(f"| {seed} | {name} | {states.count('COMPLETE')} | {states.count('PRUNED')} | {volumes[-1]:.6f} | {shown} |")
            axes.step(times / 60, volumes, where="post", label=name)
        fractions.append(pruned_times[np.argmax(pruned >= target)] / budget if (pruned >= target).any() else np.inf)
        higher += pruned[-1] > target
        print("\n".join(lines[-2:]), flush=True)
        axes.set_title(f"seed {seed}")
        axes.set_xlabel("minutes")
        axes.set_ylabel("hypervolume of the validation front")
        firsts = [volumes[1] for _, volumes in curves.values() if len(volumes) > 1]
        if firsts:  # start the axis at the first completed trial: the interesting part is the top
            top = max(volumes[-1] for _, volumes in curves.values())
            axes.set_ylim(min(firsts) - 0.002, top + 0.1 * (top - min(firsts)) + 1e-6)
        axes.legend()
        axes.grid(alpha=0.3)
    lines += [
        "",
        f"Pruned arm: median time to the unpruned final hypervolume {np.median(fractions):.0%} of the budget; "
        f"within half the budget in {sum(f <= 0.5 for f in fractions)} of {len(fractions)} seeds; "
        f"higher final hypervolume in {higher} of {len(fractions)}.",
    ]
    table = "\n".join(lines)
    print(table)
    figure.savefig(out / f"hypervolume-{tag}.png", dpi=110, bbox_inches="tight")
    (out / f"table-{tag}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
