"""The task towers every architecture ends in: ``[T, B, d] -> [T, B, 1]``, one MLP per task run
side by side; under ``task_relation: aitm`` with dependent tasks, AITM's adaptive information
transfer between them (Xi et al., KDD 2021).

AIT: the tower of a dependent task t takes, besides its own representation ``q_t``, what its
parent's tower learned, ``p = relu(W z_parent + b)`` (``z_parent`` the parent's output of the same
unit, or its own ``q`` at the root), and mixes the two by self-attention:
``z_t = sum_{u in {p, q_t}} w_u h1(u)``, ``w = softmax_u(<h2(u), h3(u)> / sqrt(k))``. The
loop runs over the cascade's links (each needs its parent's result), never over experts.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ple_search.model.hparams import PLEConfig
from ple_search.model.layers import DenseLinear, GroupedLinear, GroupedMLP
from ple_search.model.relations import RELATIONS


def make_towers(num_tasks: int, in_dim: int, config: PLEConfig, cascade: Sequence[tuple[int, int]] = ()) -> nn.Module:
    """The towers of a network: plain grouped MLPs, or ``TransferTowers`` for AITM with a cascade
    of ``(child, parent)`` task indices."""
    if RELATIONS[config.task_relation].transfer and cascade:
        return TransferTowers(num_tasks, in_dim, config, cascade)
    return GroupedMLP(num_tasks, [in_dim, *config.tower_hidden, 1], config.activation, float(config.dropout), False)


class InformationTransfer(nn.Module):
    """One AIT unit: the parent's output ``[B, k]`` and the child's representation ``[B, k]`` to
    the child's fused representation ``[B, k]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.transfer = DenseLinear(dim, dim)  # p = relu(W z_parent + b): what the parent passes on
        self.values, self.keys, self.queries = DenseLinear(dim, dim), DenseLinear(dim, dim), DenseLinear(dim, dim)  # h1, h2, h3

    def forward(self, parent: Tensor, own: Tensor) -> Tensor:
        stacked = torch.stack([torch.relu(self.transfer(parent)), own], 1)  # [B, 2, k]
        flat = stacked.flatten(0, 1)
        scores = (self.keys(flat) * self.queries(flat)).sum(-1).unflatten(0, (-1, 2)) / math.sqrt(self.dim)  # [B, 2]
        weights = torch.softmax(scores, dim=1).unsqueeze(-1)
        return (weights * self.values(flat).unflatten(0, (-1, 2))).sum(1)


class TransferTowers(nn.Module):
    """Towers with an AIT unit on each (child, parent) link: ``[T, B, d] -> [T, B, 1]``."""

    def __init__(self, num_tasks: int, in_dim: int, config: PLEConfig, cascade: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self.cascade = [(int(c), int(p)) for c, p in cascade]
        hidden = list(config.tower_hidden)
        self.hidden = GroupedMLP(num_tasks, [in_dim, *hidden], config.activation, float(config.dropout), True) if hidden else None
        width = hidden[-1] if hidden else in_dim
        self.transfers = nn.ModuleList(InformationTransfer(width) for _ in self.cascade)
        self.out = GroupedLinear(num_tasks, width, 1)
        self.width = width

    def representations(self, h: Tensor) -> list[Tensor]:
        """Each task's representation after the transfers (``z_t``), ``[B, k]`` each."""
        q = self.hidden(h) if self.hidden is not None else h
        z = list(q.unbind(0))
        for (child, parent), unit in zip(self.cascade, self.transfers):
            z[child] = unit(z[parent], q[child])
        return z

    def extra_multiply_adds(self) -> int:
        """Per link, the two attention scores (k each) and the weighted sum of two values (2k)."""
        return len(self.cascade) * 4 * self.width

    def forward(self, h: Tensor) -> Tensor:
        return self.out(torch.stack(self.representations(h)))
