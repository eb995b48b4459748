"""The output head, written once for training and serving: raw model outputs to task units, and
task units to what serving returns (probabilities for binary tasks, values for regression ones)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ple_search.data.schema import Task


class OutputHead(nn.Module):
    """``[B, T]`` raw outputs -> ``forward``: logits (binary) and values in the label's units
    (regression: the network predicts ``(label - shift) / scale``, see ``Task``) -> ``serve``:
    probabilities and values. Its buffers come from the schema, not the checkpoint."""

    def __init__(self, tasks: Sequence[Task]) -> None:
        super().__init__()
        self.register_buffer("is_binary", torch.tensor([t.kind.probability for t in tasks]), persistent=False)
        self.register_buffer("label_shift", torch.tensor([t.shift for t in tasks], dtype=torch.float32), persistent=False)
        self.register_buffer("label_scale", torch.tensor([t.scale for t in tasks], dtype=torch.float32), persistent=False)

    def forward(self, raw: Tensor) -> Tensor:
        """Logits for binary tasks, values in the label's units for regression tasks."""
        return raw * self.label_scale + self.label_shift

    def serve(self, out: Tensor) -> Tensor:
        """What serving returns from ``forward``'s outputs: probabilities and values."""
        return torch.where(self.is_binary, torch.sigmoid(out), out)
