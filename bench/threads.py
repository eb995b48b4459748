"""Trials per hour of default settings against hand-picked threads and jobs, on an idle machine and
beside a neighbour process that burns one core (as on a laptop or shared server), on the quick
start's synthetic data and on census. Every arm is a real ``ple-search run`` with a fresh storage,
over equal work (``equal_work``); then the quick start as shipped, with the default settings.

    python bench/threads.py [--synthetic-trials 20] [--census-trials 12] [--data-dir ../shared/data/census-income-kdd]

Arms: the default (threads chosen by ple-search, OpenMP waiting passively), ``--threads 1``,
``--threads 2``, ``--jobs 2`` (two worker processes, one thread each), and ``--threads 2`` with
``OMP_WAIT_POLICY=ACTIVE`` (what the default was before: spinning OpenMP threads on every core).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ARMS = {
    "default": ([], {}),
    "--threads 1": (["--threads", "1"], {}),
    "--threads 2": (["--threads", "2"], {}),
    "--jobs 2 (one thread each)": (["--jobs", "2"], {}),
    "--threads 2, spinning (before)": (["--threads", "2"], {"OMP_WAIT_POLICY": "ACTIVE"}),
}


def run_arm(space: Path, trials: int, extra: list[str], env: dict[str, str], folder: Path, data_dir: str | None) -> tuple[float, str]:
    """Wall seconds of one fresh run and the threads line of its header."""
    storage = folder / f"s-{time.monotonic_ns()}.journal"
    command = [sys.executable, "-m", "ple_search.cli.main", "run", "--study", "bench", "--space", str(space), "--trials", str(trials),
               "--storage", str(storage), "--quiet", *extra, *(["--data-dir", data_dir] if data_dir else [])]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, cwd=folder, timeout=3600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    threads = next((line for line in done.stderr.splitlines() if line.startswith("threads:")), "")
    return seconds, threads


def equal_work(shipped: Path, folder: Path, name: str, epochs: int | None = None) -> Path:
    """The shipped space with its first enqueued config fixed (so every trial is the same model,
    whichever process samples it) and only the learning rate searched (so no two trials are the
    same config, which the search would not train twice); every trial runs all its epochs."""
    raw = yaml.safe_load(shipped.read_text())
    first = dict(raw.get("enqueue", [{}])[0])
    first.pop("lr", None)
    epochs = epochs or raw["budget"]["max_epochs"]
    raw.update(budget={"max_epochs": epochs, "patience": epochs}, pruner="none", enqueue=[],
               fixed={**raw.get("fixed", {}), **first}, params={"lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def burner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-trials", type=int, default=20)
    parser.add_argument("--census-trials", type=int, default=12)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/census-income-kdd"))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ple-bench-threads-"))
    spaces = {"synthetic": (equal_work(ROOT / "ple_search/search_spaces/synthetic.yaml", folder, "synthetic"), args.synthetic_trials, None)}
    census = Path(args.data_dir) / "census-income.test.gz"
    if census.is_file():
        spaces["census"] = (equal_work(ROOT / "ple_search/search_spaces/census.yaml", folder, "census", epochs=2), args.census_trials, args.data_dir)
    print(f"{os.cpu_count()} cores; trials/hour of a fresh `ple-search run`, each arm measured in this run\n")
    print("| study | machine | arm | wall s | trials/hour | vs best | threads line |")
    print("|---|---|---|---|---|---|---|")
    for study, (space, trials, data_dir) in spaces.items():
        for machine in ("idle", "one core busy"):
            neighbour = burner() if machine != "idle" else None
            try:
                results = {arm: run_arm(space, trials, extra, env, folder, data_dir) for arm, (extra, env) in ARMS.items()}
            finally:
                if neighbour is not None:
                    neighbour.kill()
                    neighbour.wait()
            best = min(seconds for arm, (seconds, _) in results.items() if not arm.endswith("(before)"))
            for arm, (seconds, threads) in results.items():
                print(f"| {study} | {machine} | {arm} | {seconds:.1f} | {trials * 3600 / seconds:.0f} | {best / seconds:.2f}x | {threads if arm == 'default' else ''} |")
    print("\n| the quick start as shipped (`ple-search run --study synthetic --trials 20`) | wall s | threads line |")
    print("|---|---|---|")
    for machine in ("idle", "one core busy"):
        neighbour = burner() if machine != "idle" else None
        try:
            seconds, threads = run_arm(ROOT / "ple_search/search_spaces/synthetic.yaml", 20, [], {}, folder, None)
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
        print(f"| {machine} | {seconds:.1f} | {threads} |")


if __name__ == "__main__":
    main()
