"""What PLE exists to fix, measured: MTL gain over single-task baselines and its labels.

The PLE paper's MTL gain of a task is metric_MTL - metric_single for metrics to maximise (AUC) and
metric_single - metric_MTL for metrics to minimise (RMSE), so a positive gain is always better.
A config is labelled ``gain`` when no task is worse than single-task, ``negative transfer`` when
every task is worse, and ``seesaw`` when some are better and some worse.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from ple_search.data.schema import signed

GAIN, SEESAW, NEGATIVE = "gain", "seesaw", "negative transfer"


def mtl_gain(mtl: float, single: float, direction: str) -> float:
    """Positive when multi-task beats single-task, whatever the metric's direction."""
    return signed(mtl - single, direction)


def transfer_label(gains: Sequence[float]) -> str:
    """``gain`` (no task worse), ``negative transfer`` (every task worse) or ``seesaw``."""
    if all(g >= 0 for g in gains):
        return GAIN
    if all(g < 0 for g in gains):
        return NEGATIVE
    return SEESAW


def gains(mtl: Mapping[str, float], single: Mapping[str, float], directions: Mapping[str, str]) -> dict[str, float]:
    """Per-task gains for the tasks that have a baseline."""
    return {t: mtl_gain(mtl[t], single[t], directions[t]) for t in single if mtl.get(t) is not None}
