"""Trials/hour of a fixed small census study with ``--jobs 1`` and ``--jobs 2`` on this machine.

Each run is a fresh study in its own journal file holding the same enqueued configs (drawn once
from the census space with a random sampler, seed 0), so both runs train exactly the same trials
at a small epoch budget; ``--jobs 1`` uses every core through torch threads, ``--jobs 2`` one each.
Wall time includes start-up (data from the cache).

    python bench/parallel.py [--data-dir ../shared/data/census-income-kdd] [--trials 12] [--max-epochs 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from ple_search.study.space import load_space
from ple_search.study.storage import open_storage


def same_configs(space_path: str, n: int) -> list[dict]:
    """``n`` configs of the space as Optuna params, drawn once with a seeded random sampler."""
    space = load_space(space_path)
    scratch = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    configs = []
    for _ in range(n):
        trial = scratch.ask()
        space.sample(trial)
        configs.append(trial.params)
        scratch.tell(trial, [0.0, 0.0])
    return configs


def run(jobs: int, args: argparse.Namespace, folder: Path, space: Path, configs: list[dict]) -> float:
    storage = str(folder / f"j{jobs}.journal")
    study = optuna.create_study(study_name=f"bench-j{jobs}", storage=open_storage(storage), directions=["maximize", "maximize"])
    for params in configs:
        study.enqueue_trial(params)
    cmd = [
        sys.executable, "-m", "ple_search.cli.main", "run", "--study", f"bench-j{jobs}",
        "--space", str(space), "--data-dir", args.data_dir, "--trials", str(args.trials),
        "--max-epochs", str(args.max_epochs), "--sampler", "random", "--seed", "0",
        "--storage", storage, "--jobs", str(jobs), "--quiet",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/census-income-kdd")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--max-epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "census-no-pruning.yaml"  # every trial runs its full budget in both runs
        space.write_text(yaml.safe_dump({**yaml.safe_load(Path("ple_search/search_spaces/census.yaml").read_text()), "pruner": "none"}))
        configs = same_configs(str(space), args.trials)
        seconds = {jobs: run(jobs, args, Path(tmp), space, configs) for jobs in (1, 2)}
    rate = {jobs: args.trials * 3600 / s for jobs, s in seconds.items()}
    print(f"census study, the same {args.trials} configs in both runs, {args.max_epochs} epochs each")
    print("| jobs | wall s | trials/hour |")
    print("|---|---|---|")
    for jobs in (1, 2):
        print(f"| {jobs} | {seconds[jobs]:.1f} | {rate[jobs]:.0f} |")
    print(f"| speed-up | | {rate[2] / rate[1]:.2f}x |")


if __name__ == "__main__":
    main()
