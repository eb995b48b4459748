"""``ple-search init``: from a user's table to a dataset spec and a search space, every decision
printed with its reason, then the one command that runs the study.

The table is read once (``data.profile``); each column becomes a categorical or numeric feature,
or is left out (constant, ID-like, a timestamp); categorical columns get a vocabulary or, past
``VOCABULARY_LIMIT`` values, hash buckets; heavy-tailed positive numbers get ``log1p``. Tasks are
binary (two values) or regression (numbers), sparse where labels are missing, and a binary task
whose positives are a subset of another's is named as a cascade. With a time column the split is
by time. The epoch budget and the number of trials come from one measured epoch and ``--hours``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ple_search.core.errors import DataError
from ple_search.core.files import atomic_write_text
from ple_search.data.profile import ColumnProfile, profile_table, table_format

VOCABULARY_LIMIT = 100_000  # more distinct values than this: hash buckets bound the embedding table
ID_SHARE = 0.95  # a column with a distinct value on this share of its rows identifies rows
CODE_LIMIT = 30  # integers with at most this many values are codes (categorical)
HEAVY_TAIL_SKEW = 2.0
POSITIVE = ("1", "1.0", "true", "yes", "y", "t", "positive", "pos", "clicked", "bought")
FRACTIONS = [0.8, 0.1, 0.1]
TRIAL_OVERHEAD = 1.0  # seconds a trial spends outside its epochs (trainer, cost, storage), measured ~0.5-1 s here


@dataclass
class Plan:
    """What ``init`` decided: the spec and space it writes and why (one line each)."""

    name: str
    spec: dict[str, Any]
    space: dict[str, Any]
    decisions: list[str] = field(default_factory=list)
    trials: int = 0


def _is_id_name(name: str) -> bool:
    tokens = name.lower().replace("-", "_").split("_")
    return "id" in tokens or name.lower().endswith("id")


def _feature(profile: ColumnProfile) -> tuple[str | None, str]:
    """``("categorical"|"numeric"|None, why)`` for one feature column."""
    p, n = profile, profile.distinct_count
    many = f"{n:,}{'+' if p.capped else ''} values"
    if p.present == 0:
        return None, "left out: empty"
    if n <= 1:
        return None, f"left out: constant ({next(iter(p.distinct), None)!r})"
    if p.kind == "time":
        return None, "left out: a timestamp (give it as --time-column to split by time)"
    if p.kind == "other":
        return None, "left out: a type ple-search does not encode (lists, structs, binary)"
    identifies = (p.capped or n >= ID_SHARE * p.present) and p.present > 1000
    if p.kind in ("string", "bool"):
        if identifies:
            return None, f"left out: ID-like ({many} on {p.present:,} rows: one per row, nothing to learn)"
        return "categorical", f"categorical: {p.kind} with {many}"
    if identifies and p.kind == "integer":
        return None, f"left out: ID-like ({many} on {p.present:,} rows: one per row, nothing to learn)"
    if n <= CODE_LIMIT and p.integer_share == 1.0:
        return "categorical", f"categorical: {n} integer values (a code, not a quantity)"
    if p.kind == "integer" and _is_id_name(p.name):
        return "categorical", f"categorical: integer IDs ({many}; the name says ID)"
    share = f"{p.integer_share:.0%} integers, " if p.kind == "float" else ""
    return "numeric", f"numeric: {p.kind}, {share}{many}"


def _hash_buckets(distinct: int) -> int:
    """A power of two near a quarter of the distinct values, from 2^16 to 2^20."""
    return int(min(max(2 ** math.ceil(math.log2(max(distinct, 1) / 4)), 1 << 16), 1 << 20))


def _binary_mapping(values: set) -> dict[str, int] | None:
    """A label mapping for two values unless they are 0/1 already (the positive one by name)."""
    texts = sorted(str(v) for v in values)
    if set(texts) <= {"0", "1", "0.0", "1.0", "True", "False", "true", "false"}:
        return None
    positive = next((t for t in texts if t.lower() in POSITIVE), texts[1])
    return {t: int(t == positive) for t in texts}


def _task(name: str, profile: ColumnProfile, path: Path) -> tuple[dict[str, Any], list[str]]:
    p = profile
    values = {v for v in p.distinct if v is not None and str(v).strip() != ""}
    notes = []
    if len(values) <= 1:
        raise DataError(f"--tasks: task '{name}' has {'one class' if values else 'no labels'} in {path} ({sorted(map(str, values))}); a task needs two classes or varying numbers")
    if len(values) == 2:
        task: dict[str, Any] = {"name": name, "type": "binary"}
        mapping = _binary_mapping(values)
        if mapping:
            task["labels"] = mapping
        notes.append(f"task {name}: binary ({', '.join(sorted(map(str, values)))}{'; positive: ' + next(k for k, v in mapping.items() if v) if mapping else ''})")
    elif p.kind in ("integer", "float"):
        task = {"name": name, "type": "regression"}
        notes.append(f"task {name}: regression ({p.distinct_count:,}{'+' if p.capped else ''} values from {p.low:g} to {p.high:g})")
    else:
        raise DataError(f"--tasks: task '{name}' has {len(values)} text classes in {path}; a task is binary (two values) or regression (numbers)")
    if p.nulls:
        notes.append(f"task {name}: sparse, labelled on {p.present / p.rows:.1%} of rows (the other rows do not train it)")
    return task, notes


def _positives(values: list[Any], task: dict[str, Any]) -> list[bool | None]:
    mapping = task.get("labels")
    out: list[bool | None] = []
    for v in values:
        if v is None or str(v).strip() == "":
            out.append(None)
        else:
            out.append(bool(mapping[str(v)]) if mapping else str(v).lower() in ("1", "1.0", "true"))
    return out


def _cascades(tasks: list[dict[str, Any]], kept: dict[str, list[Any]]) -> list[str]:
    """Binary tasks whose positives all lie among another task's positives (click -> purchase):
    each gets ``depends_on`` its parent (the first such, the one with the fewest positives), and
    the list is reordered so parents come first."""
    binary = [t for t in tasks if t["type"] == "binary"]
    positives = {t["name"]: _positives(kept[t["name"]], t) for t in binary}
    notes = []
    for child in binary:
        for parent in sorted(binary, key=lambda t: sum(1 for v in positives[t["name"]] if v)):
            if child is parent or parent.get("depends_on") == child["name"] or "depends_on" in child:
                continue
            c, pa = positives[child["name"]], positives[parent["name"]]
            child_positive = [i for i, v in enumerate(c) if v]
            if child_positive and all(pa[i] for i in child_positive) and sum(1 for v in pa if v) > len(child_positive):
                child["depends_on"] = parent["name"]
                notes.append(
                    f"task {child['name']}: its positives are a subset of {parent['name']}'s ({len(child_positive):,} of "
                    f"{sum(1 for v in pa if v):,}): a cascade {parent['name']} -> {child['name']} (depends_on; the space searches "
                    "task_relation: independent, esmm, aitm)"
                )
    ordered: list[dict[str, Any]] = []
    while len(ordered) < len(tasks):  # parents first, otherwise the given order
        for task in tasks:
            if task not in ordered and (task.get("depends_on") is None or any(t["name"] == task["depends_on"] for t in ordered)):
                ordered.append(task)
                break
    tasks[:] = ordered
    return notes


def plan(table: Path, tasks: list[str], *, time_column: str | None = None, name: str | None = None) -> Plan:
    """Read ``table`` once and decide the spec and space (budget not yet sized: ``size_budget``)."""
    profiles, kept = profile_table(table, keep=tuple(tasks))
    columns = list(profiles)
    for task in tasks:
        if task not in profiles:
            raise DataError(f"--tasks: no column '{task}' in {table}; columns are {columns}")
    if time_column is not None and time_column not in profiles:
        raise DataError(f"--time-column: no column '{time_column}' in {table}; columns are {columns}")
    if len(set(tasks)) != len(tasks):
        raise DataError(f"--tasks: a task is named twice ({','.join(tasks)})")
    rows = next(iter(profiles.values())).rows
    decisions = [f"table {table}: {rows:,} rows, {len(columns)} columns ({table_format(table)})"]
    task_specs = []
    for task in tasks:
        spec_task, notes = _task(task, profiles[task], table)
        task_specs.append(spec_task)
        decisions += notes
    decisions += _cascades(task_specs, kept)
    categorical, numeric, log1p, buckets = [], [], [], {}
    split_column = "split" if "split" in profiles and {str(v) for v in profiles["split"].distinct} <= {"train", "val", "test"} else None
    for column, profile in profiles.items():
        if column in tasks or column in (time_column, split_column):
            continue
        role, why = _feature(profile)
        if role == "categorical":
            categorical.append(column)
            if profile.capped or profile.distinct_count > VOCABULARY_LIMIT:
                buckets[column] = _hash_buckets(profile.distinct_count)
                why += f"; {buckets[column]:,} hash buckets (more than {VOCABULARY_LIMIT:,} values: a vocabulary would grow with the data)"
            else:
                why += "; a vocabulary"
        elif role == "numeric":
            numeric.append(column)
            if profile.low >= 0 and profile.skew > HEAVY_TAIL_SKEW:
                log1p.append(column)
                why += f"; log1p (positive, heavy-tailed: skew {profile.skew:.1f})"
        decisions.append(f"column {column}: {why}")
    if not categorical and not numeric:
        raise DataError(f"--table {table}: no column is usable as a feature (see the decisions above)")
    if time_column is not None:
        split = {"by": time_column, "fractions": FRACTIONS}
        decisions.append(f"split: by time on {time_column}: the earliest 80% of rows train, the next 10% validate, the latest 10% test")
    elif split_column:
        split = {"column": split_column}
        decisions.append("split: the column 'split' (train/val/test)")
    else:
        split = {"fractions": FRACTIONS, "seed": 0}
        decisions.append("split: random 80/10/10 (seed 0); give --time-column to validate on a later period")
    name = name or table.stem
    spec = {"file": str(table.resolve()), "categorical": categorical, "numeric": numeric}
    spec.update({"log1p": log1p} if log1p else {})
    spec.update({"hash_buckets": buckets} if buckets else {})
    spec.update({"tasks": task_specs, "split": split})
    cascade = any("depends_on" in t for t in task_specs)
    return Plan(name, spec, _space(name, [t["name"] for t in task_specs], bool(numeric), cascade), decisions)


def _space(name: str, tasks: list[str], has_numeric: bool, cascade: bool = False) -> dict[str, Any]:
    """The shipped census space's searched keys (PLE, CGC, MMoE, shared-bottom and the balancing
    methods), on this table's spec and tasks; with dependent tasks also the task relation."""
    from importlib.resources import files

    shipped = yaml.safe_load(files("ple_search.search_spaces").joinpath("census.yaml").read_text())
    params = dict(shipped["params"])
    if not has_numeric:
        for key in ("numeric_encoding", "numeric_bins", "periodic_frequencies", "periodic_sigma"):
            params.pop(key, None)
    if cascade:
        params["task_relation"] = {"type": "categorical", "choices": ["esmm", "aitm", "independent"]}
        params["calibration_weight"] = {"type": "float", "low": 0.1, "high": 1.0, "when": {"task_relation": "aitm"}}
    return {
        "dataset": {"name": f"{name}.spec.yaml"},
        "objectives": list(tasks),
        "sampler": {"name": "tpe", "seed": 0},
        "budget": dict(shipped["budget"]),
        "pruner": shipped["pruner"],
        "fixed": shipped["fixed"],
        "params": params,
        "enqueue": [{k: v for k, v in config.items() if k in params} for config in shipped["enqueue"]],
    }


