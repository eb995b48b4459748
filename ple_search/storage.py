"""Optuna storages opened by URL or journal path, with errors users can act on and passwords never shown.

* ``results/ple-search.journal`` (the default) or any path ending in ``.journal``/``.log``: Optuna's
  ``JournalFileBackend``, the storage Optuna recommends for several processes on one machine.
* Any SQLAlchemy URL (``sqlite:///...``, ``postgresql://user:password@host/db``, ...): ``RDBStorage``
  with heartbeats, so a trial of a killed worker is failed after the grace period and retried once.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import Callable, TypeVar

import optuna
from optuna.storages.journal import JournalFileBackend

from ple_search.errors import StorageError

DEFAULT_STORAGE = "results/ple-search.journal"
JOURNAL_SUFFIXES = (".journal", ".log")
_PASSWORD = re.compile(r"(?P<head>://[^:/@]*:)(?P<password>[^@]*)@")
T = TypeVar("T")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    return _PASSWORD.sub(lambda m: f"{m.group('head')}***@", url)


def _scrub(text: str, url: str) -> str:
    match = _PASSWORD.search(url)
    if match and match.group("password"):
        text = text.replace(match.group("password"), "***")
    return text.replace(url, mask_url(url))


def is_journal(url: str) -> bool:
    return "://" not in url and url.endswith(JOURNAL_SUFFIXES)


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None) -> optuna.storages.BaseStorage:
    """The storage behind ``url``; with ``heartbeat_interval`` (RDB only) running trials send
    heartbeats and stale ones are failed and retried once. Failures are ``StorageError``s."""
    if is_journal(url):
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(url))
        except OSError as exc:
            raise StorageError(f"cannot open journal storage {url}: {exc}") from None
    if "://" not in url:
        raise StorageError(
            f"storage {mask_url(url)!r} is malformed: expected a journal file (*.journal) or a URL such as "
            "sqlite:///results/ple-search.db or postgresql://user:password@host/db"
        )
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if heartbeat_interval:
        kwargs = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period or 2 * heartbeat_interval,
            "heartbeat_stale_trial_callback": _retry_once(),
        }
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}

    def create() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs)

    # Workers starting together on an empty database race to create Optuna's schema ("duplicate
    # key", "relation already exists"); the losers find it created on a later attempt.
    for attempt in range(4):
        try:
            return create()
        except (IntegrityError, ProgrammingError):
            time.sleep(0.5 * (attempt + 1))
        except Exception as exc:  # SQLAlchemy and drivers raise many types; all mean "cannot open"
            raise StorageError(f"cannot open storage {mask_url(url)}: {_scrub(_first_line(exc), url)}") from None
    try:
        return create()
    except Exception as exc:
        raise StorageError(f"cannot open storage {mask_url(url)}: {_scrub(_first_line(exc), url)}") from None


def _retry_once() -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def transient_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the storage is unreachable right now"."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    return (OperationalError, DBAPIError, OSError)


def with_retry(action: Callable[[], T], budget_seconds: float, what: str, url: str) -> T:
    """``action()``, retried with exponential backoff (1 s doubling to 30 s) while the storage is
    unreachable, for at most ``budget_seconds``; then a ``StorageError``."""
    start, delay = time.monotonic(), 1.0
    while True:
        try:
            return action()
        except transient_errors() as exc:
            if time.monotonic() - start + delay > budget_seconds:
                reason = _scrub(_first_line(exc), url)
                raise StorageError(
                    f"storage {mask_url(url)} unreachable for {budget_seconds:.0f}s while {what}: {reason}; "
                    "finished trials are kept, rerun the same command to resume"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def load_study(name: str, storage: optuna.storages.BaseStorage, **kwargs) -> optuna.Study:
    """An existing study, or a ``StorageError`` listing the studies that do exist."""
    try:
        return optuna.load_study(study_name=name, storage=storage, **kwargs)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        raise StorageError(f"no study named '{name}' in this storage; studies: {names or 'none'}") from None
