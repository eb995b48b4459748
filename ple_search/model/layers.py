"""The batched building blocks every architecture shares: ``groups`` independent linear layers or
MLPs run as one ``baddbmm`` per layer (experts, gates and towers side by side, no Python loop over
them), a dense layer stored like one group, and the activations by name."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ple_search.model.hparams import ACTIVATIONS as ACTIVATION_NAMES

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}
assert tuple(ACTIVATIONS) == ACTIVATION_NAMES, "config.ACTIVATIONS names the modules above"
_HAS_INPLACE = {"relu", "silu", "elu", "leaky_relu"}


def make_activation(name: str, inplace: bool = False) -> nn.Module:
    """The activation module; in place where supported, for fresh matmul outputs only: large
    out-of-place results cost a new allocation (page faults) plus a full memory pass on CPU."""
    return ACTIVATIONS[name](inplace=True) if inplace and name in _HAS_INPLACE else ACTIVATIONS[name]()


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
                layers.append(make_activation(activation, inplace=True))
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class DenseLinear(nn.Module):
    """``[B, in] -> [B, out]`` with the weight stored ``[in, out]`` like ``GroupedLinear``'s groups,
    so level 0 can concatenate every first layer into one matmul."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = _uniform((in_features, out_features), in_features)
        self.bias = _uniform((out_features,), in_features)

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x, self.weight)


