"""PLE: Progressive Layered Extraction (Tang et al., RecSys 2020) as a plain ``torch.nn.Module``.

Every group of experts, gates and towers is one stacked weight tensor and runs as one batched
matrix product; at level 0, where every branch reads the same input, the first layers of all
experts and gates are a single matmul. No Python loop runs over experts in ``forward``.

Special cases of the same code: ``levels=1`` is CGC, ``experts_per_task=0`` is (multi-level)
MMoE, ``experts_per_task=0, shared_experts=1`` is a shared-bottom network and ``num_tasks=1``
is a single-task model.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ple_search.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}

MODEL_KEYS = (
    "levels",
    "experts_per_task",
    "shared_experts",
    "expert_hidden",
    "gate_hidden",
    "tower_hidden",
    "dropout",
    "activation",
)


def _invalid(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"hyperparameter '{key}' = {value!r} is invalid: {allowed}")


def check_int(key: str, value: Any, minimum: int) -> int:
    """Return ``value`` as an int >= ``minimum`` or raise a ``ConfigError`` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _invalid(key, value, f"must be an integer >= {minimum}")
    return value


def check_widths(key: str, value: Any, allow_empty: bool) -> tuple[int, ...]:
    """Return layer widths as a tuple of positive ints or raise a ``ConfigError`` naming ``key``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        raise _invalid(key, value, "must be a list of positive integers")
    if not value and not allow_empty:
        raise _invalid(key, value, "must be a non-empty list of positive integers")
    for width in value:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise _invalid(key, value, "every width must be a positive integer")
    return tuple(value)


def _uniform(shape: Sequence[int], fan_in: int) -> nn.Parameter:
    """PyTorch's default ``nn.Linear`` initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


