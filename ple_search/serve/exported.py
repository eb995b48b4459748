"""The exported config: one self-contained YAML file (``ple-search export`` writes it, ``train``
reads it) with the hyperparameters, the dataset and its schema, the objectives, the epoch budget
to train with and where it came from (``provenance``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ple_search.core.errors import ConfigError
from ple_search.core.files import atomic_write_text, read_yaml
from ple_search.model.hparams import PLEConfig

CONFIG_KEYS = {"ple_search_version", "hparams", "dataset", "split", "schema", "objectives", "training", "provenance"}


def write_config(config: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and validate an exported config (``yaml.safe_load``); problems are ``ConfigError``s."""
    path = Path(path)
    config = read_yaml(path, "config")
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a config must be a mapping with keys {sorted(CONFIG_KEYS)}")
    missing = sorted({"hparams", "dataset", "schema", "training"} - set(config))
    unknown = sorted(set(config) - CONFIG_KEYS)
    if missing or unknown:
        raise ConfigError(f"{path}: {'missing' if missing else 'unknown'} key '{(missing or unknown)[0]}'; a config has {sorted(CONFIG_KEYS)}")
    try:
        config["hparams"] = PLEConfig.from_dict(config["hparams"]).to_dict()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    training = config["training"]
    if not isinstance(training, dict):
        raise ConfigError(f"{path}: training must be a mapping with max_epochs, patience and optionally trial_processes")
    for key in ("max_epochs", "patience", "trial_processes"):
        value = training.get(key, 1 if key == "trial_processes" else None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{path}: training.{key} = {value!r} must be an integer >= 1")
    return config