def size_budget(result: Plan, spec_path: Path, hours: float) -> None:
    """Epochs and trials from one measured epoch of a mid-size model (the space's first enqueued
    config) on this data: ten epochs unless a trial would then take more than a thirtieth of
    ``hours``; as many trials as fit in ``hours`` with MO-ASHA stopping half the epochs."""
    from ple_search.data import load
    from ple_search.train.engine import step_seconds
    from ple_search.train.module import PLEModule

    dataset = load(str(spec_path))
    config = dict(result.space["enqueue"][0])
    module = PLEModule(dataset.schema, {**result.space["fixed"], **config})
    batches = math.ceil(len(dataset.train) / module.resolved["batch_size"])
    epoch = step_seconds(module, dataset.train, 1) * batches * 1.2  # +20%: validation and bookkeeping
    seconds = hours * 3600
    epochs = 10 if epoch * 10 <= seconds / 30 else max(3, int(seconds / 30 / epoch))
    workers = os.cpu_count() or 1  # `run` without --jobs shares many trials out, one per core
    trial = epoch * epochs * 0.5 + TRIAL_OVERHEAD
    trials = int(min(max(seconds * workers / trial, 10), 500))
    result.space["budget"] = {"max_epochs": epochs, "patience": 2}
    result.trials = trials
    result.decisions.append(
        f"budget: {epochs} epochs per trial, {trials} trials (one epoch measured at {epoch:.2f} s on "
        f"{len(dataset.train):,} training rows; {hours:g} h on {workers} cores, MO-ASHA stopping about half "
        f"the epochs, {TRIAL_OVERHEAD:g} s per trial for its set-up)"
    )


def init(table: Path, tasks: list[str], *, time_column: str | None, hours: float, out: Path, force: bool = False, name: str | None = None) -> tuple[Plan, Path, Path]:
    """The whole of ``ple-search init``: plan, write the spec, size the budget on it, check and
    write the space. A failure removes what this call wrote."""
    from ple_search.study.space import parse_space

    result = plan(table, tasks, time_column=time_column, name=name)
    spec_path, space_path = out / f"{result.name}.spec.yaml", out / "search_spaces" / f"{result.name}.yaml"
    for path in (spec_path, space_path):
        if path.exists() and not force:
            raise DataError(f"--out: {path} exists; pass --force to replace it, or --out another folder")
    atomic_write_text(spec_path, yaml.safe_dump(result.spec, sort_keys=False))
    try:
        size_budget(result, spec_path, hours)
        space = {**result.space, "dataset": {"name": str(spec_path.resolve())}}
        parse_space(space, str(space_path))
        atomic_write_text(space_path, yaml.safe_dump(space, sort_keys=False, default_flow_style=None))
    except BaseException:
        spec_path.unlink(missing_ok=True)
        raise
    return result, spec_path, space_path
