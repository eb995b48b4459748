"""Input encoders: categorical codes through embeddings, numeric features as they are or through a
learned numeric encoding; the dense input every architecture reads."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


class NumericEncoder(nn.Module):
    """Numeric features to per-feature embeddings ``[B, F] -> [B, F*d]`` (Gorishniy et al.,
    "On Embeddings for Numerical Features in Tabular Deep Learning", NeurIPS 2022):

    * ``quantile``: the bin of each value (edges at train-split quantiles), one embedding per bin.
    * ``piecewise``: the piecewise-linear encoding over the same bins (1 for bins below the value,
      its position inside its own bin, 0 above), then a per-feature linear layer.
    * ``periodic``: sin and cos of 2*pi*c*x with k learned frequencies c per feature (initialised
      N(0, sigma)), then a per-feature linear layer and ReLU.

    The edges are buffers taken from the schema (fitted on train only), so TorchScript, ONNX and
    ``predict`` use exactly the training edges."""

    def __init__(self, kind: str, quantiles: tuple[tuple[float, ...], ...], d: int, bins: int, frequencies: int, sigma: float) -> None:
        super().__init__()
        f = len(quantiles)
        self.kind, self.f, self.d = kind, f, d
        if kind in ("quantile", "piecewise"):
            step = (len(quantiles[0]) - 1) // bins if f else 1
            edges = torch.tensor([list(q[::step]) for q in quantiles], dtype=torch.float32) if f else torch.zeros(0, bins + 1)
            self.register_buffer("inner", edges[:, 1:-1].contiguous())  # [F, bins-1]
            self.register_buffer("low", edges[:, :-1].contiguous())  # [F, bins]
            # A bin of zero width (a column constant, or empty, in the train split: all its edges
            # equal) gets width 1: positions stay on the scale of the standardised values instead
            # of being divided by ~0 for every value the train split never had.
            width = edges[:, 1:] - edges[:, :-1]
            self.register_buffer("width", torch.where(width > 1e-6, width, torch.ones_like(width)).contiguous())  # [F, bins]
            self.bins = bins
        if kind == "quantile":
            self.register_buffer("offsets", torch.arange(f) * bins, persistent=False)
            self.table = nn.Embedding(max(f * bins, 1), d)
        elif kind == "piecewise":
            self.weight = nn.Parameter(torch.empty(f, bins, d).uniform_(-bins**-0.5, bins**-0.5))
            self.bias = nn.Parameter(torch.zeros(f, d))
        elif kind == "periodic":
            self.frequencies = nn.Parameter(torch.randn(f, frequencies) * sigma)
            self.weight = nn.Parameter(torch.empty(f, 2 * frequencies, d).uniform_(-(2 * frequencies) ** -0.5, (2 * frequencies) ** -0.5))
            self.bias = nn.Parameter(torch.zeros(f, d))

    def piecewise(self, num: Tensor) -> Tensor:
        """``[B, F] -> [B, F, bins]``: 1 below the value's bin, its position in it, 0 above; the
        first and last bins are open (values beyond the train range extrapolate linearly)."""
        position = (num.unsqueeze(-1) - self.low) / self.width  # [B, F, bins]
        if self.bins == 1:
            return position
        first, middle, last = position[..., :1].clamp(max=1.0), position[..., 1:-1].clamp(0.0, 1.0), position[..., -1:].clamp(min=0.0)
        return torch.cat([first, middle, last], -1)

    def forward(self, num: Tensor) -> Tensor:
        if self.kind == "quantile":
            index = (num.unsqueeze(-1) > self.inner).sum(-1)  # [B, F]: the bin, as bucketize, in one op
            return self.table(index + self.offsets).flatten(1)
        if self.kind == "piecewise":
            encoded = self.piecewise(num)  # [B, F, bins]
        else:
            angles = 2 * math.pi * self.frequencies * num.unsqueeze(-1)  # [B, F, k]
            encoded = torch.cat([torch.sin(angles), torch.cos(angles)], -1)  # [B, F, 2k]
        out = torch.einsum("bfi,fid->bfd", encoded, self.weight) + self.bias  # per-feature linear layer
        return (torch.relu(out) if self.kind == "periodic" else out).flatten(1)


class ListPooling(nn.Module):
    """List-valued columns to one embedding each: ``codes [B, S]`` (every list's ``max_len`` slots
    side by side, 0 = empty) -> ``[B, lists, d]``, the mean (or sum) of each list's items'
    embeddings, empty slots left out (an empty list is zeros). One table for all lists (per-list
    offsets), one lookup and one masked matrix product for every list at once: the batched
    equivalent of ``nn.EmbeddingBag`` per list, which ONNX and tracing take as plain ops."""

    def __init__(self, lists: Sequence[tuple[int, int]], dim: int, pooling: str) -> None:
        super().__init__()
        lengths = [int(n) for n, _ in lists]
        sizes = [int(v) for _, v in lists]
        starts = torch.tensor([0, *sizes[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", torch.repeat_interleave(starts, torch.tensor(lengths)), persistent=False)  # [S]
        owner = torch.repeat_interleave(torch.arange(len(lists)), torch.tensor(lengths))
        self.register_buffer("assign", nn.functional.one_hot(owner, len(lists)).float(), persistent=False)  # [S, lists]
        self.table = nn.Embedding(sum(sizes), dim)
        self.mean = pooling == "mean"

    def forward(self, codes: Tensor) -> Tensor:
        present = (codes > 0).to(self.table.weight.dtype)  # [B, S]
        items = self.table(codes + self.offsets) * present.unsqueeze(-1)  # [B, S, d]
        pooled = torch.einsum("bsd,sl->bld", items, self.assign)
        if self.mean:
            pooled = pooled / (present @ self.assign).clamp_min(1).unsqueeze(-1)
        return pooled


class FeatureEncoder(nn.Module):
    """Categorical codes through one embedding table (per-feature offsets), concatenated with the
    numeric features as they are (``standard``: ``[B, C*embedding_dim + F]``) or encoded by
    ``NumericEncoder`` (``[B, (C + F)*embedding_dim]``).

    ``groups`` > 1 (STEM's embedding sharing): ``groups`` sets of categorical tables, stored as one
    table ``groups`` times as wide (one lookup for all), and ``[G, B, D]`` out, group g with its
    own embeddings and the same numeric part; ``out_dim`` is one group's width D."""

    def __init__(
        self, vocab_sizes: tuple[int, ...], embedding_dim: int, numeric: NumericEncoder | None = None, num_numeric: int = 0, groups: int = 1,
        lists: Sequence[tuple[int, int]] = (), pooling: str = "mean",
    ) -> None:  # fmt: skip
        """``lists``: ``(max_len, vocab_size)`` of each list-valued column, whose slots follow
        the categorical codes; each list is pooled (``mean`` or ``sum`` of its items' embeddings,
        empty slots left out) into one embedding per group, placed after the categorical ones."""
        super().__init__()
        self.pools = ListPooling(lists, embedding_dim * groups, pooling) if lists else None
        self.categorical = len(vocab_sizes)
        offsets = torch.tensor([0, *vocab_sizes[:-1]], dtype=torch.long).cumsum(0)[: len(vocab_sizes)]
        self.register_buffer("offsets", offsets, persistent=False)
        self.groups, self.embedding_dim = groups, embedding_dim
        self.embedding = nn.Embedding(max(sum(vocab_sizes), 1), embedding_dim * groups)
        self.numeric = numeric
        self.out_dim = (len(vocab_sizes) + len(lists)) * embedding_dim + (num_numeric * embedding_dim if numeric is not None else num_numeric)
        self.has_categorical = bool(vocab_sizes) or bool(lists)

    def embedded(self, cat: Tensor) -> Tensor:
        """``[B, C + lists, G*d]``: each categorical code's embedding, then each pooled list."""
        scalar = self.embedding(cat[:, : self.categorical] + self.offsets)
        if self.pools is None:
            return scalar
        return torch.cat([scalar, self.pools(cat[:, self.categorical :])], dim=1)

    def forward(self, cat: Tensor, num: Tensor) -> Tensor:
        if self.numeric is not None:
            num = self.numeric(num)
        if self.groups == 1:
            if not self.has_categorical:
                return num
            return torch.cat([self.embedded(cat).flatten(1), num], dim=1)
        g = self.groups
        numeric = num.expand(g, -1, -1)
        if not self.has_categorical:
            return numeric
        embedded = self.embedded(cat).unflatten(-1, (g, self.embedding_dim))  # [B, C, G, d]
        return torch.cat([embedded.permute(2, 0, 1, 3).flatten(2), numeric], dim=2)  # [G, B, C*d + F']
