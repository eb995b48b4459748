"""``MultiTaskModel``: what every architecture is to the rest of ple-search.

The training module, task weighting, cost measures, serving and reports talk to an architecture
only through this interface, so a new architecture is one module (a ``MultiTaskModel`` subclass)
plus its entry in ``model.architectures.ARCHITECTURES`` and its test.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import Tensor, nn


def network_config(name: str, label: str, input_dim: int, num_tasks: int, config: Any, hparams: dict[str, Any]) -> Any:
    """The validated ``PLEConfig`` a network is built from: ``config`` as given (what ``PLEModule``
    passes, parsed once), else ``hparams`` (only architecture ``name``'s keys, a ``ConfigError``
    naming the first other) over the defaults."""
    from ple_search.core.errors import ConfigError
    from ple_search.model.architectures import ARCHITECTURES
    from ple_search.model.hparams import PLEConfig, check_int

    check_int("input_dim", input_dim, 1)
    check_int("num_tasks", num_tasks, 1)
    if config is not None:
        return config
    keys = ARCHITECTURES[name].keys
    unknown = sorted(set(hparams) - set(keys))
    if unknown:
        raise ConfigError(f"unknown hyperparameter '{unknown[0]}': {label} takes {', '.join(keys)}")
    return PLEConfig.from_dict({**hparams, "architecture": name})


class MultiTaskModel(nn.Module):
    """A network over the dense input: ``forward(x [B, D]) -> [B, num_tasks]`` raw outputs (logits
    for binary tasks, standardised values for regression tasks; ``model.head`` turns them into
    task units and serving outputs). With ``embedding_groups`` > 1 (embedding sharing other than
    ``shared``) the input is ``[T+1, B, D]``: each task's embeddings, then the shared ones.

    Subclasses say which of their parameters every task shares, for the weighting schemes that
    balance gradients there (``shared_parameters``: PCGrad, MGDA, CAGrad, Aligned-MTL, Nash-MTL;
    ``last_shared_layer``: GradNorm)."""

    input_dim: int
    num_tasks: int

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """The trainable parameters every task's loss reaches (the shared extraction network, not
        the towers); gradient balancing combines the task gradients on them."""
        raise NotImplementedError

    def last_shared_layer(self) -> tuple[nn.Parameter, slice] | None:
        """The weight of the last layer every task shares and the slice of its last dimension
        that is shared (GradNorm measures gradient norms there); None if there is none."""
        return None

    def extra_multiply_adds(self) -> int:
        """Multiply-adds per sample that are not one use of a ``weight`` matrix (the ``flops``
        measure counts those itself), e.g. a mixing matrix applied to every unit; by default the
        towers' (AITM's attention), else 0."""
        towers = getattr(self, "towers", None)
        return towers.extra_multiply_adds() if hasattr(towers, "extra_multiply_adds") else 0

    def gate_usage(self, x: Tensor) -> list[dict[str, Tensor | None]] | None:
        """Per level, the mean weight each task's gate (``"task"``: ``[T, E_task]``) and the
        shared gate (``"shared"``: ``[E]``) give each expert over the rows of ``x``, in the order
        ``model.gates`` names them; None for an architecture without gates."""
        return None

    def gate_experts(self) -> list[tuple[list[list[tuple[int | None, int]]], list[tuple[int | None, int]] | None]]:
        """Per level, the experts each task gate mixes and those the shared gate mixes (None
        without one), in ``gate_usage``'s order, as ``(owner task index or None for a shared
        expert, index among its owner's)``."""
        return []

    def regularization(self) -> Tensor | None:
        """A term the training loss adds, from the last training forward pass: by default the
        entropy of every DSelect-k gate's selectors (``layers.Gate``); None for none."""
        from ple_search.model.layers import Gate

        terms = [m.last_entropy for m in self.modules() if isinstance(m, Gate) and m.last_entropy is not None]
        return torch.stack(terms).sum() if terms else None

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - the interface
        raise NotImplementedError
