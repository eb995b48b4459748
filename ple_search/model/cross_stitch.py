"""Cross-stitch networks (Misra et al., CVPR 2016; one of the MMoE paper's baselines) as a
``MultiTaskModel``: one MLP column per task, and after every hidden layer a cross-stitch unit that
mixes the tasks' activations with a learned ``[T, T]`` matrix, so each task decides how much of
the others' features it takes; a tower per task on top.

All columns run side by side as grouped layers (one ``baddbmm`` per layer for every task) and a
unit is one matmul over the task axis: no Python loop over tasks in ``forward``. The mixing starts
near the identity (0.9 on the diagonal, 0.1 shared out among the other tasks), as in the paper.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from ple_search.model.base import MultiTaskModel, network_config
from ple_search.model.hparams import PLEConfig
from ple_search.model.towers import make_towers
from ple_search.model.layers import GroupedLinear, GroupedMLP, make_activation

SELF_WEIGHT = 0.9


class CrossStitchUnit(nn.Module):
    """``[T, B, d] -> [T, B, d]``: task k's output is ``sum_j alpha[k, j] * x_j``."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        other = (1 - SELF_WEIGHT) / (num_tasks - 1) if num_tasks > 1 else 0.0
        alpha = torch.full((num_tasks, num_tasks), other)
        alpha.fill_diagonal_(SELF_WEIGHT if num_tasks > 1 else 1.0)
        self.alpha = nn.Parameter(alpha)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("kj,jbd->kbd", self.alpha, x)


class CrossStitch(MultiTaskModel):
    """Per-task columns of widths ``expert_hidden`` with a cross-stitch unit after each layer, then
    towers (``tower_hidden`` then one output); ``forward(x[B, D]) -> [B, num_tasks]`` raw outputs."""

    def __init__(
        self, input_dim: int, num_tasks: int, *, config: PLEConfig | None = None, cascade: Sequence[tuple[int, int]] = (), **hparams: Any
    ) -> None:
        super().__init__()
        config = network_config("cross_stitch", "cross_stitch", input_dim, num_tasks, config, hparams)
        self.input_dim, self.num_tasks = input_dim, num_tasks
        widths = [input_dim, *config.expert_hidden]
        self.columns = nn.ModuleList(GroupedLinear(num_tasks, a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.units = nn.ModuleList(CrossStitchUnit(num_tasks) for _ in config.expert_hidden)
        self.activation = make_activation(config.activation)
        self.dropout = nn.Dropout(float(config.dropout)) if config.dropout > 0 else nn.Identity()
        self.towers = make_towers(num_tasks, widths[-1], config, cascade)
        self.widths = widths

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """The columns and the units: through the units every task's loss reaches every column."""
        return (p for p in [*self.columns.parameters(), *self.units.parameters()] if p.requires_grad)

    def last_shared_layer(self) -> tuple[nn.Parameter, slice] | None:
        """The last column layer's weight (every task reaches all of it through the units)."""
        return self.columns[-1].weight, slice(None)

    def extra_multiply_adds(self) -> int:
        """Each unit mixes T activations of width d for each of T tasks: T * T * d per sample."""
        return sum(self.num_tasks * self.num_tasks * d for d in self.widths[1:]) + super().extra_multiply_adds()

    def forward(self, x: Tensor) -> Tensor:
        h = x.expand(self.num_tasks, -1, -1)  # [T, B, D]: every column reads the input
        for layer, unit in zip(self.columns, self.units):
            h = unit(self.dropout(self.activation(layer(h))))
        return self.towers(h).squeeze(-1).transpose(0, 1)
