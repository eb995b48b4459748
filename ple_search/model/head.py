"""The output head, written once for training and serving: raw model outputs to task units, and
task units to what serving returns (probabilities for binary tasks, values for regression ones).

Dependent tasks (``Task.depends_on``: a conversion observed only after a click) get two outputs:
the task's own column is the joint probability over every row, and a column after the tasks' is
the conditional one given the parent. How the network's output of a dependent task relates to
them, and what its loss compares, is its task relation (``model.relations``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ple_search.data.schema import Task
from ple_search.model.relations import RELATIONS


class OutputHead(nn.Module):
    """``[B, T]`` raw outputs -> ``forward``: ``[B, T + D]`` logits (binary) and values in the
    label's units (regression: the network predicts ``(label - shift) / scale``, see ``Task``),
    the T tasks' (joint for dependent tasks), then the D dependent tasks' conditional logits ->
    ``serve``: probabilities and values. Its buffers come from the schema, not the checkpoint."""

    def __init__(self, tasks: Sequence[Task], relation: str = "esmm") -> None:
        super().__init__()
        names = [t.name for t in tasks]
        self.num_tasks = len(tasks)
        self.relation = RELATIONS[relation]()
        self.cascade = [(k, names.index(t.depends_on)) for k, t in enumerate(tasks) if t.depends_on is not None]  # (child, parent)
        binary = [t.kind.probability for t in tasks]
        self.register_buffer("is_binary", torch.tensor(binary), persistent=False)
        self.register_buffer("serves_probability", torch.tensor(binary + [True] * len(self.cascade)), persistent=False)
        self.register_buffer("label_shift", torch.tensor([t.shift for t in tasks], dtype=torch.float32), persistent=False)
        self.register_buffer("label_scale", torch.tensor([t.scale for t in tasks], dtype=torch.float32), persistent=False)

    def forward(self, raw: Tensor) -> Tensor:
        """Logits (joint for dependent tasks) and values ``[B, T]``, then conditional logits ``[B, D]``."""
        out = raw * self.label_scale + self.label_shift
        if not self.cascade:
            return out
        columns = list(out.unbind(1))  # parents come first, so a parent's joint is ready for its children
        conditional = []
        for child, parent in self.cascade:  # dependent tasks are binary: their column is the raw logit
            columns[child], given = self.relation.outputs(columns[child], columns[parent])
            conditional.append(given)
        return torch.stack(columns + conditional, 1)

    def serve(self, out: Tensor) -> Tensor:
        """What serving returns from ``forward``'s outputs: probabilities and values."""
        return torch.where(self.serves_probability, torch.sigmoid(out), out)

    def training_targets(self, out: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The ``[B, T]`` outputs and labels each task's loss compares: the task columns as they
        are, and for each dependent task what its relation compares (``TaskRelation.target``)."""
        if not self.cascade:
            return out[:, : self.num_tasks], labels
        outputs, targets = list(out[:, : self.num_tasks].unbind(1)), list(labels.unbind(1))
        for i, (child, parent) in enumerate(self.cascade):
            outputs[child], targets[child] = self.relation.target(outputs[child], out[:, self.num_tasks + i], targets[child], labels[:, parent])
        return torch.stack(outputs, 1), torch.stack(targets, 1)

    def calibration(self, out: Tensor) -> Tensor | None:
        """Per task ``[T]``: the relation's calibrator for each dependent task (AITM's mean of
        ``max(p_child - p_parent, 0)``), 0 for the others; None when the relation has none."""
        if not self.cascade:
            return None
        p = torch.sigmoid(out[:, : self.num_tasks])
        terms: list[Tensor] = [out.new_zeros(()) for _ in range(self.num_tasks)]
        found = False
        for child, parent in self.cascade:
            term = self.relation.calibration(p[:, child], p[:, parent])
            if term is not None:
                terms[child], found = term, True
        return torch.stack(terms) if found else None
