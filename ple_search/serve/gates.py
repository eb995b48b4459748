"""What the gates do: each task's mean gate weight on each expert per level, over a split, and
the share that goes to shared experts (the PLE paper's expert-utilisation analysis). ``train``
writes it as ``gates.json`` and ``gates.png``; ``ple-search explain --model DIR`` shows it.
Torch loads only inside ``measure``: reading and showing a ``gates.json`` needs none."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ple_search.data.dataset import Split
    from ple_search.train.module import PLEModule

GATES, GATES_PLOT = "gates.json", "gates.png"
CHUNK = 32_768


def _expert_names(tasks: list[str], experts: list[tuple[int | None, int]]) -> list[str]:
    """Names for a gate's experts ``(owner task index or None, index)``: ``income/0``, ``shared/1``."""
    return [f"{'shared' if owner is None else tasks[owner]}/{j}" for owner, j in experts]


def measure(module: PLEModule, split: Split, split_name: str = "test") -> dict[str, Any] | None:
    """The gate report of ``module`` on ``split`` (None for an architecture without gates)."""
    import torch

    model = module.model
    tasks = module.schema.task_names
    module.eval()
    sums: list[dict[str, Any]] = []  # per level, the row-weighted mean over the chunks
    rows = len(split)
    with torch.no_grad():
        for start in range(0, rows, CHUNK):
            cat, num = split.cat[start : start + CHUNK].long(), split.num[start : start + CHUNK]
            usage = model.gate_usage(module.encoder(cat, num))
            if usage is None:
                return None
            share = len(cat) / rows
            if not sums:
                sums = [dict.fromkeys(level) for level in usage]
            for total, level in zip(sums, usage):
                for key, value in level.items():
                    if value is not None:
                        total[key] = value * share if total[key] is None else total[key] + value * share
    levels = []
    for i, (level, (task_experts, shared_experts)) in enumerate(zip(sums, model.gate_experts()), start=1):
        entry: dict[str, Any] = {"level": i, "tasks": {}, "shared_gate": None}
        for k, name in enumerate(tasks):
            names = _expert_names(tasks, task_experts[k])
            weights = [float(w) for w in level["task"][k]] if level["task"] is not None else [1.0] * len(names)
            shared = sum(w for w, (owner, _) in zip(weights, task_experts[k]) if owner is None)
            entry["tasks"][name] = {"experts": dict(zip(names, weights)), "shared_share": float(shared)}
        if level["shared"] is not None and shared_experts is not None:
            entry["shared_gate"] = dict(zip(_expert_names(tasks, shared_experts), (float(w) for w in level["shared"])))
        levels.append(entry)
    return {"split": split_name, "rows": rows, "levels": levels}


def table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per level and task, its weight on each expert and the shared share."""
    experts = list(dict.fromkeys(name for level in report["levels"] for t in level["tasks"].values() for name in t["experts"]))
    header = ["level", "gate", *experts, "shared share"]
    rows = []
    for level in report["levels"]:
        for task, gate in level["tasks"].items():
            rows.append([str(level["level"]), task, *(f"{gate['experts'][e]:.3f}" if e in gate["experts"] else "" for e in experts), f"{gate['shared_share']:.3f}"])
        if level["shared_gate"]:
            rows.append([str(level["level"]), "shared gate", *(f"{level['shared_gate'].get(e, 0.0):.3f}" if e in level["shared_gate"] else "" for e in experts), ""])
    return header, rows


def plot(report: dict[str, Any], path: Path) -> None:
    """One heat map per level: rows are the task gates, columns the experts, cells the mean weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    levels = report["levels"]
    figure, axes = plt.subplots(1, len(levels), figsize=(4.5 * len(levels), 3.2), squeeze=False)
    for ax, level in zip(axes[0], levels):
        names = list(dict.fromkeys(e for gate in level["tasks"].values() for e in gate["experts"]))
        grid = np.array([[gate["experts"].get(e, np.nan) for e in names] for gate in level["tasks"].values()])
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(level["tasks"])), list(level["tasks"]))
        ax.set_title(f"level {level['level']}: mean gate weight ({report['split']})", fontsize=9)
        figure.colorbar(image, ax=ax, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
