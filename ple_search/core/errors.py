"""Typed exceptions: library code raises these, the CLI turns them into one-line messages."""

from __future__ import annotations


class PLESearchError(Exception):
    """Base class of every error ple-search reports to a user."""


class ConfigError(PLESearchError, ValueError):
    """A hyperparameter dict, search space or config file is invalid."""


class DataError(PLESearchError, ValueError):
    """A data file, dataset spec or column is missing, unreadable or invalid."""


class StorageError(PLESearchError):
    """An Optuna storage cannot be opened, or a study in it cannot be used."""


class TrialFailed(PLESearchError):
    """A trial cannot finish (non-finite loss, unbuildable config); the study goes on."""


class RankLost(TrialFailed):
    """A process of a multi-process trial other than rank 0 was killed (a signal: the OOM killer,
    an operator): not the config's doing, so the trial is failed and its config run once more."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM during a search. A ``BaseException``, like ``KeyboardInterrupt``, but
    Lightning re-raises it where it turns ``KeyboardInterrupt`` into ``sys.exit(1)``."""
