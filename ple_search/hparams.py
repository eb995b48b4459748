"""The full hyperparameter dict of ``PLEModule``: defaults, allowed keys and validation."""

from __future__ import annotations

from typing import Any, Mapping

from ple_search.errors import ConfigError
from ple_search.model import MODEL_KEYS, check_int, check_widths

DEFAULTS: dict[str, Any] = {
    "levels": 2,
    "experts_per_task": 3,
    "shared_experts": 2,
    "expert_hidden": [16],
    "gate_hidden": [],
    "tower_hidden": [8],
    "dropout": 0.0,
    "activation": "relu",
    "embedding_dim": 4,
    "loss_weighting": "equal",
    "task_weights": None,
    "schedule_gamma": 0.95,
    "dwa_temperature": 2.0,
    "gradnorm_alpha": 1.5,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "optimizer": "adam",
    "batch_size": 1024,
}

OPTIMIZERS = ("adam", "adamw")
WIDTH_KEYS = ("expert_hidden", "gate_hidden", "tower_hidden")


def _positive_float(hp: dict[str, Any], key: str, allow_zero: bool = False) -> None:
    value = hp[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"hyperparameter '{key}' = {value!r} is invalid: must be a number {bound}")
    hp[key] = float(value)


def resolve_hparams(hparams: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge ``hparams`` over the defaults and validate every key that is not the model's own
    (``PLE`` validates those). Unknown keys raise a ``ConfigError`` naming them."""
    from ple_search.weighting import SCHEMES

    hparams = dict(hparams or {})
    unknown = sorted(set(hparams) - set(DEFAULTS))
    if unknown:
        raise ConfigError(
            f"unknown hyperparameter '{unknown[0]}': allowed keys are {', '.join(DEFAULTS)}"
        )
    hp = {**DEFAULTS, **hparams}
    for key in WIDTH_KEYS:
        hp[key] = list(check_widths(key, hp[key], allow_empty=key != "expert_hidden"))
    check_int("embedding_dim", hp["embedding_dim"], 1)
    check_int("batch_size", hp["batch_size"], 1)
    _positive_float(hp, "lr")
    _positive_float(hp, "weight_decay", allow_zero=True)
    _positive_float(hp, "dwa_temperature")
    _positive_float(hp, "gradnorm_alpha", allow_zero=True)
    if hp["optimizer"] not in OPTIMIZERS:
        raise ConfigError(
            f"hyperparameter 'optimizer' = {hp['optimizer']!r} is invalid: must be one of {list(OPTIMIZERS)}"
        )
    if hp["loss_weighting"] not in SCHEMES:
        raise ConfigError(
            f"hyperparameter 'loss_weighting' = {hp['loss_weighting']!r} is invalid: "
            f"must be one of {sorted(SCHEMES)}"
        )
    return hp


def model_hparams(hp: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of a resolved dict that ``PLE`` takes."""
    return {key: hp[key] for key in MODEL_KEYS}
