"""Per-task metrics in torch: ROC AUC (ties averaged, as scikit-learn) and RMSE, NaN labels dropped."""

from __future__ import annotations

import math
import statistics
from typing import Sequence

import torch
from torch import Tensor

from ple_search.data.schema import Task, conditional_name


def roc_auc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve via the rank-sum statistic; NaN when only one class is present."""
    labels = labels.to(torch.float64)
    n_pos = float(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    average_rank = ends - (counts.to(torch.float64) - 1) / 2
    pos_rank_sum = float((average_rank[inverse] * labels[order]).sum())
    return (pos_rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def rmse(predictions: Tensor, targets: Tensor) -> float:
    """Root mean squared error; NaN for an empty set."""
    if targets.numel() == 0:
        return math.nan
    diff = predictions.to(torch.float64) - targets.to(torch.float64)
    return float(torch.sqrt(torch.mean(diff * diff)))


def task_metrics(outputs: Tensor, labels: Tensor, tasks: Sequence[Task]) -> dict[str, float]:
    """``{task_name: metric}`` over each task's labelled rows (the head's outputs ``[N, T + D]``):
    a dependent task's own metric is on its joint output over every row; its conditional output
    gets ``{child}@{parent}``, the AUC over the parent's positive rows (``model.head``)."""
    result = {}
    for k, task in enumerate(tasks):
        known = ~torch.isnan(labels[:, k])
        out, y = outputs[known, k].float(), labels[known, k]
        result[task.name] = roc_auc(out, y) if task.kind.probability else rmse(out, y)
    names = [t.name for t in tasks]
    for i, task in enumerate(t for t in tasks if t.depends_on is not None):
        k, parent = names.index(task.name), names.index(task.depends_on)
        rows = (labels[:, parent] == 1) & ~torch.isnan(labels[:, k])
        result[conditional_name(task)] = roc_auc(outputs[rows, len(tasks) + i].float(), labels[rows, k])
    return result


def summarize(runs: Sequence[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per-key mean and population standard deviation over runs (0 for a single run)."""
    keys = runs[0].keys()
    mean = {k: statistics.fmean(r[k] for r in runs) for k in keys}
    std = {k: statistics.pstdev([r[k] for r in runs]) if len(runs) > 1 else 0.0 for k in keys}
    return mean, std
