"""Optuna storages opened by URL, with errors users can act on and passwords never shown."""

from __future__ import annotations

import re
from pathlib import Path

import optuna

from ple_search.errors import StorageError

DEFAULT_STORAGE = "sqlite:///results/ple-search.db"
_PASSWORD = re.compile(r"(?P<head>://[^:/@]*:)(?P<password>[^@]*)@")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    return _PASSWORD.sub(lambda m: f"{m.group('head')}***@", url)


def _scrub(text: str, url: str) -> str:
    match = _PASSWORD.search(url)
    if match and match.group("password"):
        text = text.replace(match.group("password"), "***")
    return text.replace(url, mask_url(url))


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An ``RDBStorage`` for ``url`` (SQLite's folder is created); failures are ``StorageError``s."""
    if "://" not in url:
        raise StorageError(f"storage URL {mask_url(url)!r} is malformed: expected e.g. sqlite:///results/ple-search.db or postgresql://user:password@host/db")
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # SQLAlchemy and drivers raise many types; all mean "cannot open"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"cannot open storage {mask_url(url)}: {_scrub(reason, url)}") from None


def load_study(name: str, storage: optuna.storages.BaseStorage, **kwargs) -> optuna.Study:
    """An existing study, or a ``StorageError`` listing the studies that do exist."""
    try:
        return optuna.load_study(study_name=name, storage=storage, **kwargs)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        raise StorageError(f"no study named '{name}' in this storage; studies: {names or 'none'}") from None
