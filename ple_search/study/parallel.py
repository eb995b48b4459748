"""``ple-search run --jobs N``: N worker processes on one machine sharing one study.

Each worker runs the parent's ``RunRequest`` with one job and its share of the cores
(``RunRequest.for_worker``); the study, its target and the trial numbering live in the storage, so
workers need no other coordination. What needs the data or the engine before the workers start
(creating the study, its reference point and limit checks) runs in one more process forked the same
way (``call_forked``), so the parent never imports torch or Lightning. The parent shows one display for all, forwards SIGINT/SIGTERM to the workers, and
when a worker dies abnormally (e.g. SIGKILL) marks the trial it was running FAIL and enqueues its
config once more, which also covers storages without heartbeats (the journal file).

Why a fork server: a worker's own memory is mostly its imports (torch, Lightning and what they pull
in: about 0.35 GiB of Python objects and relocated library data per process), and the data is
already shared through the memory-mapped cache. Workers are forked from one process that imported
all of that once (``multiprocessing``'s fork server, ``PRELOAD``), so those pages are shared
copy-on-write instead of held once per worker. The fork server imports but never computes, so no
thread pool or CUDA context exists to be forked; each worker starts its own session, environment
(its GPU via ``CUDA_VISIBLE_DEVICES``) and stderr pipe to the parent.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import TrialState
from rich.console import Console

from ple_search.core.errors import Interrupted, PLESearchError
from ple_search.study.record import FAIL_REASON, RETRY_OF, WORKER

WorkerLine = Callable[[int, str], None]
WorkerEntry = Callable[[Any], int]  # the CLI's entry for one worker's request (a RunRequest)

# What a worker imports, loaded once by the fork server (an ImportError there is skipped, and the
# worker imports what is missing itself). Not the CLI module: its consoles must see the worker's pipe.
PRELOAD = ("ple_search.data", "ple_search.study.storage", "ple_search.study.search", "ple_search.train.engine")


def worker_id(pid: int | None = None) -> str:
    """How a trial records the process running it: ``host:pid``."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def recover_worker_trials(study: optuna.Study, worker: str, reason: str) -> list[int]:
    """Fail the RUNNING trials of a dead ``worker`` and enqueue each config once more (not a
    retry of a retry). Optuna has no public call to fail another process's trial, hence the
    storage API, as ``optuna.storages.fail_stale_trials`` uses it."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(WORKER) != worker:
            continue
        storage = study._storage
        try:
            storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, reason)
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        failed.append(trial.number)
        if RETRY_OF not in trial.user_attrs:
            study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reclaim_stale_trials(study: optuna.Study) -> None:
    """Fail (and retry once) trials whose worker is gone: by heartbeat on RDB storages, and on any
    storage when the worker was a process of this machine that no longer exists."""
    optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(WORKER, "")
        name, _, pid = owner.rpartition(":")
        if name == host and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            recover_worker_trials(study, owner, f"worker {pid} is gone")


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM if the parent dies, so no orphan outlives it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def worker_env(index: int, devices: Sequence[str] | None) -> dict[str, str]:
    """Worker ``index``'s environment: with ``devices`` (GPU indices), round-robin one of them as
    its only visible device (``CUDA_VISIBLE_DEVICES``), so N workers spread over G GPUs."""
    env = dict(os.environ)
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = str(devices[index % len(devices)])
    return env


def _fork_server() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return context


def _let_go_of_the_fork_server() -> None:
    """The fork server hands each child its client's end of the pipe that keeps the server alive
    (so the child could start processes through it too). A worker starts none, and holding it would
    keep the server, and with it the workers (``_die_with_parent``), running past a SIGKILLed
    parent; closed, the parent's death ends the server and so sends every worker SIGTERM."""
    server = multiprocessing.forkserver._forkserver
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is not None:
        os.close(alive)
        server._forkserver_alive_fd = None


def _called(fn: Callable[..., Any], args: tuple[Any, ...], result: Connection) -> None:
    """A process forked from the fork server that runs ``fn(*args)`` and sends back
    ``(True, value)`` or ``(False, exception)``; it dies with its parent."""
    _let_go_of_the_fork_server()
    _die_with_parent()
    try:
        try:
            outcome: tuple[bool, Any] = (True, fn(*args))
        except BaseException as exc:  # noqa: BLE001 - sent to the parent, which raises it
            outcome = (False, exc)
        try:
            result.send(outcome)
        except Exception:  # noqa: BLE001 - what does not pickle travels as its message
            result.send((False, PLESearchError(f"{type(outcome[1]).__name__}: {outcome[1]}")))
    finally:
        result.close()
        atexit._run_exitfuncs()


