"""``PLEModule``: the Lightning training module built from one hyperparameter dict and a schema."""

from __future__ import annotations

from typing import Any, Mapping

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ple_search._version import __version__
from ple_search.data.schema import Schema
from ple_search.core.errors import ConfigError, TrialFailed
from ple_search.model.hparams import PLEConfig
from ple_search.train.metrics import task_metrics
from ple_search.model.ple import PLE
from ple_search.train.weighting import make_weighting

Batch = tuple[Tensor, Tensor, Tensor]
VERSION_KEY = "ple_search_version"


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
            self.register_buffer("width", (edges[:, 1:] - edges[:, :-1]).clamp_min(1e-6).contiguous())  # [F, bins]
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


class FeatureEncoder(nn.Module):
    """Categorical codes through one embedding table (per-feature offsets), concatenated with the
    numeric features as they are (``standard``: ``[B, C*embedding_dim + F]``) or encoded by
    ``NumericEncoder`` (``[B, (C + F)*embedding_dim]``)."""

    def __init__(self, vocab_sizes: tuple[int, ...], embedding_dim: int, numeric: NumericEncoder | None = None, num_numeric: int = 0) -> None:
        super().__init__()
        offsets = torch.tensor([0, *vocab_sizes[:-1]], dtype=torch.long).cumsum(0)[: len(vocab_sizes)]
        self.register_buffer("offsets", offsets, persistent=False)
        self.embedding = nn.Embedding(max(sum(vocab_sizes), 1), embedding_dim)
        self.numeric = numeric
        self.out_dim = len(vocab_sizes) * embedding_dim + (num_numeric * embedding_dim if numeric is not None else num_numeric)
        self.has_categorical = bool(vocab_sizes)

    def forward(self, cat: Tensor, num: Tensor) -> Tensor:
        if self.numeric is not None:
            num = self.numeric(num)
        if not self.has_categorical:
            return num
        embedded = self.embedding(cat + self.offsets).flatten(1)
        return torch.cat([embedded, num], dim=1)


