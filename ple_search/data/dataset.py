"""In-memory splits and the dataset every source yields."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ple_search.data.preprocess import Preprocessor
from ple_search.data.schema import Schema, Task
from ple_search.core.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split as tensors: categorical codes ``[N, C]`` (int32: half of int64's memory; the
    encoder adds int64 offsets), numeric ``[N, F]`` and labels ``[N, T]`` (float32, NaN = missing).
    The arrays may be memory-mapped from the cache (``cache.py``); nothing writes to them."""

    cat: Tensor
    num: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    @classmethod
    def from_numpy(cls, cat: np.ndarray, num: np.ndarray, labels: np.ndarray) -> "Split":
        return cls(
            torch.from_numpy(np.ascontiguousarray(cat, dtype=np.int32)),
            torch.from_numpy(np.ascontiguousarray(num, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32)),
        )

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.cat.to(device), self.num.to(device), self.labels.to(device))


@dataclass
class Dataset:
    """Train/val/test splits, their schema, the preprocessing fitted on train, and provenance
    (``info``: source, options, split description, notes such as the single-file fallback)."""

    schema: Schema
    train: Split
    val: Split
    test: Split
    preprocessor: Preprocessor
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Fitted on the train split; a schema that already carries them (from the cache) keeps them.
        self.schema = replace(
            self.schema,
            tasks=tuple(_with_label_scale(t, self.train.labels[:, k]) for k, t in enumerate(self.schema.tasks)),
            numeric_quantiles=self.schema.numeric_quantiles or numeric_quantiles(self.train.num),
        )

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def select_tasks(self, names: list[str]) -> "Dataset":
        """The same features and splits with only the given tasks (e.g. for single-task baselines)."""
        unknown = [n for n in names if n not in self.schema.task_names]
        if unknown:
            raise DataError(f"unknown task '{unknown[0]}'; tasks: {self.schema.task_names}")
        idx = [self.schema.task_names.index(n) for n in names]
        splits = [Split(s.cat, s.num, s.labels[:, idx]) for s in (self.train, self.val, self.test)]
        # a dependent task without its parent is a task of its own, on its joint label
        tasks = tuple(replace(t, depends_on=None) if t.depends_on not in names else t for t in (self.schema.tasks[i] for i in idx))
        schema = replace(self.schema, tasks=tasks)
        return Dataset(schema, *splits, self.preprocessor, dict(self.info))

    def check_labels(self, where: str) -> None:
        """Every task needs labels in every split, a binary task both classes (AUC is undefined
        otherwise) and a regression task more than one value in train (a constant has nothing to
        learn and an RMSE reference of 0, so no trial could rank); raise a ``DataError`` naming
        ``where``, the task and the split."""
        for name in SPLITS:
            labels = self.split(name).labels
            for k, task in enumerate(self.schema.tasks):
                known = labels[:, k][~torch.isnan(labels[:, k])]
                if known.numel() == 0:
                    raise DataError(f"{where}: task '{task.name}' has no labels in the {name} split")
                if task.kind.probability and torch.unique(known).numel() < 2:
                    raise DataError(
                        f"{where}: task '{task.name}' has only one class ({float(known[0]):g}) in the "
                        f"{name} split, so its AUC is undefined; use more data or another split"
                    )
                if not task.kind.probability and name == "train" and bool((known == known[0]).all()):
                    raise DataError(
                        f"{where}: regression task '{task.name}' is constant ({float(known[0]):g}) in the train split: "
                        "there is nothing to learn and no trial could beat predicting it; drop the task or fix its column"
                    )


QUANTILE_LEVELS = 64  # numeric_bins must divide it


def numeric_quantiles(train_numeric: torch.Tensor) -> tuple[tuple[float, ...], ...]:
    """Per numeric column, the train split's quantiles at levels k / QUANTILE_LEVELS (rounded to
    float32, the precision the model compares in): bin edges fitted on train only."""
    if train_numeric.numel() == 0:
        return ()
    levels = np.linspace(0.0, 1.0, QUANTILE_LEVELS + 1)
    columns = train_numeric.numpy()
    # one column at a time: a float64 copy of one column, not of the table
    return tuple(
        tuple(float(v) for v in np.quantile(columns[:, j].astype(np.float64), levels).astype(np.float32))
        for j in range(columns.shape[1])
    )  # fmt: skip


def _with_label_scale(task: Task, train_labels: torch.Tensor) -> Task:
    """A regression task with the train split's label mean and std (std 1 when undefined or 0).
    Computed with numpy, single-threaded: torch's reductions split the work by its thread count,
    so a worker with other threads (a Ray task gets one) would get other last bits, and the study
    would refuse it as data that changed."""
    if task.kind.probability:
        return task
    values = train_labels.numpy()
    known = values[~np.isnan(values)].astype(np.float64)
    if known.size == 0:
        return task
    mean, std = float(np.mean(known)), float(np.std(known))
    return replace(task, shift=mean, scale=std if std > 0 and math.isfinite(std) else 1.0)


def joint_labels(labels: np.ndarray, tasks: Sequence[Mapping[str, Any]], where: str) -> np.ndarray:
    """Labels ``[N, T]`` (file order) with each dependent task's column made its joint label: a
    child given only on its parent's positives (empty elsewhere) gets 0 where the parent is 0,
    so "0/1 on every row" and "only on the parent's positives" mean the same. A positive child on
    a negative parent is a ``DataError`` with the count of such rows and the first one."""
    names = [t["name"] for t in tasks]
    for k, task in enumerate(tasks):
        if task.get("depends_on") is None:
            continue
        parent = labels[:, names.index(task["depends_on"])]
        child = labels[:, k]
        wrong = np.flatnonzero((child == 1) & (parent == 0))
        if len(wrong):
            raise DataError(
                f"{where}: task '{task['name']}' depends on '{task['depends_on']}' but is 1 where '{task['depends_on']}' is 0 "
                f"on {len(wrong):,} rows (first: row {int(wrong[0]) + 1}); a dependent task's positives must be its parent's"
            )
        labels[:, k] = np.where(np.isnan(child) & (parent == 0), np.float32(0.0), child)
    return labels


def from_frames(
    frames: dict[str, Any],
    labels: dict[str, np.ndarray],
    categorical: list[str],
    numeric: list[str],
    *,
    tasks: list[Any],
    log1p: list[str] = (),
    min_count: int = 1,
    hash_buckets: dict[str, int] | None = None,
    lists: dict[str, dict[str, Any]] | None = None,
    info: dict[str, Any] | None = None,
    where: str = "data",
) -> Dataset:
    """Fit preprocessing on ``frames["train"]``, transform every split and check the labels."""
    pre = Preprocessor.fit(
        frames["train"], categorical, numeric, log1p=log1p, min_count=min_count, hash_buckets=hash_buckets, lists=lists, where=where
    )
    splits = {}
    for name in SPLITS:
        cat, num = pre.transform(frames[name], where)
        splits[name] = Split.from_numpy(cat, num, labels[name])
    schema = Schema(tuple(categorical), pre.vocab_sizes, tuple(numeric), tuple(tasks), lists=pre.list_features)
    dataset = Dataset(schema, splits["train"], splits["val"], splits["test"], pre, dict(info or {}))
    dataset.check_labels(where)
    return dataset