class GroupedWeight(nn.Module):
    """``groups`` bias-free linear maps ``[G, B, in] -> [G, B, out]`` (one ``bmm``): the down
    projection of a low-rank cross layer."""

    def __init__(self, groups: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = _uniform((groups, in_features, out_features), in_features)

    def forward(self, x: Tensor) -> Tensor:
        return torch.bmm(x, self.weight)


class CrossStack(nn.Module):
    """``groups`` DCN-V2 cross networks side by side (Wang et al., WWW 2021), ``[G, B, d] ->
    [G, B, d]``: ``x_{l+1} = x_0 * (x_l W_l + b_l) + x_l`` for ``layers`` layers, with ``W_l``
    full rank ``[d, d]`` or, with ``rank`` r >= 1, ``U_l V_l`` (``[d, r]`` then ``[r, d]``). Each
    layer multiplies the input with a learned linear view of itself: explicit feature crosses of
    growing degree, which MLP experts learn only implicitly. With ``W = 0, b = 0`` a layer is the
    identity (the residual)."""

    def __init__(self, groups: int, dim: int, layers: int, rank: int = 0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            GroupedLinear(groups, dim, dim) if rank == 0 else nn.Sequential(GroupedWeight(groups, dim, rank), GroupedLinear(groups, rank, dim))
            for _ in range(layers)
        )

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for layer in self.layers:  # over layers, never over experts: every expert in each bmm
            x = x0 * layer(x) + x
        return x


DSELECT_GAMMA = 1.0  # the smooth step's width: exactly 0 below -gamma/2, exactly 1 above gamma/2
DSELECT_ENTROPY = 0.1  # weight of the selectors' entropy in the training loss (drives them to 0/1)
# The bits are stored divided by this: their step size under Adam is this times the learning rate,
# so they reach the saturated ends in tens to hundreds of steps rather than thousands (a static
# gate has a handful of parameters, each seeing every row).
DSELECT_SPEED = 8.0


def smooth_step(z: Tensor, gamma: float = DSELECT_GAMMA) -> Tensor:
    """Hazimeh et al.'s smooth step: 0 for ``z <= -gamma/2``, 1 for ``z >= gamma/2``, the cubic
    ``-2 t^3 + 3/2 t + 1/2`` (``t = z / gamma``) between; continuously differentiable, and exactly
    binary (zero gradient) once saturated."""
    t = (z / gamma).clamp(-0.5, 0.5)
    return (-2 * t**3) + 1.5 * t + 0.5


class Gate(nn.Module):
    """Expert weights (summing to 1 over the ``experts``) for ``groups`` gates.

    ``softmax``: the MMoE/PLE gate, per row, from raw outputs ``[G, B, n]`` computed by the caller.
    ``dselect_k`` (Hazimeh et al., NeurIPS 2021), static as in the paper's multi-task use: each
    gate has k selectors, each choosing one of the ``2^m >= n`` binary codes through m learned
    smooth-step bits (code ``c`` is expert ``c mod n``, so every code is an expert), mixed by a
    softmax over k learned logits: ``[G, 1, n]`` for every row. Once the bits saturate a gate's
    weight is on at most k experts. While training it keeps the selectors' entropy
    (``last_entropy``), which the training loss adds with weight ``DSELECT_ENTROPY`` to drive the
    bits to 0 or 1."""

    def __init__(self, gate_type: str, experts: int, k: int, groups: int) -> None:
        super().__init__()
        self.sparse = gate_type == "dselect_k" and experts > 1
        self.experts, self.k = experts, k
        self.last_entropy: Tensor | None = None
        if self.sparse:
            self.bits = max(1, math.ceil(math.log2(experts)))
            codes = torch.arange(2**self.bits)
            self.register_buffer("codes", ((codes.unsqueeze(-1) >> torch.arange(self.bits)) & 1).float(), persistent=False)  # [2^m, m]
            self.register_buffer("fold", nn.functional.one_hot(codes % experts, experts).float(), persistent=False)  # [2^m, n]
            # the bits start inside the smooth region (every code possible), the mixing uniform
            self.z = nn.Parameter(torch.empty(groups, k, self.bits).uniform_(-DSELECT_GAMMA / 4, DSELECT_GAMMA / 4) / DSELECT_SPEED)
            self.mixing = nn.Parameter(torch.zeros(groups, k))

    def selectors(self) -> Tensor:
        """Each selector's weight on each code ``[G, k, 2^m]`` (each row sums to 1)."""
        step = smooth_step(self.z * DSELECT_SPEED).unsqueeze(-2)  # [G, k, 1, m]
        return (self.codes * step + (1 - self.codes) * (1 - step)).prod(-1)

    def forward(self, raw: Tensor | None) -> Tensor:
        if not self.sparse:
            return torch.softmax(raw, dim=-1)
        selectors = self.selectors()
        if self.training:
            self.last_entropy = -(selectors * torch.log(selectors.clamp_min(1e-9))).sum(-1).sum()
        weights = (torch.softmax(self.mixing, -1).unsqueeze(-1) * selectors).sum(-2) @ self.fold  # [G, n]
        return weights.unsqueeze(1)  # [G, 1, n]: the same for every row


def expert_order(num_tasks: int, experts_per_task: int, shared_experts: int) -> list[tuple[int | None, int]]:
    """The experts of a level in the order every architecture stacks them: task k's expert j at
    ``k*P + j``, the shared ones last, as ``(owner task, or None for a shared expert, index)``."""
    t, p, s = num_tasks, experts_per_task, shared_experts
    return [(k, j) for k in range(t) for j in range(p)] + [(None, j) for j in range(s)]


def owner_mask(order: list[tuple[int | None, int]], num_tasks: int, units: int, shared_too: bool) -> Tensor:
    """``[units, E]``: 1 where unit u owns expert e: task u's own experts, and the shared experts
    for the shared unit (index ``num_tasks``, when there is one) or, with ``shared_too``, for every unit."""
    return torch.tensor(
        [[float(owner == u or (owner is None and (shared_too or u == num_tasks))) for owner, _ in order] for u in range(units)]
    )


def mix(weights: Tensor, experts: Tensor, own: Tensor | None = None) -> Tensor:
    """``sum_e weights[m, e] * experts[e]`` for every mixer m: ``weights [M, E, B, 1]`` (or
    ``[M, E]`` broadcast over rows), ``experts [E, B, d]`` -> ``[M, B, d]``. With ``own`` (``[M,
    E]``, 1 where mixer m may train expert e), the other experts enter with their gradient
    stopped (STEM's all-forward, task-specific-backward): one pass over the detached experts, no
    loop over mixers."""
    if weights.dim() == 2:
        weights = weights[:, :, None, None]
    if own is None:
        return (weights * experts).sum(1)
    own = own[:, :, None, None]
    return (weights * own * experts).sum(1) + (weights * (1 - own) * experts.detach()).sum(1)