class PLEModule(pl.LightningModule):
    """PLE plus embeddings, per-task losses over each task's own labelled samples, a loss-weighting
    scheme, the optimiser, and per-task validation/test metrics logged as ``val/<task>/<metric>``.

    Args:
        schema: features, vocabulary sizes and tasks (a ``Schema`` or its dict); regression tasks
            carry their label scaling (``Task.shift``, ``Task.scale``).
        hparams: any keys of ``PLEConfig`` (defaults and validation there); stored resolved in
            ``self.config`` and in checkpoints.
    """

    def __init__(self, schema: Mapping[str, Any] | Schema, hparams: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        schema = Schema.from_dict(schema)
        config = PLEConfig.from_dict(hparams)
        resolved = config.to_dict()
        self.save_hyperparameters({"schema": schema.to_dict(), "hparams": resolved})
        self.schema = schema
        self.config = resolved
        numeric = None
        if config.numeric_encoding != "standard" and schema.numeric:
            if not schema.numeric_quantiles and config.numeric_encoding != "periodic":
                raise ConfigError(f"numeric_encoding '{config.numeric_encoding}' needs the train split's quantiles in the schema; reload the data")
            quantiles = schema.numeric_quantiles or tuple((0.0,) * 65 for _ in schema.numeric)
            numeric = NumericEncoder(
                config.numeric_encoding, quantiles, config.embedding_dim, config.numeric_bins, config.periodic_frequencies, config.periodic_sigma,
            )  # fmt: skip
        self.encoder = FeatureEncoder(schema.vocab_sizes, resolved["embedding_dim"], numeric, len(schema.numeric))
        input_dim = self.encoder.out_dim
        self.model = PLE(input_dim, len(schema.tasks), **config.model_kwargs())
        self.weighting = make_weighting(resolved["loss_weighting"], schema.task_names, resolved, self.model)
        self.register_buffer("is_binary", torch.tensor([t.type == "binary" for t in schema.tasks]), persistent=False)
        self.register_buffer("label_shift", torch.tensor([t.shift for t in schema.tasks], dtype=torch.float32), persistent=False)
        self.register_buffer("label_scale", torch.tensor([t.scale for t in schema.tasks], dtype=torch.float32), persistent=False)
        self._epoch_loss_sum = torch.zeros(len(schema.tasks))
        self._epoch_steps = 0
        self._eval_outputs: list[tuple[Tensor, Tensor]] = []
        self.last_metrics: dict[str, dict[str, float]] = {}

    def forward(self, cat: Tensor, num: Tensor) -> Tensor:
        """Raw outputs ``[B, T]``: logits for binary tasks, values in the label's units for
        regression tasks (the network predicts standardised values; see ``Task``)."""
        return self.model(self.encoder(cat, num)) * self.label_scale + self.label_shift

    def predict_outputs(self, cat: Tensor, num: Tensor) -> Tensor:
        """Serving outputs ``[B, T]``: probabilities for binary tasks, values for regression tasks."""
        out = self(cat, num)
        return torch.where(self.is_binary, torch.sigmoid(out), out)

    def task_losses(self, outputs: Tensor, labels: Tensor) -> Tensor:
        """Per-task mean loss ``[T]`` over each task's labelled samples (NaN label = not in the task)."""
        known = ~torch.isnan(labels)
        safe = torch.where(known, labels, torch.zeros_like(labels))
        bce = F.binary_cross_entropy_with_logits(outputs, safe, reduction="none")
        mse = ((outputs - safe) / self.label_scale) ** 2  # standardised units: every task's loss near 1 at start
        per_sample = torch.where(self.is_binary, bce, mse) * known
        return per_sample.sum(0) / known.sum(0).clamp_min(1)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        cat, num, labels = batch
        losses = self.task_losses(self(cat, num), labels)
        total = self.weighting(losses, self.model)
        if not torch.isfinite(total):
            raise TrialFailed(f"training loss became non-finite ({float(total.detach())}) at epoch {self.current_epoch}")
        self._epoch_loss_sum = self._epoch_loss_sum.to(losses.device) + losses.detach()
        self._epoch_steps += 1
        return total

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        # after the optimiser step: schemes that learn from each step's loss decrease (FAMO) get
        # the same batch's losses again, one forward pass, no backward
        if self.weighting.wants_losses_after_step:
            cat, num, labels = batch
            with torch.no_grad():
                self.weighting.after_step(self.task_losses(self(cat, num), labels))

    def on_train_epoch_end(self) -> None:
        mean = self._epoch_loss_sum / max(self._epoch_steps, 1)
        self.weighting.epoch_end(self.current_epoch, mean)
        self.log_dict(
            {f"train/{name}/loss": float(v) for name, v in zip(self.schema.task_names, mean)}, on_epoch=True
        )
        self._epoch_loss_sum = torch.zeros_like(mean)
        self._epoch_steps = 0

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        cat, num, labels = batch
        self._eval_outputs.append((self(cat, num).detach(), labels))

    test_step = validation_step

    def _log_split_metrics(self, split: str) -> None:
        outputs = torch.cat([o for o, _ in self._eval_outputs]).cpu()
        labels = torch.cat([y for _, y in self._eval_outputs]).cpu()
        self._eval_outputs = []
        metrics = task_metrics(outputs, labels, self.schema.tasks)
        self.last_metrics[split] = metrics
        self.log_dict({f"{split}/{t.name}/{t.metric}": metrics[t.name] for t in self.schema.tasks})

    def on_validation_epoch_end(self) -> None:
        self._log_split_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_split_metrics("test")

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        cat, num = batch[0], batch[1]
        return self.predict_outputs(cat, num)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[VERSION_KEY] = __version__

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        written = checkpoint.get(VERSION_KEY)
        if written != __version__:
            raise ConfigError(
                f"checkpoint written by ple-search {written or 'unknown'}, this is {__version__}: "
                "retrain it with `ple-search train --config ...`"
            )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[self.config["optimizer"]]
        weighting_ids = {id(p) for p in self.weighting.parameters()}
        groups = [{"params": [p for p in self.parameters() if id(p) not in weighting_ids]}]
        if weighting_ids:
            groups.append({"params": list(self.weighting.parameters()), "weight_decay": 0.0})
        return optimizer(groups, lr=self.config["lr"], weight_decay=self.config["weight_decay"])