class GroupedLinear(nn.Module):
    """``groups`` independent linear maps, ``[G, B, in] -> [G, B, out]``, as one ``baddbmm``."""

    def __init__(self, groups: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = _uniform((groups, in_features, out_features), in_features)
        self.bias = _uniform((groups, 1, out_features), in_features)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class GroupedMLP(nn.Module):
    """``groups`` independent MLPs run side by side; activation after every layer but the last
    unless ``final_activation`` (experts end in an activation, gates and towers in raw values)."""

    def __init__(
        self,
        groups: int,
        widths: Sequence[int],
        activation: str,
        dropout: float,
        final_activation: bool,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(GroupedLinear(groups, fan_in, fan_out))
            if final_activation or i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Level(nn.Module):
    """One extraction level: per-task experts, shared experts, task gates and a shared gate.

    The first layer of a task's experts and its gate read the same input, so they share one
    weight tensor per task (``task_first``, one group per task); likewise the shared experts and
    the shared gate (``shared_first``). Expert ``p`` of task ``k`` owns columns
    ``[p*h, (p+1)*h)`` of ``task_first.weight[k]``, shared expert ``s`` owns columns
    ``[s*h, (s+1)*h)`` of ``shared_first_weight``; deeper expert layers are stacked in the order
    task 0's experts, task 1's experts, ..., so task k's expert p is index ``k*P + p``.
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
    ) -> None:
        super().__init__()
        t, p, s = num_tasks, experts_per_task, shared_experts
        self.t, self.p, self.s = t, p, s
        self.h = expert_hidden[0]
        self.out_dim = expert_hidden[-1]
        self.activation = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # A gate over a single expert is the identity: it is left out rather than kept untrainable.
        self.task_gate_size = p + s if p + s > 1 else 0
        self.shared_gate_size = t * p + s if shared_gate and t * p + s > 1 else 0
        self.has_shared_out = shared_gate
        self.task_gate_first = (gate_hidden[0] if gate_hidden else p + s) if self.task_gate_size else 0
        self.shared_gate_first = (
            (gate_hidden[0] if gate_hidden else t * p + s) if self.shared_gate_size else 0
        )
        task_width = p * self.h + self.task_gate_first
        shared_width = s * self.h + self.shared_gate_first
        self.task_first = GroupedLinear(t, in_dim, task_width) if task_width else None
        if shared_width:
            self.shared_first_weight = _uniform((in_dim, shared_width), in_dim)
            self.shared_first_bias = _uniform((shared_width,), in_dim)
        else:
            self.shared_first_weight = self.shared_first_bias = None
        rest = list(expert_hidden)
        self.task_experts = GroupedMLP(t * p, rest, activation, dropout, True) if p else None
        self.shared_expert_stack = GroupedMLP(s, rest, activation, dropout, True) if s else None
        self.task_gates = (
            GroupedMLP(t, [*gate_hidden, p + s], activation, 0.0, False)
            if self.task_gate_size and gate_hidden
            else None
        )
        self.shared_gate = (
            GroupedMLP(1, [*gate_hidden, t * p + s], activation, 0.0, False)
            if self.shared_gate_size and gate_hidden
            else None
        )

    def first_layer(
        self, task_in: Tensor | None, shared_in: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        """First layer of every expert and gate: ``[T, B, task_width]`` and ``[B, shared_width]``.

        ``task_in is None`` means every branch reads ``shared_in`` (level 0): one fused matmul.
        """
        if task_in is None:
            weights, biases = [], []
            if self.task_first is not None:
                w = self.task_first.weight
                weights.append(w.permute(1, 0, 2).reshape(w.shape[1], -1))
                biases.append(self.task_first.bias.reshape(-1))
            if self.shared_first_weight is not None:
                weights.append(self.shared_first_weight)
                biases.append(self.shared_first_bias)
            fused = torch.addmm(torch.cat(biases), shared_in, torch.cat(weights, dim=1))
            split = self.t * self.task_first.weight.shape[2] if self.task_first is not None else 0
            task_h = fused[:, :split].unflatten(1, (self.t, -1)).transpose(0, 1) if split else None
            shared_h = fused[:, split:] if self.shared_first_weight is not None else None
            return task_h, shared_h
        task_h = self.task_first(task_in) if self.task_first is not None else None
        shared_h = (
            torch.addmm(self.shared_first_bias, shared_in, self.shared_first_weight)
            if self.shared_first_weight is not None
            else None
        )
        return task_h, shared_h

    def _experts(self, first: Tensor, groups: int, count: int, stack: GroupedMLP) -> Tensor:
        """Finish ``groups * count`` experts from their first-layer columns: ``[G*count, B, d]``."""
        h = self.dropout(self.activation(first[..., : count * self.h]))
        if groups == 0:  # shared branch: [B, S*h]
            h = h.unflatten(1, (count, self.h)).transpose(0, 1)
        else:  # task branch: [T, B, P*h] -> [T*P, B, h]
            h = h.unflatten(2, (count, self.h)).permute(0, 2, 1, 3).reshape(-1, h.shape[1], self.h)
        return stack(h)

    @staticmethod
    def _gate(first: Tensor, start: int, mlp: GroupedMLP | None, activation: nn.Module) -> Tensor:
        logits = first[..., start:]
        if mlp is not None:
            logits = mlp(activation(logits))
        return torch.softmax(logits, dim=-1)

    def forward(
        self, task_in: Tensor | None, shared_in: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """Return task outputs ``[T, B, d]`` and the shared output ``[B, d]`` (None at the last level)."""
        t, p, s = self.t, self.p, self.s
        task_h, shared_h = self.first_layer(task_in, shared_in)
        task_experts = self._experts(task_h, t, p, self.task_experts) if p else None
        shared_experts = self._experts(shared_h, 0, s, self.shared_expert_stack) if s else None
        if self.task_gate_size:
            gate = self._gate(task_h, p * self.h, self.task_gates, self.activation)
            out = 0
            if p:
                out = torch.einsum("tbp,tpbd->tbd", gate[..., :p], task_experts.unflatten(0, (t, p)))
            if s:
                out = out + torch.einsum("tbs,sbd->tbd", gate[..., p:], shared_experts)
        elif p:
            out = task_experts
        else:
            out = shared_experts.expand(t, -1, -1)
        if not self.has_shared_out:
            return out, None
        experts = shared_experts if not p else torch.cat([task_experts, shared_experts])
        if self.shared_gate_size:
            shared_gate = self._gate(shared_h.unsqueeze(0), s * self.h, self.shared_gate, self.activation)
            return out, torch.einsum("be,ebd->bd", shared_gate[0], experts)
        return out, experts[0]


class PLE(nn.Module):
    """Progressive Layered Extraction over a dense input; ``forward(x[B, D]) -> [B, num_tasks]``.

    Per level, task k's gate mixes task k's ``experts_per_task`` experts and the
    ``shared_experts`` shared experts; every level but the last has a shared gate over all
    experts whose output feeds the next level's shared experts. Towers (``tower_hidden`` then
    one output) sit on each task's output of the last level; outputs are raw (logits or values).
    """

    def __init__(
        self,
        input_dim: int,
        num_tasks: int,
        levels: int = 2,
        experts_per_task: int = 3,
        shared_experts: int = 2,
        expert_hidden: Sequence[int] = (16,),
        gate_hidden: Sequence[int] = (),
        tower_hidden: Sequence[int] = (8,),
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_int("input_dim", input_dim, 1)
        check_int("num_tasks", num_tasks, 1)
        check_int("levels", levels, 1)
        check_int("experts_per_task", experts_per_task, 0)
        check_int("shared_experts", shared_experts, 0)
        if experts_per_task + shared_experts == 0:
            raise ConfigError(
                "hyperparameters 'experts_per_task' = 0 and 'shared_experts' = 0 are invalid: "
                "at least one of them must be >= 1"
            )
        expert_hidden = check_widths("expert_hidden", expert_hidden, allow_empty=False)
        gate_hidden = check_widths("gate_hidden", gate_hidden, allow_empty=True)
        tower_hidden = check_widths("tower_hidden", tower_hidden, allow_empty=True)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise _invalid("dropout", dropout, "must be a number in [0, 1)")
        if activation not in ACTIVATIONS:
            raise _invalid("activation", activation, f"must be one of {sorted(ACTIVATIONS)}")
        self.input_dim, self.num_tasks = input_dim, num_tasks
        self.shared_experts = shared_experts
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
            )
            for i in range(levels)
        )
        self.towers = GroupedMLP(
            num_tasks, [expert_hidden[-1], *tower_hidden, 1], activation, float(dropout), False
        )

    @classmethod
    def from_hparams(cls, input_dim: int, num_tasks: int, hparams: Mapping[str, Any]) -> "PLE":
        """Build from a hyperparameter dict; keys other than the model's are rejected."""
        unknown = sorted(set(hparams) - set(MODEL_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown hyperparameter '{unknown[0]}': PLE takes {', '.join(MODEL_KEYS)}"
            )
        return cls(input_dim, num_tasks, **dict(hparams))

    def last_shared_layer(self) -> nn.Parameter | None:
        """Weight of the last layer that every task shares (the last level's shared experts),
        the layer GradNorm measures gradients on; None without shared experts."""
        if not self.shared_experts:
            return None
        last = self.levels[-1]
        linears = [m for m in last.shared_expert_stack.layers if isinstance(m, GroupedLinear)]
        return linears[-1].weight if linears else last.shared_first_weight

    def forward(self, x: Tensor) -> Tensor:
        task_in, shared_in = None, x
        for level in self.levels:
            task_in, shared_in = level(task_in, shared_in)
        return self.towers(task_in).squeeze(-1).transpose(0, 1)
