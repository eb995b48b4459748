"""Reports of a study: the stable JSON shape behind ``pareto``'s formats, its renderings (table
cells, markdown, CSV), the summary line, the Pareto plot and the progress summary.

The math (ranks, hypervolume) is ``pareto``; what is stored where is ``record``."""

from __future__ import annotations

import csv
import io
import math
import warnings
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from ple_search.serve.cost import MEASURES, Limits
from ple_search.core.errors import ConfigError, StorageError
from ple_search.core.files import strict_json
from ple_search.data.schema import DIRECTIONS
from ple_search.model.architectures import describe
from ple_search.study.pareto import hypervolume, nondominated_ranks
from ple_search.study.record import (
    BEST_EPOCH, COST, EPOCHS_RUN, HPARAMS, N_PARAMS, PRUNED_AT, RUNGS, TEST, TRAIN_SECONDS, StudyRecord, finished_trials,
    is_ple_study, state_counts, within_limits,
)  # fmt: skip


def architecture(hp: dict[str, Any], num_tasks: int, cascade: bool = False) -> str:
    """One readable cell, e.g. ``PLE L2 3x2+2 [16] t[8] uncertainty`` (``model.architectures``)."""
    return describe(hp, num_tasks, cascade)


TASK_METRICS = ("auc", "rmse")


def companions(record: StudyRecord) -> list[str]:
    """The other metric of each dependent task an objective names: its conditional AUC
    (``conversion@click``) beside its joint one, or the joint beside the conditional; the report
    shows both."""
    from ple_search.data.schema import conditional_name

    objectives = set(record.task_objectives())
    out = []
    for task in record.parsed_schema.dependent:
        pair = (task.name, conditional_name(task))
        if objectives & set(pair):
            out += [n for n in pair if n not in objectives]
    return out


def _row(trial: FrozenTrial, record: StudyRecord, rank: int | None, values: list[float], test: dict[str, Any], epochs_key: str) -> dict[str, Any]:
    hp = trial.user_attrs.get(HPARAMS, {})
    names = record.objectives
    cost = {"cost": trial.user_attrs[COST]} if COST in trial.user_attrs else {}  # studies before cost measures have none
    return {
        "number": trial.number,
        "rank": rank,
        "pareto": rank == 0,
        "values": dict(zip(names, values)),
        "test": {k: test.get(k) for k in [*record.task_objectives(), *companions(record)]},  # a serving cost has no test value
        "architecture": architecture(hp, len(record.parsed_schema.tasks), bool(record.parsed_schema.dependent)) if hp else "",
        "n_params": trial.user_attrs.get(N_PARAMS),
        "train_seconds": trial.user_attrs.get(TRAIN_SECONDS),
        "epochs": trial.user_attrs.get(epochs_key),
        "hparams": hp,
        **cost,
    }


def _add_transfer(rows: list[dict[str, Any]], baselines: dict[str, Any], directions: dict[str, str]) -> None:
    """MTL gain per task (test split) and the transfer label of each row with test metrics."""
    from ple_search.evaluate.transfer import gains, transfer_label

    single = {task: b["test_mean"] for task, b in baselines.items() if task in directions}
    for row in rows:
        if any(row["test"].get(t) is None for t in single):
            continue
        row["gain"] = gains(row["test"], single, directions)
        row["transfer"] = transfer_label(list(row["gain"].values())) if len(single) == len(directions) else None


def _add_gbdt_gain(rows: list[dict[str, Any]], gbdt: dict[str, Any], directions: dict[str, str]) -> None:
    """Per row with test metrics: the gain against the GBDT yardstick (positive = the network is better)."""
    from ple_search.evaluate.transfer import gains

    trees = {task: g["test_mean"] for task, g in gbdt.items() if task in directions}
    for row in rows:
        if all(row["test"].get(t) is not None for t in trees):
            row["gain_vs_gbdt"] = gains(row["test"], trees, directions)


def _gbdt_summary(gbdt: dict[str, Any], on_front: list[dict[str, Any]]) -> dict[str, Any]:
    beats = sum(1 for r in on_front if "gain_vs_gbdt" in r and all(g >= 0 for g in r["gain_vs_gbdt"].values()))
    shown = {t: {"test_mean": g["test_mean"], "test_std": g["test_std"], "seeds": g["seeds"], "model": g["model"], "params": g["params"]} for t, g in gbdt.items()}
    return {"gbdt": shown, "beats_gbdt": beats}


