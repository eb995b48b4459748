"""The cluster engines' overhead on this machine, each arm against its reference in the same run:

1. ``--ray`` with 2 workers on a local one-node Ray cluster (2 CPUs) against ``--jobs 2``: the
   same trials on the same 2 cores, trials per hour (target: within 10%);
2. the gRPC storage proxy against the storage it fronts (SQLite here; PostgreSQL with
   ``--postgres URL``): the same trials through ``--jobs 1``, seconds per finished trial.

    python bench/cluster.py [--trials 16] [--rows 4000] [--postgres postgresql://...] [--storage-only]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

SPACE = {
    "dataset": {"name": "synthetic", "options": {"n": 4000, "d": 8}},
    "sampler": {"name": "random", "seed": 0},
    "budget": {"max_epochs": 3, "patience": 3},
    "fixed": {"lr": 0.01, "batch_size": 128},
    "params": {"dropout": {"type": "float", "low": 0.0, "high": 0.2}, "expert_hidden": {"type": "categorical", "choices": [[16], [32]]}},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(space: Path, storage: str, trials: int, *extra: str) -> float:
    """Wall seconds of one `ple-search run` to ``trials`` finished trials."""
    study = f"b{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, "-m", "ple_search.cli.main", "run", "--study", study, "--space", str(space), "--trials", str(trials),
            "--storage", storage, "--quiet", *extra]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - start


def started(argv: list[str], port: int | None = None, wait: float = 0.0) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while port is not None and time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    time.sleep(wait)
    return proc


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--rows", type=int, default=4000, help="synthetic rows: how long a trial takes")
    parser.add_argument("--postgres", default=os.environ.get("PLE_SEARCH_TEST_POSTGRES"))
    parser.add_argument("--storage-only", action="store_true", help="only the proxy against the storages it fronts")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ple-cluster-"))
    space = folder / "space.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "dataset": {"name": "synthetic", "options": {"n": args.rows, "d": 8}}}))
    flags = " --postgres URL" * bool(args.postgres) + " --storage-only" * args.storage_only
    print(f"`python bench/cluster.py --trials {args.trials} --rows {args.rows}{flags}`: {args.trials} trials of a synthetic space "
          f"({args.rows:,} rows, 3 epochs), on {os.cpu_count()} cores\n")  # fmt: skip

    run(space, f"sqlite:///{folder / 'warm.db'}", 2, "--jobs", "1")  # the data cache and the page cache warm for every arm
    if not args.storage_only:
        engines(space, folder, args.trials)
    storages(space, folder, args.trials, args.postgres)


def engines(space: Path, folder: Path, trials: int) -> None:
    """``--ray`` on a one-node local cluster against ``--jobs 2``."""
    sqlite = f"sqlite:///{folder / 'jobs.db'}"
    local = run(space, sqlite, trials, "--jobs", "2")
    port = free_port()
    head = started(["ray", "start", "--head", "--block", "--port", str(port), "--num-cpus", "2", "--node-ip-address", "127.0.0.1",
                    "--include-dashboard=false", "--disable-usage-stats"], port, wait=3)  # fmt: skip
    try:
        on_ray = run(space, f"sqlite:///{folder / 'ray.db'}", trials, "--jobs", "2", "--ray", f"127.0.0.1:{port}")
    finally:
        stop(head)
    print("| engine | wall s | trials/hour | ratio to --jobs 2 |")
    print("|---|---|---|---|")
    for name, seconds in (("--jobs 2 (reference)", local), ("--ray, 2 workers on one local node", on_ray)):
        print(f"| {name} | {seconds:.1f} | {trials * 3600 / seconds:.0f} | {local / seconds:.2f}x |")
    print()


def storages(space: Path, folder: Path, trials: int, postgres: str | None) -> None:
    """The gRPC proxy against the storage it fronts, SQLite and (with a URL) PostgreSQL, one
    worker so the storage's round trips are the difference."""
    print("| storage | wall s | s per trial | overhead per trial |")
    print("|---|---|---|---|")
    backends = [("SQLite", f"sqlite:///{folder / 'direct.db'}", f"sqlite:///{folder / 'behind.db'}")]
    if postgres:
        backends.append(("PostgreSQL", postgres, postgres))
    for name, direct_url, behind_url in backends:
        direct = run(space, direct_url, trials, "--jobs", "1", "--threads", "1")
        port = free_port()
        proxy = started([sys.executable, "-m", "ple_search.cli.main", "storage-proxy", "--storage", behind_url, "--port", str(port)], port)
        try:
            through = run(space, f"grpc://127.0.0.1:{port}", trials, "--jobs", "1", "--threads", "1")
        finally:
            stop(proxy)
        print(f"| {name} direct (reference) | {direct:.1f} | {direct / trials:.2f} | |")
        print(f"| {name} through the gRPC proxy | {through:.1f} | {through / trials:.2f} | {(through - direct) / trials:+.2f} s ({direct / through:.2f}x) |")


if __name__ == "__main__":
    main()
