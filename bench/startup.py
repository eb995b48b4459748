"""Start-up benchmark: seconds from process start to exit for commands that do not train, against
two references measured in the same run: a bare interpreter, and importing torch and Lightning
(what every command paid before the imports were made lazy).

    python bench/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def seconds(argv: list[str], cwd: str, repeats: int) -> float:
    """Median wall seconds of ``argv`` (one warm-up run first, so the file cache is warm)."""
    runs = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        if i:
            runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def make_study(folder: str) -> str:
    """A finished two-trial study in a journal file, for `pareto` and `studies` to read."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    path = str(Path(folder) / "s.journal")
    study = optuna.create_study(study_name="s", storage=optuna.storages.JournalStorage(JournalFileBackend(path)), directions=["maximize", "maximize"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.set_user_attr("ple_search", {
        "objectives": ["a", "b"], "metrics": ["auc", "auc"], "reference_point": [0.5, 0.5], "budget": {"max_epochs": 2, "patience": 1},
        "dataset": {"name": "synthetic", "options": {}}, "split": "random", "schema": {"tasks": [{"name": "a", "type": "binary"}, {"name": "b", "type": "binary"}]},
    })  # fmt: skip
    for a, b in ((0.8, 0.7), (0.7, 0.8)):
        trial = study.ask()
        trial.set_user_attr("best_epoch", 1)
        trial.set_user_attr("hparams", {"levels": 1, "experts_per_task": 1, "shared_experts": 1, "expert_hidden": [4], "tower_hidden": [4], "loss_weighting": "equal"})
        study.tell(trial, [a, b])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as folder:
        storage = make_study(folder)
        cli = [py, "-m", "ple_search.cli.main"]
        rows = [
            ("python -c pass (reference)", [py, "-c", "pass"]),
            ("import torch, pytorch_lightning (reference)", [py, "-c", "import torch, pytorch_lightning"]),
            ("ple-search --help", [*cli, "--help"]),
            ("ple-search studies", [*cli, "studies", "--storage", storage]),
            ("ple-search pareto", [*cli, "pareto", "--study", "s", "--storage", storage, "--format", "json"]),
            ("ple-search export --trial 0", [*cli, "export", "--study", "s", "--storage", storage, "--trial", "0", "--out", str(Path(folder) / "x.yaml")]),
        ]
        measured = [(name, seconds(argv, folder, args.repeats)) for name, argv in rows]
    heavy = measured[1][1]
    print(f"| command | seconds (median of {args.repeats}) | vs importing torch + Lightning |")
    print("|---|---|---|")
    for name, value in measured:
        print(f"| {name} | {value:.2f} | {value / heavy:.2f}x |")


if __name__ == "__main__":
    main()