def _search_rows(record: StudyRecord, trials: list[FrozenTrial], ranks: np.ndarray, include_all: bool) -> list[dict[str, Any]]:
    """The search view: front trials (every finished trial with ``include_all``) at their best epoch."""
    return [
        _row(trial, record, int(rank), trial.values, trial.user_attrs.get(TEST, {}), BEST_EPOCH)
        for trial, rank in zip(trials, ranks)
        if include_all or not rank
    ]


def _pruned_rows(record: StudyRecord, study: optuna.Study) -> list[dict[str, Any]]:
    """Pruned trials at their last rung's vector, rank ``None``."""
    rows = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        rungs = trial.user_attrs.get(RUNGS, {})
        last = rungs[max(rungs, key=int)] if rungs else [math.nan] * len(record.objectives)
        rows.append({**_row(trial, record, None, last, {}, EPOCHS_RUN), "pruned_at": trial.user_attrs.get(PRUNED_AT)})
    return rows


def _confirmed_rows(record: StudyRecord, study: optuna.Study, trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    """The confirmed view: fresh-seed means and stds; rank 0 = stays on the front of the means."""
    stored = record.confirmed.get("trials", {})
    if not stored:
        raise StorageError(f"study '{study.study_name}' has no confirmed trials; run `ple-search confirm --study {study.study_name}`")
    by_number = {t.number: t for t in trials}
    rows = []
    for number, c in stored.items():
        row = _row(by_number[int(number)], record, 0 if c["on_front"] else 1, [c["val_mean"][n] for n in record.objectives], c["test_mean"], BEST_EPOCH)
        row.update(values_std=c["val_std"], test_std=c["test_std"], seeds=c["seeds"])
        rows.append(row)
    return rows


def report(study: optuna.Study, include_all: bool = False, confirmed: bool = False, limits: Limits | None = None) -> dict[str, Any]:
    """The stable JSON shape behind every output format (documented in the README). With
    ``confirmed``, the rows are the confirmed trials with fresh-seed means (``values``, ``test``)
    and standard deviations (``values_std``, ``test_std``), ranked on the validation means. With
    serving ``limits``, the view is of the finished trials within them (the ``budget`` block, a
    name kept for the stable shape, gives the limits and how many trials they left out)."""
    record = StudyRecord.from_study(study)
    names, directions = record.objectives, record.directions
    trials = finished_trials(study)
    if not trials:
        raise StorageError(f"study '{study.study_name}' has no finished trials yet; run `ple-search run --study {study.study_name}` first")
    excluded = 0
    if limits:
        kept = within_limits(study, trials, limits)
        excluded, trials = len(trials) - len(kept), kept
    values = np.array([t.values for t in trials])
    ranks = nondominated_ranks(values, directions)
    if confirmed:
        rows = _confirmed_rows(record, study, trials)
    else:
        rows = _search_rows(record, trials, ranks, include_all) + (_pruned_rows(record, study) if include_all else [])
    baselines = record.baselines
    task_directions = {n: d for n, d in zip(names, directions) if n in set(record.task_objectives())}
    if baselines:
        _add_transfer(rows, baselines, task_directions)
    if record.gbdt:
        _add_gbdt_gain(rows, record.gbdt, task_directions)
    sign = -DIRECTIONS[directions[0]]
    rows.sort(key=lambda r: (math.inf if r["rank"] is None else r["rank"], sign * r["values"][names[0]]))
    on_front = [r for r in rows if r["rank"] == 0]
    return {
        "study": study.study_name,
        "view": "confirmed" if confirmed else "search",
        "objectives": [{"name": n, "metric": m, "direction": d} for n, m, d in zip(names, record.metrics, directions)],
        **({"also_tested": companions(record)} if companions(record) else {}),
        "reference_point": record.reference_point,
        "hypervolume": hypervolume(values[ranks == 0], directions, record.reference_point),
        "counts": state_counts(study),
        "front_size": int((ranks == 0).sum()),
        "baselines": {t: {"test_mean": b["test_mean"], "test_std": b["test_std"], "seeds": b["seeds"]} for t, b in baselines.items()} if baselines else None,
        "beats_single_task": sum(r.get("transfer") == "gain" for r in on_front) if baselines else None,
        **({"budget": {"limits": limits.to_dict(), "excluded": excluded}} if limits else {}),
        **(_gbdt_summary(record.gbdt, on_front) if record.gbdt else {}),
        "trials": rows,
    }


def _fmt(value: Any, std: Any = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if std is not None:
        return f"{value:.4f}±{std:.4f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def table_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and cells shared by the table, markdown and CSV renderings."""
    names = [o["name"] for o in data["objectives"]]
    tasks = [o["name"] for o in data["objectives"] if o["metric"] in TASK_METRICS]
    transfer = data.get("baselines") is not None
    rank_name = "on front" if data.get("view") == "confirmed" else "rank"
    shown = [*tasks, *data.get("also_tested", [])]  # a dependent task's joint and conditional AUC, both
    header = ["trial", rank_name, *[f"val {n}" for n in names], *[f"test {n}" for n in shown]]
    header += [*[f"gain {n}" for n in tasks], "transfer"] if transfer else []
    trees = "gbdt" in data
    header += [f"vs GBDT {n}" for n in tasks] if trees else []
    header += ["architecture", "params", "epochs", "train s"]
    measured = [r["cost"] for r in data["trials"] if "cost" in r]
    columns = [m for m in MEASURES.values() if m.column and measured and (m.always or any(m.key in c for c in measured))]
    header += [m.column for m in columns]
    cells = []
    for r in data["trials"]:
        rank = "pruned" if r["rank"] is None else ("yes" if r["rank"] == 0 else "no") if data.get("view") == "confirmed" else str(r["rank"])
        row = [str(r["number"]), rank]
        row += [_fmt(r["values"][n], (r.get("values_std") or {}).get(n)) for n in names]
        row += [_fmt(r["test"].get(n), (r.get("test_std") or {}).get(n)) for n in shown]
        if transfer:
            row += [f"{r['gain'][n]:+.4f}" if "gain" in r else "-" for n in tasks] + [r.get("transfer") or "-"]
        if trees:
            row += [f"{r['gain_vs_gbdt'][n]:+.4f}" if n in r.get("gain_vs_gbdt", {}) else "-" for n in tasks]
        seconds = r["train_seconds"]
        row += [r["architecture"], _fmt(r["n_params"]), _fmt(r["epochs"]), f"{seconds:.1f}" if seconds is not None else "-"]
        row += [m.cell(r.get("cost", {})) for m in columns]
        cells.append(row)
    return header, cells


def summary_line(data: dict[str, Any]) -> str:
    c = data["counts"]
    line = (
        f"study {data['study']}: {c['complete']} finished, {c['pruned']} pruned, {c['fail']} failed, {c['running']} running; "
        f"Pareto front {data['front_size']} trials; hypervolume {data['hypervolume']:.6f} "
        f"(reference {data['reference_point']})"
    )
    if data.get("budget"):
        limits = ", ".join(f"{k} <= {v:g}" for k, v in data["budget"]["limits"].items())
        line += f"; serving limits {limits} leave out {data['budget']['excluded']} finished trials"
    if data.get("view") == "confirmed":
        on_front = sum(r["rank"] == 0 for r in data["trials"])
        line += f"; confirmed on fresh seeds: {on_front} of {len(data['trials'])} stay non-dominated"
    shown = sum(r["rank"] == 0 for r in data["trials"])
    if "gbdt" in data:
        line += f"; {data['beats_gbdt']} of {shown} Pareto trials beat GBDT on every task"
    if data.get("baselines") is None:
        return line + f"; no single-task baselines yet (add them: ple-search baselines --study {data['study']})"
    return line + f"; {data['beats_single_task']} of {shown} Pareto trials beat single-task on every task"


def render(data: dict[str, Any], fmt: str) -> str:
    """``json`` (the stable shape), ``csv`` or ``markdown``; ``table`` is rendered by the CLI with rich."""
    if fmt == "json":
        return strict_json(data, indent=2, default=str)
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


COST_AXES = {**{m.name: m.key for m in MEASURES.values()}, **{m.key: m.key for m in MEASURES.values()}}


def _axis_value(row: dict[str, Any], name: str) -> float:
    value = row["values"].get(name, row.get("cost", {}).get(name))
    return math.nan if value is None else float(value)


def plot_axes(study: optuna.Study, path: str | None, axes_names: tuple[str | None, str | None]) -> list[str]:
    """The two axes a ``--x``/``--y`` plot draws (objective names or stored cost keys), or a
    ``ConfigError`` saying what is allowed (checked before anything is printed or drawn)."""
    objectives = StudyRecord.from_study(study).objectives
    allowed = [*objectives, *COST_AXES]
    if not path or None in axes_names:
        raise ConfigError("--x and --y go together, with --plot FILE.png")
    bad = [a for a in axes_names if a not in allowed]
    if bad:
        raise ConfigError(f"--x/--y {bad[0]!r}: use an objective or a serving cost: {', '.join(dict.fromkeys(allowed))}")
    if path.endswith(".html"):
        raise ConfigError("--x/--y draw PNG plots; name a .png file")
    chosen = [a if a in objectives else COST_AXES[a] for a in axes_names]
    measured = {key for t in finished_trials(study) for key in (t.user_attrs.get(COST) or {})}
    missing = [a for a in chosen if a not in objectives and a not in measured]
    if missing:
        raise ConfigError(
            f"--x/--y {missing[0]!r}: study '{study.study_name}' never measured it, so the plot would be empty; "
            f"its trials measured {', '.join(sorted(measured)) or 'no serving cost'} (latency is measured where a space has "
            "'serving:' or optimises or limits latency)"
        )
    return chosen


def plot(study: optuna.Study, path: str, axes_names: tuple[str, str] | None = None) -> None:
    """PNG (matplotlib) or HTML (plotly). Two axes (the two objectives, or ``axes_names``: any
    objective or serving cost, e.g. ``("latency_ms", "income")``): dominated, Pareto and pruned
    trials (at their last rung's vector); more objectives: Optuna's Pareto or parallel-coordinate
    plots. The front is always that of every objective."""
    names = StudyRecord.from_study(study).objectives
    if axes_names is not None:
        names = plot_axes(study, path, axes_names)
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

    if len(names) != 2 and axes_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if len(names) == 3:
                axes = optuna.visualization.matplotlib.plot_pareto_front(study, target_names=names, include_dominated_trials=True)
            else:
                axes = optuna.visualization.matplotlib.plot_parallel_coordinate(study, target=lambda t: t.values[0], target_name=names[0])
        figure = axes.figure if hasattr(axes, "figure") else axes[0].figure
    else:
        data = report(study, include_all=True)
        figure, axes = plt.subplots(figsize=(8, 6))
        groups = [
            ("pruned (last rung)", [r for r in data["trials"] if r["rank"] is None], dict(marker="x", color="0.6")),
            ("dominated", [r for r in data["trials"] if r["rank"]], dict(marker="o", color="tab:blue", alpha=0.7)),
            ("Pareto front", [r for r in data["trials"] if r["rank"] == 0], dict(marker="o", color="tab:red", s=60)),
        ]
        for label, rows, style in groups:
            if rows:
                axes.scatter([_axis_value(r, names[0]) for r in rows], [_axis_value(r, names[1]) for r in rows], label=f"{label} ({len(rows)})", **style)
        metrics = {o["name"]: f"validation {o['metric']}" for o in data["objectives"] if o["metric"] in TASK_METRICS}
        axes.set_xlabel(f"{metrics.get(names[0], 'serving')} {names[0]}")
        axes.set_ylabel(f"{metrics.get(names[1], 'serving')} {names[1]}")
        axes.set_title(f"study {study.study_name}: hypervolume {data['hypervolume']:.5f}")
        axes.legend()
        axes.grid(alpha=0.3)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def front_summary(study: optuna.Study) -> dict[str, Any]:
    """Front size, hypervolume and best value per objective of the finished trials."""
    record = StudyRecord.from_study(study)
    trials = finished_trials(study)
    directions = record.directions
    if not trials:
        return {"front": 0, "hypervolume": 0.0, "best": {}}
    values = np.array([t.values for t in trials])
    front = values[nondominated_ranks(values, directions) == 0]
    best = {
        name: float(values[np.argmax(DIRECTIONS[d] * values[:, k]), k])
        for k, (name, d) in enumerate(zip(record.objectives, directions))
    }
    return {"front": len(front), "hypervolume": hypervolume(front, directions, record.reference_point), "best": best}


def studies_overview(storage: optuna.storages.BaseStorage) -> list[dict[str, Any]]:
    """One row per study of ``storage``: trial counts by state, front size and hypervolume
    (``"-"`` and NaN for studies that ``ple-search run`` did not create)."""
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        front = front_summary(study) if is_ple_study(study) else {"front": "-", "hypervolume": float("nan")}
        rows.append({"study": summary.study_name, **state_counts(study), "front": front["front"], "hypervolume": front["hypervolume"]})
    return rows
