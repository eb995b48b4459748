"""ple-search: multi-objective architecture search for PLE multi-task models."""

from ple_search._version import __version__
from ple_search.errors import ConfigError, DataError, PLESearchError, StorageError, TrialFailed
from ple_search.export import load_config
from ple_search.model import PLE
from ple_search.module import PLEModule
from ple_search.production import build_module, load_trained


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
