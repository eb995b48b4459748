"""Data sources behind one schema: ``load("census" | "synthetic" | path/to/spec.yaml, **options)``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ple_search.data.schema import Schema, Task
from ple_search.core.errors import DataError

if TYPE_CHECKING:
    from ple_search.data.dataset import Dataset

# Tensors and Lightning load on first use (PEP 562): the schema alone stays free of torch, for the
# commands that only read studies.
_LAZY = {"Dataset": "dataset", "Split": "dataset", "PLEDataModule": "batches", "TensorBatches": "batches"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"ple_search.data.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ple_search.data' has no attribute {name!r}")

__all__ = ["load", "load_described", "Dataset", "Split", "Schema", "Task", "PLEDataModule", "TensorBatches", "SOURCES"]

SOURCES = ("census", "synthetic", "recsys")


def load(source: str, **options: Any) -> "Dataset":
    """Load a dataset: preprocessing fitted on train, every split as tensors, one schema.

    Args:
        source: ``census``, ``synthetic`` or the path of a YAML dataset spec (``table``).
        options: the source's own: census ``tasks, data_dir, min_count, download, use_cache``;
            synthetic (the MMoE paper's generator) ``n`` samples, ``d`` input dimension, ``p`` task
            correlation, ``c`` scale, ``m`` number of sine components, ``seed``, ``fractions``;
            recsys (a recommender's logs, ``data.recsys``) ``n`` impressions, ``users``, ``items``,
            ``zipf``, ``relatedness``, ``days``, ``click_rate``, ``conversion_rate``, ``seed``, ...;
            a spec ``use_cache``. Unknown options are a ``DataError`` listing the allowed ones.
    """
    if source == "census":
        from ple_search.data.census import load_census

        loader = load_census
    elif source == "synthetic":
        from ple_search.data.synthetic import load_synthetic

        loader = load_synthetic
    elif source == "recsys":
        from ple_search.data.recsys import load_recsys

        loader = load_recsys
    elif source.endswith((".yaml", ".yml")) or Path(source).is_file():
        from ple_search.data.table import load_table

        return _call(load_table, source, Path(source), **options)
    else:
        raise DataError(f"unknown dataset {source!r}: use {', '.join(SOURCES)} or the path of a YAML dataset spec")
    return _call(loader, source, **options)


def _call(loader: Any, source: str, *args: Any, **options: Any) -> "Dataset":
    import inspect

    allowed = [p for p in inspect.signature(loader).parameters if p != "spec_path"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataError(f"dataset {source!r}: unknown option '{unknown[0]}'; allowed: {allowed}")
    return loader(*args, **options)


def with_data_dir(described: dict[str, Any], data_dir: str | None) -> dict[str, Any]:
    """The description (``{name, options}``) with ``data_dir`` (where the census files are) among
    its options; unchanged without one."""
    if data_dir is None:
        return described
    if described["name"] != "census":
        raise DataError(f"--data-dir applies to the census dataset, not {described['name']!r}")
    if not Path(data_dir).expanduser().is_dir():
        raise DataError(f"--data-dir {data_dir}: no such folder; name the folder holding census-income.data and census-income.test")
    return {**described, "options": {**(described.get("options") or {}), "data_dir": data_dir}}


def absolute_spec(described: dict[str, Any]) -> dict[str, Any]:
    """The description with a dataset spec path made absolute (from the working directory), so it
    names the same file from anywhere; census and synthetic unchanged."""
    name = str(described["name"])
    if name.endswith((".yaml", ".yml")):
        name = str(Path(name).expanduser().resolve())
    return {**described, "name": name}


def load_described(described: dict[str, Any], data_dir: str | None = None) -> "Dataset":
    """Load the dataset a search space or exported config describes (``{name, options}``);
    ``data_dir`` overrides where the census files are."""
    described = with_data_dir(described, data_dir)
    return load(described["name"], **dict(described.get("options") or {}))
