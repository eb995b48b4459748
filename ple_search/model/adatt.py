"""AdaTT: Adaptive Task-to-Task Fusion (Li et al., KDD 2023), as a ``MultiTaskModel``.

Each level has task-specific experts (``experts_per_task`` per task, reading that task's input)
and shared experts (reading the shared input). A fusion unit per task (and, below the last level,
one for the shared branch) mixes *every* expert of the level with an input-dependent gate, and
adds the paper's linear residual over its own experts: learned weights on each of them (all 1
where every unit owns one expert). So a task can take as much from another task's experts as
helps it, where PLE's task gates see only their own and the shared ones.

All experts of a level run as one grouped MLP over ``[E, B, d]`` (task k's expert j at
``k*P + j``, the shared ones last), all gates as one grouped layer; the fusion is a batched sum:
no Python loop over experts or tasks in ``forward``. Expert type (``mlp``/``cross``), gate type
(softmax/DSelect-k) and embedding sharing are those of PLE.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from ple_search.model.base import MultiTaskModel, network_config
from ple_search.model.hparams import PLEConfig
from ple_search.model.towers import make_towers
from ple_search.model.layers import CrossStack, Gate, GroupedLinear, GroupedMLP, expert_order, mix, owner_mask


class FusionLevel(nn.Module):
    """One AdaTT level: ``inputs [M_in, B, d]`` (the T tasks', then the shared one where there are
    shared experts) to fused outputs ``[M_out, B, d']`` (T, plus the shared unit below the last level)."""

    def __init__(self, in_dim: int, num_tasks: int, config: PLEConfig, shared_unit: bool) -> None:
        super().__init__()
        t, p, s = num_tasks, config.experts_per_task, config.shared_experts
        self.num_tasks, self.experts_per_task, self.shared_experts = t, p, s
        experts = t * p + s
        self.units = t + 1 if shared_unit and s else t
        # which input each expert reads: task k's experts task k's, the shared ones the shared input
        self.register_buffer("expert_input", torch.tensor([k for k in range(t) for _ in range(p)] + [t] * s), persistent=False)
        self.cross = CrossStack(experts, in_dim, config.cross_layers, config.cross_rank) if config.expert_type == "cross" else None
        self.experts = GroupedMLP(experts, [in_dim, *config.expert_hidden], config.activation, float(config.dropout), True)
        self.gate = Gate(config.gate_type, experts, config.gate_k, self.units)
        self.gates = None if self.gate.sparse else GroupedMLP(self.units, [in_dim, *config.gate_hidden, experts], config.activation, 0.0, False)
        order = expert_order(t, p, s)
        owned = owner_mask(order, t, self.units, shared_too=False)  # owned[u, e] = 1 for unit u's own experts
        self.register_buffer("owned", owned, persistent=False)
        counts = owned.sum(1)
        # the linear residual: learned weights on each unit's own experts, or 1 where each owns one
        self.native = nn.Parameter(torch.empty(self.units, experts).uniform_(-1, 1) / counts.clamp_min(1).sqrt()[:, None]) if bool((counts > 1).any()) else None
        self.all_forward = config.embedding_sharing == "shared_and_specific"
        if self.all_forward:  # STEM: a task unit trains its own and the shared experts, reads the rest
            own = owner_mask(order, t, self.units, shared_too=True)
            if self.units > t:
                own[t] = 1  # the shared unit trains every expert
            self.register_buffer("own", own, persistent=False)
        self.has_shared_input = s > 0

    def gate_inputs(self, inputs: Tensor) -> Tensor:
        """Each unit's gate input ``[U, B, d]``: its own input (STEM: plus the shared input)."""
        unit_in = inputs[: self.units]
        if self.all_forward and self.has_shared_input:
            unit_in = torch.cat([unit_in[: self.num_tasks] + inputs[self.num_tasks], unit_in[self.num_tasks :]])
        return unit_in

    def weights(self, inputs: Tensor) -> Tensor:
        """Gate weights ``[U, B, E]`` (``[U, 1, E]`` for static DSelect-k gates)."""
        return self.gate(None if self.gates is None else self.gates(self.gate_inputs(inputs)))

    def forward(self, inputs: Tensor) -> Tensor:
        expert_in = inputs.index_select(0, self.expert_input)  # [E, B, d]
        if self.cross is not None:
            expert_in = self.cross(expert_in)
        out = self.experts(expert_in)  # [E, B, d']
        gates = self.weights(inputs).transpose(1, 2).unsqueeze(-1)  # [U, E, B, 1]
        fused = mix(gates, out, self.own if self.all_forward else None)
        native = self.owned if self.native is None else self.native * self.owned
        return fused + mix(native, out)


class AdaTT(MultiTaskModel):
    """AdaTT over a dense input; ``forward(x[B, D]) -> [B, num_tasks]`` raw outputs."""

    def __init__(
        self, input_dim: int, num_tasks: int, *, config: PLEConfig | None = None, cascade: Sequence[tuple[int, int]] = (), **hparams: Any
    ) -> None:
        super().__init__()
        config = network_config("adatt", "AdaTT", input_dim, num_tasks, config, hparams)
        self.input_dim, self.num_tasks = input_dim, num_tasks
        self.grouped = config.embedding_sharing != "shared"
        self.has_shared = config.shared_experts > 0
        hidden = config.expert_hidden[-1]
        self.levels = nn.ModuleList(
            FusionLevel(input_dim if i == 0 else hidden, num_tasks, config, shared_unit=i < config.levels - 1) for i in range(config.levels)
        )
        self.towers = make_towers(num_tasks, hidden, config, cascade)

    def _inputs(self, x: Tensor) -> Tensor:
        """Level 0's inputs ``[T(+1), B, D]``: ``x`` for every unit, or the embedding groups."""
        units = self.num_tasks + (1 if self.has_shared else 0)
        return x[:units] if self.grouped else x.expand(units, -1, -1)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Every level: each task's fusion reaches every expert."""
        return (p for p in self.levels.parameters() if p.requires_grad)

    def last_shared_layer(self) -> tuple[nn.Parameter, slice] | None:
        """The last level's last expert layer (every task's fusion reads every expert)."""
        linears = [m for m in self.levels[-1].experts.layers if isinstance(m, GroupedLinear)]
        return linears[-1].weight, slice(None)

    @torch.no_grad()
    def gate_usage(self, x: Tensor) -> list[dict[str, Tensor | None]]:
        """Per level, each task unit's mean gate weight on every expert ``[T, E]`` and the shared
        unit's ``[E]`` (None at the last level)."""
        usage, inputs = [], self._inputs(x)
        for level in self.levels:
            weights = level.weights(inputs).mean(1)  # [U, E]
            usage.append({"task": weights[: self.num_tasks], "shared": weights[self.num_tasks] if level.units > self.num_tasks else None})
            inputs = level(inputs)
        return usage

    def gate_experts(self) -> list[tuple[list[list[tuple[int | None, int]]], list[tuple[int | None, int]] | None]]:
        out = []
        for level in self.levels:
            every = expert_order(level.num_tasks, level.experts_per_task, level.shared_experts)
            out.append(([every] * level.num_tasks, every if level.units > level.num_tasks else None))
        return out

    def forward(self, x: Tensor) -> Tensor:
        inputs = self._inputs(x)
        for level in self.levels:
            inputs = level(inputs)
        return self.towers(inputs[: self.num_tasks]).squeeze(-1).transpose(0, 1)
