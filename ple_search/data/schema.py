"""The one schema every data source yields: features, vocabulary sizes, tasks and their metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

TASK_TYPES = ("binary", "regression")


@dataclass(frozen=True)
class Task:
    """A prediction target: ``binary`` (BCE, AUC, maximise) or ``regression`` (MSE, RMSE, minimise)."""

    name: str
    type: str

    @property
    def metric(self) -> str:
        return "auc" if self.type == "binary" else "rmse"

    @property
    def direction(self) -> str:
        return "maximize" if self.type == "binary" else "minimize"


@dataclass(frozen=True)
class Schema:
    """Feature names, categorical vocabulary sizes (code 0 is "other") and tasks."""

    categorical: tuple[str, ...] = ()
    vocab_sizes: tuple[int, ...] = ()
    numeric: tuple[str, ...] = ()
    tasks: tuple[Task, ...] = field(default_factory=tuple)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, stored in checkpoints and study attributes."""
        return {
            "categorical": list(self.categorical),
            "vocab_sizes": list(self.vocab_sizes),
            "numeric": list(self.numeric),
            "tasks": [{"name": t.name, "type": t.type} for t in self.tasks],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | "Schema") -> "Schema":
        if isinstance(data, Schema):
            return data
        return cls(
            categorical=tuple(data.get("categorical", ())),
            vocab_sizes=tuple(int(v) for v in data.get("vocab_sizes", ())),
            numeric=tuple(data.get("numeric", ())),
            tasks=tuple(Task(t["name"], t["type"]) for t in data["tasks"]),
        )
