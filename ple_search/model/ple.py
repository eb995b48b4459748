"""PLE: Progressive Layered Extraction (Tang et al., RecSys 2020) as a plain ``torch.nn.Module``.

Every group of experts, gates and towers is one stacked weight tensor and runs as one batched
matrix product; at level 0, where every branch reads the same input, the first layers of all
experts and gates are a single matmul. No Python loop runs over experts in ``forward``.

Special cases of the same code: ``levels=1`` is CGC, ``experts_per_task=0`` is (multi-level)
MMoE, ``experts_per_task=0, shared_experts=1`` is a shared-bottom network and ``num_tasks=1``
is a single-task model.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from ple_search.model.base import MultiTaskModel, network_config
from ple_search.model.hparams import PLEConfig
from ple_search.model.towers import make_towers
from ple_search.model.layers import CrossStack, DenseLinear, Gate, GroupedLinear, GroupedMLP, expert_order, make_activation, mix, owner_mask


def _one(logits: Tensor | None) -> Tensor | None:
    """The shared gate's logits as a group of one (None for a static gate)."""
    return None if logits is None else logits.unsqueeze(0)


class Level(nn.Module):
    """One extraction level: per-task experts, shared experts, task gates and a shared gate.

    Expert activations are kept expert-major, ``[E, B, d]`` with task k's expert p at index
    ``k*P + p`` and the shared experts last, so deeper expert layers are one ``bmm``.

    First layers. At level 0 (``shared_input``) every branch reads the same input, so all experts'
    first layers are one ``[in, E*h]`` matmul (``expert_in``; expert e owns columns
    ``[e*h, (e+1)*h)``) and all gates' first layers another (``gate_in``: task gates, then the
    shared gate). At deeper levels task k's experts and gate read task k's input:
    ``task_expert_in`` / ``task_gate_in`` (one group per task) and ``shared_expert_in`` /
    ``shared_gate_in`` for the shared branch.
    """

    def __init__(
        self,
        in_dim: int,
        num_tasks: int,
        experts_per_task: int,
        shared_experts: int,
        expert_hidden: Sequence[int],
        gate_hidden: Sequence[int],
        shared_gate: bool,
        activation: str,
        dropout: float,
        shared_input: bool = False,
        cross_layers: int = 0,
        cross_rank: int = 0,
        gate_type: str = "softmax",
        gate_k: int = 2,
        all_forward: bool = False,
    ) -> None:
        """``cross_layers`` >= 1: cross experts (``CrossStack`` on each expert's input, then its MLP).
        ``gate_type``/``gate_k``: softmax or DSelect-k gates (``layers.Gate``). ``all_forward``
        (STEM): task k's gate reads task k's input plus the shared input and mixes every expert,
        the other tasks' experts with their gradient stopped."""
        super().__init__()
        t, p, s = num_tasks, experts_per_task, shared_experts  # the paper's K, m_k, m_s
        self.num_tasks, self.experts_per_task, self.shared_experts = t, p, s
        self.hidden = expert_hidden[0]  # width of every expert's first layer
        self.shared_input = shared_input
        self.activation = make_activation(activation)
        # First-layer outputs are fresh matmul results: activating them in place saves a pass.
        self.activation_inplace = make_activation(activation, inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.all_forward = all_forward and p > 0
        task_mixed = t * p + s if self.all_forward else p + s  # the experts task k's gate mixes
        # A gate over a single expert is the identity: it is left out rather than kept untrainable.
        self.task_gate_size = task_mixed if task_mixed > 1 else 0
        self.shared_gate_size = t * p + s if shared_gate and t * p + s > 1 else 0
        self.has_shared_out = shared_gate
        self.task_gate_fn = Gate(gate_type, task_mixed, gate_k, t)
        self.shared_gate_fn = Gate(gate_type, t * p + s, gate_k, 1)
        # softmax gates read the input (first layers below); static DSelect-k gates read none
        self.task_gate_first = (gate_hidden[0] if gate_hidden else task_mixed) if self.task_gate_size and not self.task_gate_fn.sparse else 0
        self.shared_gate_first = (gate_hidden[0] if gate_hidden else t * p + s) if self.shared_gate_size and not self.shared_gate_fn.sparse else 0
        if self.all_forward:  # own[k, e] = 1 for task k's experts and the shared ones
            self.register_buffer("own", owner_mask(expert_order(t, p, s), t, t, shared_too=True), persistent=False)
        gates_width = t * self.task_gate_first + self.shared_gate_first
        self.cross = cross_layers > 0
        if self.cross:  # each expert crosses its own copy of the input: first layers per expert
            self.task_cross = CrossStack(t * p, in_dim, cross_layers, cross_rank) if p else None
            self.task_cross_in = GroupedLinear(t * p, in_dim, self.hidden) if p else None
            self.shared_cross = CrossStack(s, in_dim, cross_layers, cross_rank) if s else None
            self.shared_cross_in = GroupedLinear(s, in_dim, self.hidden) if s else None
        if shared_input:
            if not self.cross:
                self.expert_in = DenseLinear(in_dim, (t * p + s) * self.hidden)
            self.gate_in = DenseLinear(in_dim, gates_width) if gates_width else None
        else:
            if not self.cross:
                self.task_expert_in = GroupedLinear(t, in_dim, p * self.hidden) if p else None
                self.shared_expert_in = DenseLinear(in_dim, s * self.hidden) if s else None
            self.task_gate_in = GroupedLinear(t, in_dim, self.task_gate_first) if self.task_gate_first else None
            self.shared_gate_in = DenseLinear(in_dim, self.shared_gate_first) if self.shared_gate_first else None
        self.task_experts = GroupedMLP(t * p, list(expert_hidden), activation, dropout, True) if p else None
        self.shared_expert_stack = GroupedMLP(s, list(expert_hidden), activation, dropout, True) if s else None
        self.task_gates = GroupedMLP(t, [*gate_hidden, task_mixed], activation, 0.0, False) if self.task_gate_first and gate_hidden else None
        self.shared_gate = GroupedMLP(1, [*gate_hidden, t * p + s], activation, 0.0, False) if self.shared_gate_first and gate_hidden else None

    def first_layers(
        self, task_in: Tensor | None, shared_in: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
        """Activated first expert layers ``[T*P, B, h]`` and ``[S, B, h]``, and raw gate logits
        ``[T, B, g]`` and ``[B, g]`` (None where absent)."""
        experts = self._cross_experts(task_in, shared_in) if self.cross else self._mlp_experts(task_in, shared_in)
        return (*experts, *self._gate_logits(task_in, shared_in))

    def _mlp_experts(self, task_in: Tensor | None, shared_in: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """MLP experts' activated first layers ``[T*P, B, h]`` and ``[S, B, h]``: at level 0 one
        matmul for every expert, deeper one per branch."""
        t, p, s, h = self.num_tasks, self.experts_per_task, self.shared_experts, self.hidden
        if self.shared_input:
            hidden = self.dropout(self.activation_inplace(self.expert_in(shared_in)))
            experts = hidden.unflatten(1, (t * p + s, h)).transpose(0, 1)  # a free view
            return experts[: t * p] if p else None, experts[t * p :] if s else None
        task_h = shared_h = None
        if p:  # [T, B, P*h] -> [T*P, B, h]
            hidden = self.dropout(self.activation_inplace(self.task_expert_in(task_in)))
            task_h = hidden.unflatten(2, (p, h)).permute(0, 2, 1, 3).reshape(t * p, -1, h)
        if s:  # [B, S*h] -> [S, B, h]
            hidden = self.dropout(self.activation_inplace(self.shared_expert_in(shared_in)))
            shared_h = hidden.unflatten(1, (s, h)).transpose(0, 1)
        return task_h, shared_h

    def _cross_experts(self, task_in: Tensor | None, shared_in: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """Cross experts' activated first layers ``[T*P, B, h]`` and ``[S, B, h]``: each expert's
        input (task k's experts read task k's input, shared ones the shared input) through its
        cross layers, then its first MLP layer; one batched op per layer for all experts."""
        t, p, s = self.num_tasks, self.experts_per_task, self.shared_experts
        task_h = shared_h = None
        if p:  # task k's expert j at k*P + j reads task k's input (every expert reads x at level 0)
            x0 = shared_in.expand(t * p, -1, -1) if self.shared_input else task_in.repeat_interleave(p, dim=0)
            task_h = self.dropout(self.activation_inplace(self.task_cross_in(self.task_cross(x0))))
        if s:
            shared_h = self.dropout(self.activation_inplace(self.shared_cross_in(self.shared_cross(shared_in.expand(s, -1, -1)))))
        return task_h, shared_h

    def _gate_logits(self, task_in: Tensor | None, shared_in: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """Raw gate logits ``[T, B, g]`` and ``[B, g]`` (gates read the level's plain input, also
        beside cross experts): at level 0 one matmul for every gate, deeper one per branch."""
        t = self.num_tasks
        task_gates = shared_gate = None
        if self.shared_input:
            if self.gate_in is not None:
                task_logits, shared_gate = self.gate_in(shared_in).split([t * self.task_gate_first, self.shared_gate_first], 1)
                task_gates = task_logits.unflatten(1, (t, -1)).transpose(0, 1) if self.task_gate_first else None
            return task_gates, shared_gate if self.shared_gate_first else None
        if self.task_gate_in is not None:
            task_gates = self.task_gate_in(task_in + shared_in if self.all_forward and shared_in is not None else task_in)
        if self.shared_gate_in is not None:
            shared_gate = self.shared_gate_in(shared_in)
        return task_gates, shared_gate

    def _gate(self, logits: Tensor | None, mlp: GroupedMLP | None, gate: Gate) -> Tensor:
        """Gate weights, expert-major: ``[G, E, B, 1]`` from raw outputs ``[G, B, w]`` (softmax),
        ``[G, E, 1, 1]`` for static DSelect-k gates (``logits`` None)."""
        if mlp is not None and logits is not None:
            logits = mlp(self.activation(logits))
        return gate(logits).transpose(-1, -2).unsqueeze(-1)

    def gate_experts(self) -> tuple[list[list[tuple[int | None, int]]], list[tuple[int | None, int]] | None]:
        """The experts each task gate and the shared gate mix, in their weights' order, as
        ``(owner task or None for shared, index)``."""
        every = expert_order(self.num_tasks, self.experts_per_task, self.shared_experts)
        tasks = [every if self.all_forward else [(owner, j) for owner, j in every if owner in (k, None)] for k in range(self.num_tasks)]
        return tasks, every if self.shared_gate_size else None

    def forward(self, task_in: Tensor | None, shared_in: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Return task outputs ``[T, B, d]`` and the shared output ``[B, d]`` (None at the last level)."""
        t, p, s = self.num_tasks, self.experts_per_task, self.shared_experts
        task_h, shared_h, task_logits, shared_logits = self.first_layers(task_in, shared_in)
        task_experts = self.task_experts(task_h).unflatten(0, (t, p)) if p else None  # [T, P, B, d]
        shared_experts = self.shared_expert_stack(shared_h) if s else None  # [S, B, d]
        if self.all_forward and self.task_gate_size:  # STEM: every expert, the others' detached
            gate = self._gate(task_logits, self.task_gates, self.task_gate_fn)  # [T, T*P+S, B, 1]
            every = task_experts.flatten(0, 1) if not s else torch.cat([task_experts.flatten(0, 1), shared_experts])
            out = mix(gate, every, self.own)
        elif self.task_gate_size:
            gate = self._gate(task_logits, self.task_gates, self.task_gate_fn)  # [T, P+S, B, 1]
            out = 0
            if p:
                out = (gate[:, :p] * task_experts).sum(1)
            if s:
                out = out + (gate[:, p:] * shared_experts).sum(1)
        elif p:
            out = task_experts[:, 0]
        else:
            out = shared_experts.expand(t, -1, -1)
        if not self.has_shared_out:
            return out, None
        if not self.shared_gate_size:
            return out, (task_experts.flatten(0, 1) if p else shared_experts)[0]
        gate = self._gate(_one(shared_logits), self.shared_gate, self.shared_gate_fn)[0]  # [T*P+S, B, 1]
        shared_out = (gate[t * p :] * shared_experts).sum(0)
        if p:
            shared_out = shared_out + (gate[: t * p] * task_experts.flatten(0, 1)).sum(0)
        return out, shared_out


class PLE(MultiTaskModel):
    """Progressive Layered Extraction over a dense input; ``forward(x[B, D]) -> [B, num_tasks]``.

    Per level, task k's gate mixes task k's ``experts_per_task`` experts and the
    ``shared_experts`` shared experts; every level but the last has a shared gate over all
    experts whose output feeds the next level's shared experts. Towers (``tower_hidden`` then
    one output) sit on each task's output of the last level; outputs are raw (logits or values).
    """

    def __init__(
        self, input_dim: int, num_tasks: int, *, config: PLEConfig | None = None, cascade: Sequence[tuple[int, int]] = (), **hparams: Any
    ) -> None:
        """``config``: a validated ``PLEConfig`` (what ``PLEModule`` passes: parsed once), or
        ``hparams``: its model keys (defaults and validation live there).

        Args:
            input_dim: width of the dense input (embeddings and numeric features).
            num_tasks: K, the number of tasks (towers).
            hparams: ``levels`` (N), ``experts_per_task`` (m_k), ``shared_experts`` (m_s),
                ``expert_hidden``, ``gate_hidden``, ``tower_hidden``, ``dropout``, ``activation``.
        """
        super().__init__()
        config = network_config("ple", "PLE", input_dim, num_tasks, config, hparams)
        levels, experts_per_task, shared_experts = config.levels, config.experts_per_task, config.shared_experts
        expert_hidden, gate_hidden, tower_hidden = config.expert_hidden, config.gate_hidden, config.tower_hidden
        activation, dropout = config.activation, config.dropout
        self.input_dim, self.num_tasks = input_dim, num_tasks
        self.shared_experts = shared_experts
        # Embedding sharing other than "shared": the input is [T+1, B, D] (each task's tables, then
        # the shared ones), so level 0 reads per-branch inputs like a deeper level.
        self.grouped = config.embedding_sharing != "shared"
        self.levels = nn.ModuleList(
            Level(
                input_dim if i == 0 else expert_hidden[-1],
                num_tasks,
                experts_per_task,
                shared_experts,
                expert_hidden,
                gate_hidden,
                shared_gate=i < levels - 1 and shared_experts > 0,
                activation=activation,
                dropout=float(dropout),
                shared_input=i == 0 and not self.grouped,
                cross_layers=config.cross_layers if config.expert_type == "cross" else 0,
                cross_rank=config.cross_rank,
                gate_type=config.gate_type,
                gate_k=config.gate_k,
                all_forward=config.embedding_sharing == "shared_and_specific",
            )
            for i in range(levels)
        )
        self.towers = make_towers(num_tasks, expert_hidden[-1], config, cascade)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """The experts and gates of every level (the towers are each task's own)."""
        return (p for p in self.levels.parameters() if p.requires_grad)

    def last_shared_layer(self) -> tuple[nn.Parameter, slice] | None:
        """The weight of the last layer every task shares (the last level's shared experts) and
        the slice of its last dimension they own, for GradNorm; None without shared experts."""
        if not self.shared_experts:
            return None
        last = self.levels[-1]
        linears = [m for m in last.shared_expert_stack.layers if isinstance(m, GroupedLinear)]
        if linears:
            return linears[-1].weight, slice(None)
        if last.cross:
            return last.shared_cross_in.weight, slice(None)
        if last.shared_input:
            return last.expert_in.weight, slice(last.num_tasks * last.experts_per_task * last.hidden, None)
        return last.shared_expert_in.weight, slice(None)

    @torch.no_grad()
    def gate_usage(self, x: Tensor) -> list[dict[str, Tensor | None]]:
        """Per level, the mean weight each task's gate gives each expert it mixes (its P task
        experts, then the S shared ones) ``[T, P+S]``, and the shared gate's ``[T*P+S]``, over the
        rows of ``x``: the PLE paper's expert utilisation. None where a level has no such gate
        (a single expert is taken whole)."""
        usage = []
        task_in, shared_in = self._inputs(x)
        for level in self.levels:
            task_logits, shared_logits = level._gate_logits(task_in, shared_in)
            task = level._gate(task_logits, level.task_gates, level.task_gate_fn)[..., 0].mean(-1) if level.task_gate_size else None
            shared = level._gate(_one(shared_logits), level.shared_gate, level.shared_gate_fn)[0, ..., 0].mean(-1) if level.shared_gate_size else None
            usage.append({"task": task, "shared": shared})
            task_in, shared_in = level(task_in, shared_in)
        return usage

    def gate_experts(self) -> list[tuple[list[list[tuple[int | None, int]]], list[tuple[int | None, int]] | None]]:
        return [level.gate_experts() for level in self.levels]

    def _inputs(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        """Level 0's task and shared inputs: none and ``x [B, D]``, or ``x[:T]`` and ``x[T]`` for
        ``[T+1, B, D]`` (embedding sharing other than ``shared``)."""
        return (x[: self.num_tasks], x[self.num_tasks]) if self.grouped else (None, x)

    def forward(self, x: Tensor) -> Tensor:
        task_in, shared_in = self._inputs(x)
        for level in self.levels:
            task_in, shared_in = level(task_in, shared_in)
        return self.towers(task_in).squeeze(-1).transpose(0, 1)
