"""ple-search: multi-objective architecture search for PLE multi-task models."""

from ple_search._version import __version__
from ple_search.errors import ConfigError, DataError, PLESearchError, StorageError, TrialFailed
from ple_search.model import PLE
from ple_search.module import PLEModule


__all__ = [
    "PLE",
    "PLEModule",
    "ConfigError",
    "DataError",
    "PLESearchError",
    "StorageError",
    "TrialFailed",
    "__version__",
]
