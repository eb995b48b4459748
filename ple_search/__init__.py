"""ple-search: multi-objective architecture search for PLE multi-task models."""

from ple_search.errors import ConfigError, DataError, PLESearchError, StorageError, TrialFailed
from ple_search.model import PLE
from ple_search.module import PLEModule

__version__ = "0.1.0"

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
