"""``PLEConfig``: every hyperparameter of ``PLEModule`` with its default, type and validation, in
one place (as nanoGPT's ``GPTConfig``). The architectures (``model.architectures``), the training
module, search spaces and exported configs all read it; validating a config never builds a model
and never imports torch, so commands that only read studies or configs stay fast.

The symbols of the PLE paper (Tang et al., RecSys 2020) where they exist: ``levels`` is N, the
number of extraction layers; ``experts_per_task`` is m_k, the task-specific experts of each task
per level; ``shared_experts`` is m_s; the gate of task k mixes its m_k experts and the m_s shared
ones (g^k in the paper), and ``tower_hidden`` are the layers of tower t^k.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from ple_search.core.errors import ConfigError
from ple_search.model.architectures import ARCHITECTURES
from ple_search.model.checks import _invalid, _number, check_int, check_widths

ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "elu", "leaky_relu")
EXPERT_TYPES = ("mlp", "cross")
GATE_TYPES = ("softmax", "dselect_k")
EMBEDDING_SHARING = ("shared", "task_specific", "shared_and_specific")
TASK_RELATIONS = ("independent", "esmm", "aitm")  # model.relations.RELATIONS names these classes (asserted there)
LIST_POOLINGS = ("mean", "sum")
OPTIMIZERS = ("adam", "adamw")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")
NUMERIC_ENCODINGS = ("standard", "quantile", "piecewise", "periodic")
BIN_CHOICES = (2, 4, 8, 16, 32, 64)
WIDTH_KEYS = ("expert_hidden", "gate_hidden", "tower_hidden")
# Task balancing schemes (``train.weighting``: one class each) and the keys each reads. Named here,
# torch-free, so that validating a config needs no torch; a test checks the classes agree.
LOSS_WEIGHTINGS: dict[str, tuple[str, ...]] = {
    "equal": (), "fixed": ("task_weights",), "scheduled": ("task_weights", "schedule_gamma"), "uncertainty": (),
    "dwa": ("dwa_temperature",), "gradnorm": ("gradnorm_alpha",), "rlw": (), "pcgrad": (), "mgda": (),
    "cagrad": ("cagrad_c",), "aligned": (), "nash": (), "famo": ("famo_lr", "famo_gamma"),
}  # fmt: skip
# Every key that configures task balancing: what a single-task space drops (``evaluate.baselines``).
WEIGHTING_KEYS: tuple[str, ...] = ("loss_weighting", *sorted({key for keys in LOSS_WEIGHTINGS.values() for key in keys}))


@dataclass
class PLEConfig:
    """Every hyperparameter, its default and its meaning (the README's table is this)."""

    # The model: an entry of model.architectures.ARCHITECTURES, and the keys of PLE (the only one).
    architecture: str = "ple"
    levels: int = 2  # N extraction levels; 1 = CGC
    experts_per_task: int = 3  # m_k task-specific experts per task per level; 0 = MMoE
    shared_experts: int = 2  # m_s shared experts per level
    expert_type: str = "mlp"  # mlp | cross (DCN-V2 cross layers, then the expert MLP)
    cross_layers: int = 2  # cross experts: cross layers before the MLP
    cross_rank: int = 0  # cross experts: 0 = full-rank W [d, d]; r >= 1 = low-rank U [d, r] V [r, d]
    expert_hidden: tuple[int, ...] = (16,)  # expert MLP widths
    gate_type: str = "softmax"  # softmax (per row) | dselect_k (Hazimeh et al., 2021: static, on at most gate_k experts)
    gate_k: int = 2  # dselect_k: experts a gate may select
    gate_hidden: tuple[int, ...] = ()  # softmax gates: MLP widths before the softmax
    # Which embedding tables the experts read (STEM, Su et al., AAAI 2024): one shared set; a set per
    # task (its experts and gate) plus one for the shared experts; or that and STEM's all-forward
    # gates (every task's gate mixes every expert, other tasks' experts with their gradient stopped).
    embedding_sharing: str = "shared"  # shared | task_specific | shared_and_specific
    tower_hidden: tuple[int, ...] = (8,)  # tower MLP widths before the output
    dropout: float = 0.0
    activation: str = "relu"
    # The module around it (PLEModule).
    embedding_dim: int = 4  # per categorical feature (and per numeric one, with a numeric encoding)
    list_pooling: str = "mean"  # list-valued features: mean | sum of the items' embeddings
    numeric_encoding: str = "standard"  # standard | quantile | piecewise | periodic (Gorishniy et al., 2022)
    numeric_bins: int = 16  # quantile, piecewise: bins at train-split quantiles (a divisor of 64)
    periodic_frequencies: int = 16  # periodic: k learned frequencies per feature
    periodic_sigma: float = 1.0  # periodic: std of the frequencies' initialisation
    # Dependent tasks (``depends_on`` in the data): how a conversion's output relates to its click's
    # (model.relations): independent (trained on the clicks only) | esmm (entire space) | aitm (transfer
    # along the cascade, plus the calibrator with this weight).
    task_relation: str = "esmm"
    calibration_weight: float = 0.6  # aitm: weight of max(p_child - p_parent, 0) in the child's loss (the paper's alpha)
    loss_weighting: str = "equal"  # a name of LOSS_WEIGHTINGS (train.weighting.SCHEMES)
    task_weights: Any = None  # fixed weights / scheduled w_k0 (number, list or {task: w})
    schedule_gamma: float = 0.95  # scheduled: w_k(t) = w_k0 * gamma_k^t per epoch
    dwa_temperature: float = 2.0  # DWA (Liu et al. 2019)
    gradnorm_alpha: float = 1.5  # GradNorm (Chen et al. 2018)
    cagrad_c: float = 0.5  # CAGrad (Liu et al. 2021): how far from the average gradient, c >= 0
    famo_lr: float = 0.025  # FAMO (Liu et al. 2023): learning rate of the task logits (beta)
    famo_gamma: float = 0.01  # FAMO: weight decay of the task logits (gamma)
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    batch_size: int = 1024
    precision: str = "32"  # Lightning's: 32, bf16-mixed (CPU and GPU), 16-mixed (GPU)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, hparams: Mapping[str, Any] | None = None, *, allowed: tuple[str, ...] | None = None) -> "PLEConfig":
        """Defaults overridden by ``hparams``, validated; unknown keys (outside ``allowed``, by
        default every field) are a ``ConfigError`` naming the first."""
        hparams = dict(hparams or {})
        keys = allowed or tuple(cls.keys())
        unknown = sorted(set(hparams) - set(keys))
        if unknown:
            raise ConfigError(f"unknown hyperparameter '{unknown[0]}': allowed keys are {', '.join(keys)}")
        config = cls(**hparams)
        config.validate()
        return config

    def validate(self) -> None:
        """Every key's type and range; the first problem is a ``ConfigError`` naming the key."""
        for key in WIDTH_KEYS:
            setattr(self, key, check_widths(key, getattr(self, key), allow_empty=key != "expert_hidden"))
        check_int("embedding_dim", self.embedding_dim, 1)
        if self.numeric_encoding not in NUMERIC_ENCODINGS:
            raise _invalid("numeric_encoding", self.numeric_encoding, f"must be one of {list(NUMERIC_ENCODINGS)}")
        if self.numeric_bins not in BIN_CHOICES:
            raise _invalid("numeric_bins", self.numeric_bins, f"must be one of {list(BIN_CHOICES)} (bins sit at 1/64 quantiles)")
        check_int("periodic_frequencies", self.periodic_frequencies, 1)
        self.periodic_sigma = _number("periodic_sigma", self.periodic_sigma)
        check_int("batch_size", self.batch_size, 1)
        for key, allow_zero in (("lr", False), ("weight_decay", True), ("dwa_temperature", False), ("gradnorm_alpha", True), ("cagrad_c", True), ("famo_lr", False), ("famo_gamma", True)):
            setattr(self, key, _number(key, getattr(self, key), allow_zero=allow_zero))
        if self.precision not in PRECISIONS:
            raise _invalid("precision", self.precision, f"must be one of {list(PRECISIONS)}")
        if self.optimizer not in OPTIMIZERS:
            raise _invalid("optimizer", self.optimizer, f"must be one of {list(OPTIMIZERS)}")
        if self.list_pooling not in LIST_POOLINGS:
            raise _invalid("list_pooling", self.list_pooling, f"must be one of {list(LIST_POOLINGS)}")
        if self.task_relation not in TASK_RELATIONS:
            raise _invalid("task_relation", self.task_relation, f"must be one of {list(TASK_RELATIONS)}")
        self.calibration_weight = _number("calibration_weight", self.calibration_weight, allow_zero=True)
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise _invalid("loss_weighting", self.loss_weighting, f"must be one of {sorted(LOSS_WEIGHTINGS)}")
        self.validate_model()

    def validate_model(self) -> None:
        """The model's keys alone: the generic ones here, the architecture's own combinations in
        its registry entry."""
        if self.architecture not in ARCHITECTURES:
            raise _invalid("architecture", self.architecture, f"must be one of {sorted(ARCHITECTURES)}")
        ARCHITECTURES[self.architecture].check(self)
        for key in WIDTH_KEYS:
            setattr(self, key, check_widths(key, getattr(self, key), allow_empty=key != "expert_hidden"))
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise _invalid("dropout", self.dropout, "must be a number in [0, 1)")
        if self.gate_type not in GATE_TYPES:
            raise _invalid("gate_type", self.gate_type, f"must be one of {list(GATE_TYPES)}")
        check_int("gate_k", self.gate_k, 1)
        if self.embedding_sharing not in EMBEDDING_SHARING:
            raise _invalid("embedding_sharing", self.embedding_sharing, f"must be one of {list(EMBEDDING_SHARING)}")
        if self.activation not in ACTIVATIONS:
            raise _invalid("activation", self.activation, f"must be one of {sorted(ACTIVATIONS)}")

    def to_dict(self) -> dict[str, Any]:
        """The plain dict stored in trials, checkpoints and exports (widths as lists)."""
        data = dataclasses.asdict(self)
        for key in WIDTH_KEYS:
            data[key] = list(data[key])
        return data

    def model_keys(self) -> tuple[str, ...]:
        """The keys this config's architecture takes."""
        return ARCHITECTURES[self.architecture].keys


DEFAULTS: dict[str, Any] = PLEConfig().to_dict()


def resolve_hparams(hparams: Mapping[str, Any] | None) -> dict[str, Any]:
    """``hparams`` over the defaults, validated, as a plain dict (what trials store)."""
    return PLEConfig.from_dict(hparams).to_dict()
