"""The output head, written once for training and serving: raw model outputs to task units, and
task units to what serving returns (probabilities for binary tasks, values for regression ones).

Dependent tasks (``Task.depends_on``: a conversion observed only after a click) get two outputs:
the task's own column is the joint probability over every row (pCTCVR = p(click and convert)),
and a column after the tasks' is the conditional one given the parent (pCVR = p(convert | click)).
How the network's raw output of a dependent task relates to them is the task relation:

* ``independent``: the raw output is the conditional logit, trained on the parent's positives only
  (what a CVR model trained on clicked rows does, selection bias included); joint = parent x it.
* ``esmm`` (Ma et al., SIGIR 2018): the same outputs, but the loss is on the joint over every row,
  so the conditional model learns on the entire space it is served on.
* ``aitm`` (Xi et al., KDD 2021): the raw output is the joint logit itself (the towers pass
  information along the cascade, ``model.towers``), trained on every row, with the behavioural
  calibrator ``max(p_child - p_parent, 0)`` added to its loss; conditional = joint / parent.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ple_search.data.schema import Task

RELATIONS = ("independent", "esmm", "aitm")
_LOG_ONE = -1e-6  # log-probabilities are kept below this, so log(1 - p) stays finite


def _logit_of_log(log_p: Tensor) -> Tensor:
    """The logit of a probability given as its log: ``log p - log(1 - p)``."""
    log_p = log_p.clamp(max=_LOG_ONE)
    return log_p - torch.log1p(-torch.exp(log_p))


class OutputHead(nn.Module):
    """``[B, T]`` raw outputs -> ``forward``: ``[B, T + D]`` logits (binary) and values in the
    label's units (regression: the network predicts ``(label - shift) / scale``, see ``Task``),
    the T tasks' (joint for dependent tasks), then the D dependent tasks' conditional logits ->
    ``serve``: probabilities and values. Its buffers come from the schema, not the checkpoint."""

    def __init__(self, tasks: Sequence[Task], relation: str = "esmm") -> None:
        super().__init__()
        names = [t.name for t in tasks]
        self.num_tasks = len(tasks)
        self.relation = relation
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
        for child, parent in self.cascade:
            log_parent = nn.functional.logsigmoid(columns[parent])
            if self.relation == "aitm":
                conditional.append(_logit_of_log(nn.functional.logsigmoid(raw[:, child]) - log_parent))
            else:
                conditional.append(raw[:, child])
                columns[child] = _logit_of_log(log_parent + nn.functional.logsigmoid(raw[:, child]))
        return torch.stack(columns + conditional, 1)

    def serve(self, out: Tensor) -> Tensor:
        """What serving returns from ``forward``'s outputs: probabilities and values."""
        return torch.where(self.serves_probability, torch.sigmoid(out), out)

    def training_targets(self, out: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The ``[B, T]`` outputs and labels each task's loss compares: the task columns as they
        are, except under ``independent`` a dependent task's conditional logit against its label
        on the parent's positive rows only (NaN, i.e. not in the task, elsewhere)."""
        if self.relation != "independent" or not self.cascade:
            return out[:, : self.num_tasks], labels
        outputs, targets = list(out[:, : self.num_tasks].unbind(1)), list(labels.unbind(1))
        for i, (child, parent) in enumerate(self.cascade):
            outputs[child] = out[:, self.num_tasks + i]
            targets[child] = torch.where(labels[:, parent] == 1, labels[:, child], torch.full_like(labels[:, child], float("nan")))
        return torch.stack(outputs, 1), torch.stack(targets, 1)

    def calibration(self, out: Tensor) -> Tensor | None:
        """AITM's behavioural calibrator per task ``[T]``: the mean of ``max(p_child - p_parent,
        0)`` over the rows for each dependent task, 0 for the others; None for other relations."""
        if self.relation != "aitm" or not self.cascade:
            return None
        terms = [out.new_zeros(()) for _ in range(self.num_tasks)]
        p = torch.sigmoid(out[:, : self.num_tasks])
        for child, parent in self.cascade:
            terms[child] = torch.relu(p[:, child] - p[:, parent]).mean()
        return torch.stack(terms)
