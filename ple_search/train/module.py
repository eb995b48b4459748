"""``PLEModule``: the Lightning training module built from one hyperparameter dict and a schema:
encoders, the architecture the config names (``model.architectures``), the output head, per-task
losses, task weighting, the optimiser and validation metrics."""

from __future__ import annotations

from typing import Any, Mapping

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from ple_search._version import __version__
from ple_search.core.errors import ConfigError, TrialFailed
from ple_search.data.schema import Schema
from ple_search.model.architectures import build, embedding_groups
from ple_search.model.encoders import FeatureEncoder, NumericEncoder
from ple_search.model.head import OutputHead
from ple_search.model.hparams import PLEConfig
from ple_search.model.layers import DSELECT_ENTROPY
from ple_search.train.metrics import task_metrics
from ple_search.train.weighting import make_weighting

Batch = tuple[Tensor, Tensor, Tensor]
VERSION_KEY = "ple_search_version"


class PLEModule(pl.LightningModule):
    """An architecture plus embeddings, per-task losses over each task's own labelled samples, a
    loss-weighting scheme, the optimiser, and per-task validation metrics logged as
    ``val/<task>/<metric>`` (test metrics come from ``train.engine.evaluate``).

    Args:
        schema: features, vocabulary sizes and tasks (a ``Schema`` or its dict); regression tasks
            carry their label scaling (``Task.shift``, ``Task.scale``).
        hparams: any keys of ``PLEConfig`` (defaults and validation there), or a validated
            ``PLEConfig``; parsed once here, stored resolved in ``self.resolved`` (a plain dict: what
            trials store) and in checkpoints.
    """

    def __init__(self, schema: Mapping[str, Any] | Schema, hparams: Mapping[str, Any] | PLEConfig | None = None) -> None:
        super().__init__()
        schema = Schema.from_dict(schema)
        config = hparams if isinstance(hparams, PLEConfig) else PLEConfig.from_dict(hparams)
        resolved = config.to_dict()
        self.save_hyperparameters({"schema": schema.to_dict(), "hparams": resolved})
        self.schema = schema
        self.resolved = resolved
        numeric = None
        if config.numeric_encoding != "standard" and schema.numeric:
            if not schema.numeric_quantiles and config.numeric_encoding != "periodic":
                raise ConfigError(f"numeric_encoding '{config.numeric_encoding}' needs the train split's quantiles in the schema; reload the data")
            quantiles = schema.numeric_quantiles or tuple((0.0,) * 65 for _ in schema.numeric)
            numeric = NumericEncoder(
                config.numeric_encoding, quantiles, config.embedding_dim, config.numeric_bins, config.periodic_frequencies, config.periodic_sigma,
            )  # fmt: skip
        groups = embedding_groups(config, len(schema.tasks))
        lists = [(f.max_len, f.vocab_size) for f in schema.lists]
        self.encoder = FeatureEncoder(schema.vocab_sizes, resolved["embedding_dim"], numeric, len(schema.numeric), groups, lists, config.list_pooling)
        self.head = OutputHead(schema.tasks, config.task_relation)
        self.model = build(config, self.encoder.out_dim, len(schema.tasks), self.head.cascade)
        self.weighting = make_weighting(resolved["loss_weighting"], schema.task_names, resolved, self.model)
        self._epoch_loss_sum = torch.zeros(len(schema.tasks))
        self._epoch_steps = 0
        self._eval_outputs: list[tuple[Tensor, Tensor]] = []
        self.last_metrics: dict[str, dict[str, float]] = {}

    def forward(self, cat: Tensor, num: Tensor) -> Tensor:
        """Raw outputs ``[B, T + D]``: logits for binary tasks (joint ones for dependent tasks),
        values in the label's units for regression tasks (the network predicts standardised
        values; see ``Task``), then each dependent task's conditional logit (``model.head``)."""
        return self.head(self.model(self.encoder(cat, num)))

    def predict_outputs(self, cat: Tensor, num: Tensor) -> Tensor:
        """Serving outputs ``[B, T + D]`` (``Schema.output_names``): probabilities for binary tasks,
        values for regression tasks, then the dependent tasks' conditional probabilities."""
        return self.head.serve(self(cat, num))

    def task_losses(self, outputs: Tensor, labels: Tensor) -> Tensor:
        """Per-task mean loss ``[T]`` over each task's labelled samples (NaN label = not in the
        task); for dependent tasks what the task relation compares (``OutputHead.training_targets``),
        plus AITM's calibrator."""
        calibration = self.head.calibration(outputs)
        outputs, labels = self.head.training_targets(outputs, labels)
        known = ~torch.isnan(labels)
        safe = torch.where(known, labels, torch.zeros_like(labels))
        bce = F.binary_cross_entropy_with_logits(outputs, safe, reduction="none")
        mse = ((outputs - safe) / self.head.label_scale) ** 2  # standardised units: every task's loss near 1 at start
        per_sample = torch.where(self.head.is_binary, bce, mse) * known
        losses = per_sample.sum(0) / known.sum(0).clamp_min(1)
        return losses if calibration is None else losses + self.resolved["calibration_weight"] * calibration

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        cat, num, labels = batch
        losses = self.task_losses(self(cat, num), labels)
        total = self.weighting(losses, self.model)
        extra = self.model.regularization()
        if extra is not None:
            total = total + DSELECT_ENTROPY * extra
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
            {f"train/{name}/loss": float(v) for name, v in zip(self.schema.task_names, mean)}, on_epoch=True, sync_dist=True
        )  # sync_dist: the mean over the ranks' shards (a no-op on one process)
        self._epoch_loss_sum = torch.zeros_like(mean)
        self._epoch_steps = 0

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        cat, num, labels = batch
        self._eval_outputs.append((self(cat, num).detach(), labels))

    def on_validation_epoch_end(self) -> None:
        outputs = torch.cat([o for o, _ in self._eval_outputs])
        labels = torch.cat([y for _, y in self._eval_outputs])
        self._eval_outputs = []
        if self.trainer.world_size > 1:  # each rank saw its block: metrics are the whole split's
            rows = len(self.trainer.datamodule.dataset.val)
            outputs, labels = (gather(t)[:rows] for t in (outputs, labels))
        outputs, labels = outputs.cpu(), labels.cpu()
        metrics = task_metrics(outputs, labels, self.schema.tasks)
        self.last_metrics["val"] = metrics
        self.log_dict({f"val/{t.name}/{t.metric}": metrics[t.name] for t in self.schema.tasks}, sync_dist=True)  # equal on every rank

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
        optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[self.resolved["optimizer"]]
        weighting_ids = {id(p) for p in self.weighting.parameters()}
        groups = [{"params": [p for p in self.parameters() if id(p) not in weighting_ids]}]
        if weighting_ids:
            groups.append({"params": list(self.weighting.parameters()), "weight_decay": 0.0})
        return optimizer(groups, lr=self.resolved["lr"], weight_decay=self.resolved["weight_decay"])


def gather(rows: Tensor) -> Tensor:
    """Every rank's ``rows`` (the same shape on each) concatenated in rank order."""
    parts = [torch.empty_like(rows) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, rows.contiguous())
    return torch.cat(parts)
