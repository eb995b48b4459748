"""The one schema every data source yields: features, vocabulary sizes, tasks and their metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ple_search.core.errors import ConfigError



@dataclass(frozen=True)
class TaskType:
    """What a task type means everywhere: its validation ``metric`` and that metric's
    ``direction``; ``probability``: the model outputs a logit, trained with binary cross-entropy
    and served as a probability (else a value, trained with MSE on standardised labels, served in
    the label's units); ``reference``: how the hypervolume's worst sensible value is found (AUC
    0.5, or the RMSE of predicting the train mean)."""

    name: str
    metric: str
    direction: str
    probability: bool


# The task types, one entry each: a new type is one entry here plus its loss, metric and test.
TASK_TYPES: dict[str, TaskType] = {
    "binary": TaskType("binary", metric="auc", direction="maximize", probability=True),
    "regression": TaskType("regression", metric="rmse", direction="minimize", probability=False),
}
DIRECTIONS = {"maximize": 1.0, "minimize": -1.0}  # the sign that makes larger better


def signed(value: float, direction: str) -> float:
    """``value`` with the sign that makes larger better (AUC as is, RMSE negated)."""
    return DIRECTIONS[direction] * value


@dataclass(frozen=True)
class Task:
    """A prediction target: ``binary`` (BCE, AUC, maximise) or ``regression`` (MSE, RMSE, minimise).

    Regression targets are standardised with the train split's mean and standard deviation
    (``shift``, ``scale``): a label with mean 70 and std 12 would otherwise take a network that
    starts near 0 most of its epochs to reach, and losses of different tasks would differ by
    orders of magnitude. Predictions and metrics stay in the label's own units."""

    name: str
    type: str
    shift: float = 0.0  # regression: the train split's label mean; the model predicts
    scale: float = 1.0  # (label - shift) / scale and reports shift + scale * output
    # A binary task whose positives are a subset of another binary task's (conversion after a
    # click): its label is the joint one (0 wherever the parent is 0), see ``Schema.parents``.
    depends_on: str | None = None

    @property
    def kind(self) -> TaskType:
        return TASK_TYPES[self.type]

    @property
    def metric(self) -> str:
        return self.kind.metric

    @property
    def direction(self) -> str:
        return self.kind.direction

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "type": self.type}
        if not self.kind.probability:
            data.update(shift=self.shift, scale=self.scale)
        if self.depends_on is not None:
            data["depends_on"] = self.depends_on
        return data


def conditional_name(task: Task) -> str:
    """The output and metric of a dependent task given its parent: ``conversion@click``."""
    return f"{task.name}@{task.depends_on}"


@dataclass(frozen=True)
class ListFeature:
    """A list-valued categorical column as the model sees it (a user's recent items, an item's
    tags): ``max_len`` slots of codes into a table of ``vocab_size`` rows (0 = empty slot, 1 =
    other), after the categorical codes, pooled into one embedding."""

    name: str
    max_len: int
    vocab_size: int


@dataclass(frozen=True)
class Schema:
    """Feature names, categorical vocabulary sizes (code 0 is "other") and tasks."""

    categorical: tuple[str, ...] = ()
    vocab_sizes: tuple[int, ...] = ()
    numeric: tuple[str, ...] = ()
    tasks: tuple[Task, ...] = field(default_factory=tuple)
    # Per numeric feature, its train-split quantiles at levels 0, 1/64, ..., 1 (of the standardised
    # values the model sees): the bin edges of the quantile and piecewise-linear encodings.
    numeric_quantiles: tuple[tuple[float, ...], ...] = ()
    lists: tuple[ListFeature, ...] = ()  # list-valued columns, their slots after the categorical codes

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def parents(self) -> tuple[int, ...]:
        """Each task's parent task index, -1 for none (parents come before their children)."""
        names = self.task_names
        return tuple(names.index(t.depends_on) if t.depends_on is not None else -1 for t in self.tasks)

    @property
    def dependent(self) -> list[Task]:
        """The tasks with a parent, in order: each has a conditional output after the tasks'."""
        return [t for t in self.tasks if t.depends_on is not None]

    @property
    def output_names(self) -> list[str]:
        """What the model serves: every task (the joint probability for a dependent task), then
        each dependent task's conditional probability given its parent (``conversion@click``)."""
        return [*self.task_names, *(conditional_name(t) for t in self.dependent)]

    def tasks_named(self, names: Sequence[str], where: str = "the study") -> list[Task]:
        """The tasks named by ``names``, in that order (each must be a task, or a dependent task's
        conditional output ``conversion@click``, an AUC over the parent's positives; else a
        ``ConfigError`` naming ``where``)."""
        conditional = {conditional_name(t): Task(conditional_name(t), "binary") for t in self.dependent}
        unknown = [n for n in names if n not in self.task_names and n not in conditional]
        if unknown:
            raise ConfigError(f"{where}: objective '{unknown[0]}' is not a task of the dataset; tasks: {self.output_names}")
        return [self.tasks[self.task_names.index(n)] if n in self.task_names else conditional[n] for n in names]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, stored in checkpoints and study attributes."""
        return {
            "categorical": list(self.categorical),
            "vocab_sizes": list(self.vocab_sizes),
            "numeric": list(self.numeric),
            "tasks": [t.to_dict() for t in self.tasks],
            **({"numeric_quantiles": [list(q) for q in self.numeric_quantiles]} if self.numeric_quantiles else {}),
            **({"lists": [{"name": f.name, "max_len": f.max_len, "vocab_size": f.vocab_size} for f in self.lists]} if self.lists else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | "Schema") -> "Schema":
        if isinstance(data, Schema):
            return data
        return cls(
            categorical=tuple(data.get("categorical", ())),
            vocab_sizes=tuple(int(v) for v in data.get("vocab_sizes", ())),
            numeric=tuple(data.get("numeric", ())),
            tasks=tuple(
                Task(t["name"], t["type"], float(t.get("shift", 0.0)), float(t.get("scale", 1.0)), t.get("depends_on")) for t in data["tasks"]
            ),
            numeric_quantiles=tuple(tuple(float(v) for v in q) for q in data.get("numeric_quantiles", ())),
            lists=tuple(ListFeature(str(f["name"]), int(f["max_len"]), int(f["vocab_size"])) for f in data.get("lists", ())),
        )
