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
    permutation from a generator seeded with ``seed + pass number``, so runs repeat exactly."""

    def __init__(self, split: Split, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False) -> None:
        self.split, self.batch_size, self.shuffle, self.seed, self.drop_last = split, batch_size, shuffle, seed, drop_last
        self.passes = 0

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        s, bs = self.split, self.batch_size
        stop = len(self) * bs
        if not self.shuffle:
            for i in range(0, min(stop, len(s)), bs):
                yield s.cat[i : i + bs], s.num[i : i + bs], s.labels[i : i + bs]
            return
        generator = torch.Generator().manual_seed(self.seed + self.passes)
        self.passes += 1
        order = torch.randperm(len(s), generator=generator).to(s.labels.device)
        for i in range(0, min(stop, len(s)), bs):
            idx = order[i : i + bs]  # index_select: far faster than advanced indexing on CPU
            yield s.cat.index_select(0, idx), s.num.index_select(0, idx), s.labels.index_select(0, idx)


class PLEDataModule(pl.LightningDataModule):
    """Lightning wrapper: shuffled train batches, a few large batches for validation and test."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, eval_batch_size: int = EVAL_BATCH_SIZE) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.seed, self.eval_batch_size = dataset, batch_size, seed, eval_batch_size

    def train_dataloader(self) -> TensorBatches:
        return TensorBatches(self.dataset.train, self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self) -> TensorBatches:
        return TensorBatches(self.dataset.val, self.eval_batch_size)
