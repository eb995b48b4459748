"""Batches sliced from in-memory tensors: no per-row ``__getitem__``, no collate."""

from __future__ import annotations

from typing import Iterator

import pytorch_lightning as pl
import torch
from torch import Tensor

from ple_search.data.dataset import Dataset, Split

EVAL_BATCH_SIZE = 32_768


class TensorBatches:
    """Iterate ``(cat, num, labels)`` batches of a split. With ``shuffle``, every pass draws a new
    permutation from a generator seeded with ``seed + pass number``, so runs repeat exactly.

    With ``world`` > 1 (a trial trained on several processes, ``train.ranks``) each rank reads only
    its shard, and every rank yields the same number of batches (a rank with fewer would leave the
    others waiting in a collective): shuffled, rank r takes every ``world``-th row of the pass's
    permutation (the same on every rank), the last ``len % world`` rows of it dropped, so the shards
    differ each pass and never overlap; in order, rank r takes the r-th contiguous block of
    ``ceil(len / world)`` rows, the last blocks padded by repeating the split's last row, so that
    the blocks concatenated in rank order are the split followed by the padding (``shard_rows``)."""

    def __init__(
        self, split: Split, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False, *, rank: int = 0, world: int = 1,
    ) -> None:  # fmt: skip
        self.split, self.batch_size, self.shuffle, self.seed, self.drop_last = split, batch_size, shuffle, seed, drop_last
        self.rank, self.world = rank, world
        self.passes = 0

    def rows(self) -> int:
        """Rows this rank reads per pass."""
        n = len(self.split)
        if self.world == 1:
            return n
        return n // self.world if self.shuffle else shard_rows(n, self.world)

    def __len__(self) -> int:
        n = self.rows()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        s, bs = self.split, self.batch_size
        stop = len(self) * bs
        if not self.shuffle and self.world == 1:
            for i in range(0, min(stop, len(s)), bs):
                yield s.cat[i : i + bs], s.num[i : i + bs], s.labels[i : i + bs]
            return
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.passes)
            self.passes += 1
            order = torch.randperm(len(s), generator=generator)
            if self.world > 1:
                order = order[: self.rows() * self.world][self.rank :: self.world]
        else:
            block = shard_rows(len(s), self.world)
            order = torch.arange(self.rank * block, (self.rank + 1) * block).clamp(max=len(s) - 1)
        order = order.to(s.labels.device)
        for i in range(0, min(stop, len(order)), bs):
            idx = order[i : i + bs]  # index_select: far faster than advanced indexing on CPU
            yield s.cat.index_select(0, idx), s.num.index_select(0, idx), s.labels.index_select(0, idx)


def shard_rows(n: int, world: int) -> int:
    """Rows of each rank's in-order block of an ``n``-row split: ``ceil(n / world)``."""
    return -(-n // world)


class PLEDataModule(pl.LightningDataModule):
    """Lightning wrapper: shuffled train batches, a few large batches for validation and test.

    On ``world`` processes, rank ``rank`` reads its shard (``TensorBatches``) in batches of
    ``ceil(batch_size / world)``: ``batch_size`` stays the global batch, so a step averages the
    gradient over as many rows as one process would, and an epoch has as many steps."""

    def __init__(
        self, dataset: Dataset, batch_size: int, seed: int = 0, eval_batch_size: int = EVAL_BATCH_SIZE, *, rank: int = 0, world: int = 1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.dataset, self.batch_size, self.seed, self.eval_batch_size = dataset, batch_size, seed, eval_batch_size
        self.rank, self.world = rank, world

    def train_dataloader(self) -> TensorBatches:
        per_rank = -(-self.batch_size // self.world)
        return TensorBatches(self.dataset.train, per_rank, shuffle=True, seed=self.seed, rank=self.rank, world=self.world)

    def val_dataloader(self) -> TensorBatches:
        return TensorBatches(self.dataset.val, self.eval_batch_size, rank=self.rank, world=self.world)
