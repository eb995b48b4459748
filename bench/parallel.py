"""Trials/hour of a fixed small census study with ``--jobs 1`` and ``--jobs 2`` on this machine.

Each run is a fresh study in its own journal file: the census space, random sampler seed 0, a
fixed number of trials at a small epoch budget; wall time includes start-up (data from the cache).

    python bench/parallel.py [--data-dir ../shared/data/census-income-kdd] [--trials 12] [--max-epochs 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(jobs: int, args: argparse.Namespace, folder: Path) -> float:
    cmd = [
        sys.executable, "-m", "ple_search.cli.main", "run", "--study", f"bench-j{jobs}",
        "--space", "search_spaces/census.yaml", "--data-dir", args.data_dir, "--trials", str(args.trials),
        "--max-epochs", str(args.max_epochs), "--sampler", "random", "--seed", "0",
        "--storage", str(folder / f"j{jobs}.journal"), "--jobs", str(jobs), "--quiet",
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
        seconds = {jobs: run(jobs, args, Path(tmp)) for jobs in (1, 2)}
    rate = {jobs: args.trials * 3600 / s for jobs, s in seconds.items()}
    print(f"census study, {args.trials} trials, {args.max_epochs} epochs each, random sampler seed 0")
    print("| jobs | wall s | trials/hour |")
    print("|---|---|---|")
    for jobs in (1, 2):
        print(f"| {jobs} | {seconds[jobs]:.1f} | {rate[jobs]:.0f} |")
    print(f"| speed-up | | {rate[2] / rate[1]:.2f}x |")


if __name__ == "__main__":
    main()