def call_forked(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a process forked from the fork server (which has the engine imported), its
    result returned here and its exception raised here. The caller keeps its own imports: a
    ``--jobs`` parent opens its study this way without loading torch or Lightning."""
    context = _fork_server()
    reader, writer = context.Pipe(duplex=False)
    proc = context.Process(target=_called, args=(fn, args, writer), name=f"{fn.__name__}")
    proc.start()
    writer.close()
    try:
        try:
            ok, value = reader.recv()
        except EOFError:
            proc.join()
            raise PLESearchError(f"the process preparing the run ended without an answer (exit code {proc.exitcode})") from None
        proc.join()
    finally:
        reader.close()
        if proc.is_alive():
            proc.terminate()
            proc.join()
    if ok:
        return value
    raise value


def _worker(entry: WorkerEntry, request: Any, env: dict[str, str], stderr: Connection) -> None:
    """A worker process, just forked from the fork server (which has the parent's working folder
    already): its own session (the parent forwards signals), death with its parent, the parent's
    environment as of now plus its device, stdout discarded and stderr the pipe the parent reads."""
    os.setsid()
    _let_go_of_the_fork_server()
    _die_with_parent()
    gc.freeze()  # the inherited objects stay out of collections, which would write to their pages
    os.environ.clear()
    os.environ.update(env)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(stderr.fileno(), 2)
    os.close(devnull)
    stderr.close()
    try:
        sys.exit(entry(request))
    finally:
        atexit._run_exitfuncs()  # a forked child leaves with os._exit; flush what the run registered


class Workers:
    """Start, watch and stop the worker processes."""

    def __init__(self, entry: WorkerEntry, requests: Sequence[Any], on_line: WorkerLine, devices: Sequence[str] | None = None) -> None:
        self.entry, self.requests, self.on_line, self.devices = entry, list(requests), on_line, devices
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.stopping = False

    def start(self) -> None:
        context = _fork_server()
        for i, request in enumerate(self.requests):
            reader, writer = context.Pipe(duplex=False)
            proc = context.Process(target=_worker, args=(self.entry, request, worker_env(i, self.devices), writer), name=f"worker {i}")
            proc.start()
            writer.close()  # the worker holds the write end now: its exit ends the pump
            self.procs.append(proc)
            threading.Thread(target=self._pump, args=(i, reader), daemon=True).start()

    def _pump(self, index: int, reader: Connection) -> None:
        with reader, open(os.dup(reader.fileno()), encoding="utf-8", errors="replace") as lines:
            for line in lines:
                self.on_line(index, line.rstrip())

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM every live worker (each fails its running trial and exits), SIGKILL stragglers."""
        self.stopping = True
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.exitcode is None:
                proc.kill()
                proc.join()

    def supervise(self, study: optuna.Study, tick: Callable[[], None], console: Console) -> int:
        """Wait for every worker; recover the trials of any that dies abnormally. Returns the
        number of workers that failed with an error (not killed by a signal)."""
        seen: set[int] = set()
        errors = 0
        while True:
            alive = 0
            for i, proc in enumerate(self.procs):
                code = proc.exitcode
                if code is None:
                    alive += 1
                elif i not in seen:
                    seen.add(i)
                    if code < 0 and not self.stopping:
                        name = signal.Signals(-code).name
                        failed = recover_worker_trials(study, worker_id(proc.pid), f"worker {proc.pid} died ({name})")
                        console.print(f"worker {i} (pid {proc.pid}) died ({name}); trials {failed} marked FAIL and retried once")
                    elif code > 0:
                        errors += 1
            tick()
            if not alive:
                return errors
            time.sleep(0.5)


def run_workers(
    entry: WorkerEntry, requests: Sequence[Any], study: optuna.Study, *, console: Console, on_line: WorkerLine,
    tick: Callable[[], None], devices: Sequence[str] | None = None,
) -> tuple[int, bool]:
    """Run one worker of ``entry`` (the CLI's worker entry) per request to the end; returns
    (workers that failed, whether interrupted)."""
    workers = Workers(entry, requests, on_line, devices)
    workers.start()
    try:
        return workers.supervise(study, tick, console), False
    except (KeyboardInterrupt, Interrupted):
        workers.stop()
        return 0, True
    finally:
        if not workers.stopping and any(p.exitcode is None for p in workers.procs):
            workers.stop()
