"""ple-search: multi-objective architecture search for PLE multi-task models.

The public names below load on first use (PEP 562), so commands that never train (``--help``,
``pareto``, ``studies``, ``export``) do not pay for importing torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

from ple_search._version import __version__
from ple_search.core.errors import ConfigError, DataError, PLESearchError, StorageError, TrialFailed

_LAZY = {
    "PLE": "ple_search.model.ple",
    "PLEModule": "ple_search.train.module",
    "build_module": "ple_search.serve.production",
    "load_trained": "ple_search.serve.production",
    "load_config": "ple_search.serve.exported",
}

__all__ = [
    "PLE",
    "PLEModule",
    "build_module",
    "load_config",
    "load_trained",
    "ConfigError",
    "DataError",
    "PLESearchError",
    "StorageError",
    "TrialFailed",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ple_search' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
