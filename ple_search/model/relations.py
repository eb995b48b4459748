"""Task relations: how a dependent task's network output (``Task.depends_on``: a conversion seen
only after a click) becomes its two served outputs, the joint probability over every row (pCTCVR
= p(click and convert)) and the conditional one given the parent (pCVR = p(convert | click)), and
what its loss compares. One class per relation, registered by ``name`` in ``RELATIONS`` (the
``task_relation`` hyperparameter); a new relation is one class here plus its test.

* ``independent``: the output is the conditional logit, trained on the parent's positives only
  (what a CVR model trained on clicked rows does, selection bias included); joint = parent x it.
* ``esmm`` (Ma et al., SIGIR 2018): the same outputs, but the loss is on the joint over every row,
  so the conditional model learns on the entire space it is served on.
* ``aitm`` (Xi et al., KDD 2021): the output is the joint logit itself (the towers pass
  information along the cascade, ``model.towers``: ``transfer``), trained on every row, with the
  behavioural calibrator ``max(p_child - p_parent, 0)`` added to its loss; conditional = joint / parent.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from ple_search.model.hparams import TASK_RELATIONS

_LOG_ONE = -1e-6  # log-probabilities are kept below this, so log(1 - p) stays finite


def logit_of_log(log_p: Tensor) -> Tensor:
    """The logit of a probability given as its log: ``log p - log(1 - p)``."""
    log_p = log_p.clamp(max=_LOG_ONE)
    return log_p - torch.log1p(-torch.exp(log_p))


class TaskRelation:
    """The base: the joint and conditional logits from a dependent task's output; its loss on the
    joint column against its label on every row; no calibrator; plain towers."""

    name: ClassVar[str]
    transfer: ClassVar[bool] = False  # the towers pass the parent's representation to the child (AITM)

    def outputs(self, child: Tensor, parent_logit: Tensor) -> tuple[Tensor, Tensor]:
        """``[B]`` child output and parent (joint) logit -> ``[B]`` joint and conditional logits."""
        raise NotImplementedError

    def target(self, joint: Tensor, conditional: Tensor, label: Tensor, parent_label: Tensor) -> tuple[Tensor, Tensor]:
        """The ``[B]`` output and label the child's loss compares (NaN label: not in the task)."""
        return joint, label

    def calibration(self, p_child: Tensor, p_parent: Tensor) -> Tensor | None:
        """A term added to the child's loss, or None."""
        return None


class Independent(TaskRelation):
    name = "independent"

    def outputs(self, child: Tensor, parent_logit: Tensor) -> tuple[Tensor, Tensor]:
        return logit_of_log(F.logsigmoid(parent_logit) + F.logsigmoid(child)), child

    def target(self, joint: Tensor, conditional: Tensor, label: Tensor, parent_label: Tensor) -> tuple[Tensor, Tensor]:
        return conditional, torch.where(parent_label == 1, label, torch.full_like(label, float("nan")))


class ESMM(TaskRelation):
    name = "esmm"

    def outputs(self, child: Tensor, parent_logit: Tensor) -> tuple[Tensor, Tensor]:
        return logit_of_log(F.logsigmoid(parent_logit) + F.logsigmoid(child)), child


class AITM(TaskRelation):
    name = "aitm"
    transfer = True

    def outputs(self, child: Tensor, parent_logit: Tensor) -> tuple[Tensor, Tensor]:
        return child, logit_of_log(F.logsigmoid(child) - F.logsigmoid(parent_logit))

    def calibration(self, p_child: Tensor, p_parent: Tensor) -> Tensor | None:
        return torch.relu(p_child - p_parent).mean()


RELATIONS: dict[str, type[TaskRelation]] = {cls.name: cls for cls in (Independent, ESMM, AITM)}
assert tuple(RELATIONS) == TASK_RELATIONS, "model.hparams.TASK_RELATIONS names these classes"
