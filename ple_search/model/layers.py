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
