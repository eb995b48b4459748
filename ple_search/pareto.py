"""Pareto analysis of a finished or running study: ranks, hypervolume, the report and its plot."""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from typing import Any, Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from ple_search.errors import StorageError

META_KEY = "ple_search"


def losses(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Objective values as losses (every column minimised)."""
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return np.asarray(values, dtype=float) * sign


def nondominated_ranks(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Pareto rank of each row (0 = non-dominated) by repeated non-dominated sorting."""
    points = losses(values, directions)
    ranks = np.full(len(points), -1)
    remaining = np.arange(len(points))
    rank = 0
    while remaining.size:
        sub = points[remaining]
        dominated = np.array([
            np.any(np.all(sub <= p, axis=1) & np.any(sub < p, axis=1)) for p in sub
        ])  # fmt: skip
        ranks[remaining[~dominated]] = rank
        remaining = remaining[dominated]
        rank += 1
    return ranks


def hypervolume(values: np.ndarray, directions: Sequence[str], reference: Sequence[float]) -> float:
    """Volume dominated by the points and bounded by ``reference`` (points beyond it count 0)."""
    from optuna._hypervolume import compute_hypervolume  # exact WFG; Optuna has no public wrapper

    points = losses(values, directions)
    ref = losses(np.asarray([reference]), directions)[0]
    inside = points[np.all(points < ref, axis=1)] if len(points) else points
    return float(compute_hypervolume(inside, ref)) if len(inside) else 0.0


def study_meta(study: optuna.Study) -> dict[str, Any]:
    """What ``ple-search run`` stored about the study (dataset, schema, space, objectives)."""
    meta = study.user_attrs.get(META_KEY)
    if meta is None:
        raise StorageError(f"study '{study.study_name}' was not created by ple-search run")
    return meta


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def architecture(hp: dict[str, Any], num_tasks: int) -> str:
    """One readable cell, e.g. ``PLE L2 3x2+2 [16] t[8] uncertainty``."""
    p, s, levels = hp["experts_per_task"], hp["shared_experts"], hp["levels"]
    if num_tasks == 1:
        family = "Single"
    elif p == 0 and s == 1:
        family = "SharedBottom"
    elif p == 0:
        family = "MMoE"
    elif levels == 1:
        family = "CGC"
    else:
        family = "PLE"
    widths = lambda w: "[" + ",".join(str(x) for x in w) + "]"  # noqa: E731
    return f"{family} L{levels} {p}x{num_tasks}+{s} {widths(hp['expert_hidden'])} t{widths(hp['tower_hidden'])} {hp['loss_weighting']}"


def report(study: optuna.Study, include_all: bool = False) -> dict[str, Any]:
    """The stable JSON shape behind every output format (documented in the README)."""
    meta = study_meta(study)
    names = meta["objectives"]
    directions = [d.name.lower() for d in study.directions]
    trials = finished_trials(study)
    if not trials:
        raise StorageError(f"study '{study.study_name}' has no finished trials yet; run `ple-search run --study {study.study_name}` first")
    values = np.array([t.values for t in trials])
    ranks = nondominated_ranks(values, directions)
    front = values[ranks == 0]
    rows = []
    for trial, rank in zip(trials, ranks):
        if rank and not include_all:
            continue
        hp = trial.user_attrs.get("hparams", {})
        rows.append({
            "number": trial.number,
            "rank": int(rank),
            "pareto": bool(rank == 0),
            "values": dict(zip(names, trial.values)),
            "test": {k: trial.user_attrs.get("test", {}).get(k) for k in names},
            "architecture": architecture(hp, len(meta["schema"]["tasks"])) if hp else "",
            "n_params": trial.user_attrs.get("n_params"),
            "train_seconds": trial.user_attrs.get("train_seconds"),
            "epochs": trial.user_attrs.get("best_epoch"),
            "hparams": hp,
        })  # fmt: skip
    sign = -1.0 if directions[0] == "maximize" else 1.0
    rows.sort(key=lambda r: (r["rank"], sign * r["values"][names[0]]))
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {
        "study": study.study_name,
        "objectives": [{"name": n, "metric": m, "direction": d} for n, m, d in zip(names, meta["metrics"], directions)],
        "reference_point": meta["reference_point"],
        "hypervolume": hypervolume(front, directions, meta["reference_point"]),
        "counts": {s.name.lower(): states.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)},
        "front_size": int((ranks == 0).sum()),
        "trials": rows,
    }


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def table_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and cells shared by the table, markdown and CSV renderings."""
    names = [o["name"] for o in data["objectives"]]
    header = ["trial", "rank", *[f"val {n}" for n in names], *[f"test {n}" for n in names], "architecture", "params", "epochs", "train s"]
    cells = [
        [str(r["number"]), str(r["rank"]), *[_fmt(r["values"][n]) for n in names], *[_fmt(r["test"][n]) for n in names],
         r["architecture"], _fmt(r["n_params"]), _fmt(r["epochs"]), _fmt(r["train_seconds"])]
        for r in data["trials"]
    ]  # fmt: skip
    return header, cells


def summary_line(data: dict[str, Any]) -> str:
    c = data["counts"]
    return (
        f"study {data['study']}: {c['complete']} finished, {c['fail']} failed, {c['running']} running; "
        f"Pareto front {data['front_size']} trials; hypervolume {data['hypervolume']:.6f} "
        f"(reference {data['reference_point']})"
    )


def render(data: dict[str, Any], fmt: str) -> str:
    """``json`` (the stable shape), ``csv`` or ``markdown``; ``table`` is rendered by the CLI with rich."""
    if fmt == "json":
        return json.dumps(data, indent=2, default=str)
    header, cells = table_rows(data)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(cells)
        return out.getvalue()
    lines = [f"**{summary_line(data)}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def plot(study: optuna.Study, path: str) -> None:
    """Dominated and Pareto trials: PNG through matplotlib, HTML through plotly (Optuna's plots)."""
    meta = study_meta(study)
    names = meta["objectives"]
    if path.endswith(".html"):
        try:
            figure = optuna.visualization.plot_pareto_front(study, target_names=names, include_dominated_trials=True)
        except ImportError:
            raise StorageError("HTML plots need plotly: pip install 'ple-search[plot]'") from None
        figure.write_html(path)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(names) <= 3:
            axes = optuna.visualization.matplotlib.plot_pareto_front(study, target_names=names, include_dominated_trials=True)
        else:
            axes = optuna.visualization.matplotlib.plot_parallel_coordinate(study, target=lambda t: t.values[0], target_name=names[0])
    figure = axes.figure if hasattr(axes, "figure") else axes[0].figure
    figure.set_size_inches(8, 6)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)

