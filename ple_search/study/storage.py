"""Optuna storages opened by URL or journal path, with errors users can act on and passwords never shown.

* ``results/ple-search.journal`` (the default) or any path ending in ``.journal``/``.log``: Optuna's
  ``JournalFileBackend``, the storage Optuna recommends for several processes on one machine. A
  torn final record (a crash or a full disk in the middle of a write) is set aside into a side file
  when the journal is opened, so it never ends up in the middle of the file; a damaged record
  anywhere else is one error naming the file and line.
* Any SQLAlchemy URL (``sqlite:///...``, ``postgresql://user:password@host/db``, ...): an
  ``RDBStorage`` with heartbeats (a killed worker's trial is failed after the grace period and
  retried once) whose every call is retried with backoff while the database is unreachable, for up
  to ``retry_seconds``, so a restarted server loses no trial.
* ``grpc://HOST:PORT``: Optuna's gRPC storage proxy in front of either (``ple-search
  storage-proxy``), its outages retried the same way, with heartbeats of ple-search's own kept
  through it (Optuna's proxy has none), so a worker that dies or hangs on any machine has its
  trial failed after the grace period and retried once.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from ple_search.core.errors import StorageError

DEFAULT_STORAGE = "results/ple-search.journal"
DEFAULT_RETRY_SECONDS = 300.0
JOURNAL_SUFFIXES = (".journal", ".log")
_PASSWORD = re.compile(r"(?P<head>://[^:/@]*:)(?P<password>[^@]*)@")
_RECORD_START = b'{"op_code":'
T = TypeVar("T")
Notify = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    return _PASSWORD.sub(lambda m: f"{m.group('head')}***@", url)


def scrub(text: str, url: str) -> str:
    """``text`` (an error message) with ``url``'s password replaced by ``***`` wherever it appears."""
    match = _PASSWORD.search(url)
    if match and match.group("password"):
        text = text.replace(match.group("password"), "***")
    return text.replace(url, mask_url(url))


def is_journal(url: str) -> bool:
    return "://" not in url and url.endswith(JOURNAL_SUFFIXES)


def local_files(url: str) -> list[Path]:
    """The file a journal or SQLite storage URL names and the folders above it that do not exist
    yet (what opening it would create), deepest first; [] for a server."""
    if is_journal(url):
        path = Path(url)
    elif url.startswith("sqlite:///") and url[len("sqlite:///") :] not in ("", ":memory:"):
        path = Path(url[len("sqlite:///") :])
    else:
        return []
    created = [path] if not path.exists() else []
    folder = path.parent
    while created and not folder.exists():
        created.append(folder)
        folder = folder.parent
    return created


def remove_if_unused(created: list[Path], storage: optuna.storages.BaseStorage) -> None:
    """Undo ``local_files``: a storage file this run created and left without any study is removed,
    with the folders created for it, so a refused run leaves nothing on disk."""
    if not created:
        return
    try:
        if optuna.get_all_study_names(storage):
            return
    except Exception:  # noqa: BLE001 - an unreadable file is not ours to judge: keep it
        return
    for path in created:
        try:
            path.unlink() if path.is_file() else path.rmdir()
        except OSError:
            return


def open_storage(
    url: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    *,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
    notify: Notify = _stderr,
) -> optuna.storages.BaseStorage:
    """The storage behind ``url``. Failures to open it are ``StorageError``s.

    Args:
        url: a journal file path (``*.journal``) or an SQLAlchemy URL.
        heartbeat_interval: RDB and gRPC proxy: running trials send heartbeats this often
            (seconds), and trials without one for ``grace_period`` (default twice the interval)
            are failed and retried once.
        retry_seconds: RDB only: how long each storage call keeps retrying an unreachable
            database before it raises a ``StorageError``.
        notify: where one-line notices go (a torn journal record set aside, an outage and its end).
    """
    if is_journal(url):
        return _open_journal(Path(url), notify)
    if url.startswith(GRPC_SCHEME):
        return open_proxy(url, heartbeat_interval, grace_period, retry_seconds=retry_seconds, notify=notify)
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
            storage = ResilientRDBStorage(url, engine_kwargs=engine, **kwargs)
        storage.configure_retry(retry_seconds, url, notify)
        return storage

    # Workers starting together on an empty database race to create Optuna's schema ("duplicate
    # key", "relation already exists"); the losers find it created on a later attempt.
    # SQLite says "table ... already exists" as an OperationalError.
    for attempt in range(4):
        try:
            return create()
        except Exception as exc:  # SQLAlchemy and drivers raise many types; all mean "cannot open"
            if not isinstance(exc, (IntegrityError, ProgrammingError)) and "already exists" not in str(exc):
                raise StorageError(f"cannot open storage {mask_url(url)}: {scrub(_first_line(exc), url)}") from None
            time.sleep(0.5 * (attempt + 1))
    try:
        return create()
    except Exception as exc:
        raise StorageError(f"cannot open storage {mask_url(url)}: {scrub(_first_line(exc), url)}") from None


