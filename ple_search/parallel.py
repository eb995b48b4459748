"""``ple-search run --jobs N``: N worker processes on one machine sharing one study.

Each worker is the same ``ple-search run`` command with ``--jobs 1`` and its share of the cores;
the study, its target and the trial numbering live in the storage, so workers need no other
coordination. The parent shows one display for all, forwards SIGINT/SIGTERM to the workers, and
when a worker dies abnormally (e.g. SIGKILL) marks the trial it was running FAIL and enqueues its
config once more, which also covers storages without heartbeats (the journal file).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Sequence

import optuna
from optuna.trial import TrialState
from rich.console import Console

from ple_search.errors import Interrupted
from ple_search.record import FAIL_REASON, RETRY_OF, WORKER

WorkerLine = Callable[[int, str], None]


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


def worker_command(argv: Sequence[str], threads: int, index: int) -> list[str]:
    """The parent's arguments minus ``--jobs/--threads/--quiet``, as quiet worker ``index``
    (which offsets its sampler seed so workers do not propose the same configs)."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--jobs", "--threads"):
            skip = "=" not in arg
            continue
        if arg == "--quiet":
            continue
        args.append(arg)
    return [sys.executable, "-m", "ple_search.cli.main", *args, "--jobs", "1", "--threads", str(threads), "--quiet", "--worker", str(index)]


def worker_env(index: int, devices: Sequence[str] | None) -> dict[str, str]:
    """Worker ``index``'s environment: with ``devices`` (GPU indices), round-robin one of them as
    its only visible device (``CUDA_VISIBLE_DEVICES``), so N workers spread over G GPUs."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = str(devices[index % len(devices)])
    return env


class Workers:
    """Start, watch and stop the worker processes."""

    def __init__(self, commands: list[list[str]], on_line: WorkerLine, devices: Sequence[str] | None = None) -> None:
        self.commands, self.on_line, self.devices = commands, on_line, devices
        self.procs: list[subprocess.Popen] = []
        self.stopping = False

    def start(self) -> None:
        for i, command in enumerate(self.commands):
            proc = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                env=worker_env(i, self.devices), preexec_fn=_die_with_parent, start_new_session=True,
            )  # fmt: skip
            self.procs.append(proc)
            threading.Thread(target=self._pump, args=(i, proc), daemon=True).start()

    def _pump(self, index: int, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.on_line(index, line.rstrip())

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM every live worker (each fails its running trial and exits), SIGKILL stragglers."""
        self.stopping = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def supervise(self, study: optuna.Study, tick: Callable[[], None], console: Console) -> int:
        """Wait for every worker; recover the trials of any that dies abnormally. Returns the
        number of workers that failed with an error (not killed by a signal)."""
        seen: set[int] = set()
        errors = 0
        while True:
            alive = 0
            for i, proc in enumerate(self.procs):
                code = proc.poll()
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
    argv: Sequence[str], jobs: int, threads: int, study: optuna.Study, *, console: Console, on_line: WorkerLine, tick: Callable[[], None],
    devices: Sequence[str] | None = None,
) -> tuple[int, bool]:
    """Run ``jobs`` workers to the end; returns (workers that failed, whether interrupted)."""
    workers = Workers([worker_command(argv, threads, i) for i in range(jobs)], on_line, devices)
    workers.start()
    try:
        return workers.supervise(study, tick, console), False
    except (KeyboardInterrupt, Interrupted):
        workers.stop()
        return 0, True
    finally:
        if not workers.stopping and any(p.poll() is None for p in workers.procs):
            workers.stop()