# ----------------------------------------------------------------------------- journal files


def _open_journal(path: Path, notify: Notify) -> optuna.storages.JournalStorage:
    """Open a journal file, setting a torn final record aside first (under the journal's own lock,
    so a record another process is writing right now is never mistaken for a torn one)."""
    if path.is_dir():
        raise StorageError(f"journal storage {path} is a directory; pass a file such as {path / 'ple-search.journal'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(path))
        lock = JournalFileSymlinkLock(str(path))
        lock.acquire()
        try:
            set_aside = repair_torn_tail(path)
        finally:
            lock.release()
    except OSError as exc:
        raise StorageError(f"cannot open journal storage {path}: {exc}") from None
    if set_aside is not None:
        side, size = set_aside
        notify(f"{path}: set aside a torn final record ({size} bytes, left by an interrupted write) in {side}; the study continues")
    with open(path, "rb") as handle:
        first = handle.readline()
    if first and not _is_record(first):  # Optuna would silently append to any other file
        raise StorageError(describe_damage(path))
    try:
        return optuna.storages.JournalStorage(backend)
    except Exception:  # Optuna raises JSONDecodeError, ValueError, KeyError or TypeError on bad records
        raise StorageError(describe_damage(path)) from None


def repair_torn_tail(path: Path) -> tuple[Path, int] | None:
    """Move an incomplete final record (no closing newline, or undecodable) into a side file
    ``PATH.torn-TIMESTAMP`` and cut it from the journal; returns (side file, bytes) or None.
    A file that does not look like a journal is left untouched (``describe_damage`` reports it)."""
    size = path.stat().st_size
    if size == 0:
        return None
    with open(path, "rb") as handle:
        first = handle.readline()
        handle.seek(max(0, size - (1 << 20)))
        tail = handle.read()
    end = len(tail) - 1 if tail.endswith(b"\n") else len(tail)
    newline = tail.rfind(b"\n", 0, end)
    if newline < 0 and len(tail) < size:
        return None  # a final line over 1 MiB: no journal writes those
    last = tail[newline + 1 :]
    offset = size - len(tail) + newline + 1
    if last.endswith(b"\n") and _is_record(last):
        return None
    starts_like_journal = _is_record(first) or (offset == 0 and _looks_torn(first))
    if not starts_like_journal or not _looks_torn(last):
        return None
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    side = path.with_name(f"{path.name}.torn-{stamp}")
    with open(side, "wb") as handle:
        handle.write(last)
        handle.flush()
        os.fsync(handle.fileno())
    os.truncate(path, offset)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return side, len(last)


def _looks_torn(fragment: bytes) -> bool:
    """A record cut short: the start of ``{"op_code":...`` or, after a power loss, zero bytes."""
    head = fragment[: len(_RECORD_START)]
    return head == _RECORD_START[: len(head)] or not fragment.strip(b"\0\n")


def _is_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "op_code" in record


def describe_damage(path: Path) -> str:
    """One line naming the first line of ``path`` that is not a journal record."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not _is_record(line):
                shown = line[:40].decode("utf-8", "replace").rstrip()
                if number == 1:
                    return (
                        f"{path}: not an Optuna journal file (line 1 starts {shown!r}); pass another "
                        "--storage file, or an RDB URL such as sqlite:///results/ple-search.db"
                    )
                return (
                    f"{path}: line {number} is not a journal record (starts {shown!r}); the file is damaged: "
                    "restore it from a backup, or cut that line out with a text editor to keep the records around it"
                )
    return f"{path}: the journal cannot be read; restore it from a backup"


# ----------------------------------------------------------------------------- databases


class ResilientRDBStorage(optuna.storages.RDBStorage):
    """``RDBStorage`` whose calls wait out a database outage: each public storage call is retried
    with backoff (1 s doubling to 10 s) while the database is unreachable, for at most
    ``retry_seconds``, then raises a ``StorageError``. A heartbeat that cannot be sent is skipped
    (the next one is sent as usual), so a short outage neither kills the heartbeat thread nor
    fails the running trial."""

    _retry_seconds = DEFAULT_RETRY_SECONDS
    _url = ""
    _notify: Notify = staticmethod(_stderr)

    def configure_retry(self, retry_seconds: float, url: str, notify: Notify) -> None:
        self._retry_seconds, self._url, self._notify = retry_seconds, url, notify

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            if not is_transient(exc):
                raise


def _retrying(name: str, base: type = optuna.storages.RDBStorage) -> Callable[..., Any]:
    parent = getattr(base, name)

    @functools.wraps(parent)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return with_retry(lambda: parent(self, *args, **kwargs), self._retry_seconds, name.replace("_", " "), self._url, notify=self._notify)

    return method


RETRIED_CALLS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
    "get_study_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
    "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id", "get_trial_param",
    "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
    "set_trial_system_attr", "get_trial", "get_all_trials", "get_n_trials", "get_best_trial",
    "get_trial_params", "get_trial_user_attrs", "get_trial_system_attrs", "_get_stale_trial_ids",
    "check_trial_is_updatable",
)  # fmt: skip
for _name in RETRIED_CALLS:
    setattr(ResilientRDBStorage, _name, _retrying(_name))


# ----------------------------------------------------------------------------- the gRPC proxy

GRPC_SCHEME = "grpc://"
PROXY_HEARTBEAT = "ple_search:heartbeat"  # a running trial's last heartbeat through the proxy (Unix seconds)
PROXY_READY_SECONDS = 10.0


def proxy_address(url: str) -> tuple[str, int]:
    """``(host, port)`` of a ``grpc://HOST:PORT`` storage URL; a malformed one is a ``StorageError``."""
    rest = url[len(GRPC_SCHEME) :].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StorageError(f"storage {url!r} is malformed: expected grpc://HOST:PORT, e.g. grpc://127.0.0.1:13000 (`ple-search storage-proxy`)")
    return host, int(port)


_PROXY_CLASS: type | None = None


def _proxy_class() -> type:
    """``GrpcStorageProxy`` whose calls wait out a proxy outage like ``ResilientRDBStorage``'s
    (made on first use: grpc loads only for grpc:// storages)."""
    global _PROXY_CLASS
    if _PROXY_CLASS is None:
        from optuna.storages import GrpcStorageProxy
        from optuna.storages._heartbeat import BaseHeartbeat
        from optuna.trial import TrialState

        class ResilientGrpcStorage(GrpcStorageProxy, BaseHeartbeat):
            """Heartbeats Optuna's proxy lacks, kept where the proxy keeps everything else: a
            running trial's worker stamps it (system attribute ``PROXY_HEARTBEAT``, this
            machine's clock) every ``heartbeat_interval`` s, and a RUNNING trial whose last stamp
            is older than ``grace_period`` by the reader's clock is stale (``fail_stale_trials``:
            failed and retried once). The workers' clocks must agree within the grace period."""

            _retry_seconds, _url = DEFAULT_RETRY_SECONDS, ""
            _notify: Notify = staticmethod(_stderr)
            _interval: int | None = None
            _grace = 60

            def configure_retry(self, retry_seconds: float, url: str, notify: Notify) -> None:
                self._retry_seconds, self._url, self._notify = retry_seconds, url, notify

            def configure_heartbeat(self, interval: int | None, grace: int | None) -> None:
                self._interval, self._grace = interval, grace or 2 * (interval or 30)

            def record_heartbeat(self, trial_id: int) -> None:
                try:
                    GrpcStorageProxy.set_trial_system_attr(self, trial_id, PROXY_HEARTBEAT, time.time())
                except Exception as exc:  # a beat lost to an outage: the next one goes as usual
                    if not is_transient(exc):
                        raise

            def _get_stale_trial_ids(self, study_id: int) -> list[int]:
                now = time.time()
                running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                return [t._trial_id for t in running if now - t.system_attrs.get(PROXY_HEARTBEAT, now) > self._grace]

            def get_heartbeat_interval(self) -> int | None:
                return self._interval

            def get_heartbeat_stale_trial_callback(self) -> Any:
                return _retry_once() if self._interval else None

        for name in RETRIED_CALLS:
            if hasattr(GrpcStorageProxy, name):
                setattr(ResilientGrpcStorage, name, _retrying(name, GrpcStorageProxy))
        _PROXY_CLASS = ResilientGrpcStorage
    return _PROXY_CLASS


def open_proxy(
    url: str, heartbeat_interval: int | None = None, grace_period: int | None = None, *, retry_seconds: float = DEFAULT_RETRY_SECONDS,
    notify: Notify = _stderr,
) -> optuna.storages.BaseStorage:  # fmt: skip
    """The storage behind an Optuna gRPC storage proxy (``ple-search storage-proxy``); a proxy
    that does not answer within ``PROXY_READY_SECONDS`` is a ``StorageError``. With
    ``heartbeat_interval``, running trials send heartbeats through the proxy as they do to a
    database, and trials whose worker stopped sending them (on any machine) for ``grace_period``
    are failed and retried once (``ResilientGrpcStorage``)."""
    host, port = proxy_address(url)
    try:
        import grpc  # noqa: F401
    except ImportError:
        raise StorageError(f"storage {url}: a gRPC proxy needs grpcio: pip install 'ple-search[grpc]'") from None
    with warnings.catch_warnings():  # "experimental" in Optuna since 4.2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = _proxy_class()(host=host, port=port)
    storage.configure_retry(retry_seconds, url, notify)
    storage.configure_heartbeat(heartbeat_interval, grace_period)
    try:
        storage.wait_server_ready(timeout=PROXY_READY_SECONDS)
    except ConnectionError:
        raise StorageError(
            f"cannot open storage {url}: no gRPC storage proxy answers there within {PROXY_READY_SECONDS:.0f}s; "
            f"start one with `ple-search storage-proxy --storage URL --host {host} --port {port}`"
        ) from None
    return storage


def serve_proxy(url: str, host: str, port: int, *, notify: Notify = _stderr, ready: Callable[[], None] | None = None) -> None:
    """Serve the storage ``url`` (an RDB URL or a journal file; its outages retried as always)
    through Optuna's gRPC storage proxy on ``host:port`` until interrupted: thousands of workers
    then hold one connection pool (the proxy's) instead of one each. Passwords are never printed."""
    if url.startswith(GRPC_SCHEME):
        raise StorageError(f"--storage {url}: the proxy serves a database or a journal file, not another proxy")
    try:
        from optuna.storages import run_grpc_proxy_server
        import grpc  # noqa: F401
    except ImportError:
        raise StorageError("storage-proxy needs grpcio: pip install 'ple-search[grpc]'") from None
    import socket

    storage = open_storage(url, notify=notify)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:  # a port in use is one line, not a traceback
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        except OSError as exc:
            raise StorageError(f"--host {host} --port {port}: cannot listen there ({exc.strerror}); choose another port or stop what holds it") from None
    notify(f"serving {mask_url(url)} on {GRPC_SCHEME}{host}:{port} (workers: --storage {GRPC_SCHEME}{host}:{port}); Ctrl-C stops")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the server's own start-up lines
    if ready is not None:
        ready()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            run_grpc_proxy_server(storage, host=host, port=port)
    except KeyboardInterrupt:
        notify("storage proxy stopped")


def _retry_once() -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` means "the storage is unreachable right now": a lost connection or an
    unavailable database (SQLAlchemy's ``OperationalError``, or a driver's ``DBAPIError`` that
    invalidated the connection), also where Optuna wraps it in ``StorageInternalError``; or an
    ``OSError`` from a journal file; or a gRPC proxy that does not answer (``UNAVAILABLE``,
    ``DEADLINE_EXCEEDED``)."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    grpc = sys.modules.get("grpc")
    seen = exc
    while seen is not None:
        if isinstance(seen, (OperationalError, OSError)):
            return True
        if grpc is not None and isinstance(seen, grpc.RpcError) and hasattr(seen, "code"):
            if seen.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _cause_line(exc: BaseException) -> str:
    """The first line of the innermost database error (Optuna's wrapper says nothing useful)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return _first_line(exc)


def with_retry(action: Callable[[], T], budget_seconds: float, what: str, url: str, *, notify: Notify | None = None) -> T:
    """``action()``, retried with exponential backoff (1 s doubling to 10 s) while the storage is
    unreachable (``is_transient``), for at most ``budget_seconds``; then a ``StorageError``.
    ``notify`` hears one line when the outage starts and one when it ends."""
    start, delay, noticed = time.monotonic(), 1.0, False
    while True:
        try:
            result = action()
        except Exception as exc:
            if not is_transient(exc):
                raise
            reason = scrub(_cause_line(exc), url)
            if time.monotonic() - start + delay > budget_seconds:
                raise StorageError(
                    f"storage {mask_url(url)} unreachable for {budget_seconds:.0f}s while {what}: {reason}; "
                    "finished trials are kept, rerun the same command to resume"
                ) from None
            if notify is not None and not noticed:
                notify(f"storage {mask_url(url)} unreachable ({reason}); retrying for up to {budget_seconds:.0f}s")
                noticed = True
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
            continue
        if noticed and notify is not None:
            notify(f"storage {mask_url(url)} reachable again after {time.monotonic() - start:.0f}s")
        return result


def load_study(name: str, storage: optuna.storages.BaseStorage, **kwargs) -> optuna.Study:
    """An existing study, or a ``StorageError`` listing the studies that do exist."""
    try:
        return optuna.load_study(study_name=name, storage=storage, **kwargs)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        raise StorageError(f"no study named '{name}' in this storage; studies: {names or 'none'}") from None
