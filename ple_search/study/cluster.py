"""``ple-search run --ray ADDRESS --jobs K``: K workers placed by Ray on a cluster, each the
existing worker loop (``RunRequest.for_worker``) against one shared storage.

The storage holds the study, its target and the trial numbering, so the workers need no other
coordination, as with ``--jobs`` on one machine (``parallel``). What Ray adds: placement (each
worker a Ray task with ``--cpus-per-worker`` CPUs and ``--gpus-per-worker`` GPUs, which Ray
makes the only GPUs the worker sees), and the driver (this process) watching the tasks. A worker
records its ``host:pid`` in the study when it starts (``SLOT_KEY``); when its task ends with a
dead worker or node, the driver fails the trial that worker was running, enqueues its config once
more (``parallel.recover_worker_trials``: on every storage, heartbeats or not), and starts the
slot again while the study is short of its target (at most ``RESTARTS`` times per slot).
Ctrl-C on the driver cancels every task: each worker marks its running trial FAIL; a task that
does not end within a grace period is killed and its trial recovered the same way. Ray is an
optional dependency (``pip install 'ple-search[ray]'``), imported only here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import optuna

from ple_search.core.errors import Interrupted, StorageError
from ple_search.study.parallel import recover_worker_trials, worker_id
from ple_search.study.record import WORKER, StudyRecord

SLOT_KEY = "ple_search:ray_slot:{}"  # study user attr: the host:pid of the worker now in slot i
NODE_KEY = "ple_search:ray_node:{}"  # study user attr: the Ray node id the worker of slot i runs on
RESTARTS = 3
CANCEL_GRACE_SECONDS = 60.0

Line = Callable[[str], None]


def check_storage(url: str) -> None:
    """``--ray`` needs a storage every node reaches: an RDB URL or a gRPC proxy, not a journal file."""
    from ple_search.study.storage import is_journal

    if is_journal(url):
        raise StorageError(
            f"--ray needs a storage every node reaches: an RDB URL (postgresql://...) or a gRPC proxy (grpc://HOST:PORT), "
            f"not the journal file {url}; start one with `ple-search storage-proxy --storage postgresql://...`"
        )


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise StorageError("--ray needs Ray: pip install 'ple-search[ray]'") from None
    return ray


def connect(address: str) -> Any:
    """Join the Ray cluster at ``address`` (``auto``: the one this machine belongs to) without
    Ray's own log lines; an unreachable cluster is one line."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    host, _, port = address.rpartition(":")
    if address != "auto" and port.isdigit():  # Ray itself waits minutes on an address nothing answers
        import socket

        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except OSError as exc:
            raise StorageError(f"--ray {address}: cannot join the Ray cluster (nothing answers there: {exc.strerror or exc}); start one with `ray start --head`") from None
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, configure_logging=True, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StorageError(f"--ray {address}: cannot join the Ray cluster ({first}); start one with `ray start --head`") from None
    return ray


class _LastLine(io.TextIOBase):
    """A stream that passes everything on and keeps the last non-empty line (a worker's error)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.last = inner, ""

    def write(self, text: str) -> int:
        lines = [line for line in text.splitlines() if line.strip()]
        if lines:
            self.last = lines[-1]
        return self.inner.write(text)

    def flush(self) -> None:
        self.inner.flush()


def _slot_entry(entry: Callable[[Any], int], request: Any, storage_url: str, slot: int) -> tuple[int, str]:
    """One worker, inside its Ray task: records which process holds the slot, then the loop;
    returns its exit code and last stderr line (the driver shows it when the code is not 0:
    the worker's own output stays in Ray's logs on its node)."""
    import ray

    from ple_search.study.storage import load_study, open_storage

    storage = open_storage(storage_url, retry_seconds=request.storage_retry)
    study = load_study(request.study, storage)
    study.set_user_attr(SLOT_KEY.format(slot), worker_id())
    study.set_user_attr(NODE_KEY.format(slot), ray.get_runtime_context().get_node_id())
    tail = _LastLine(sys.stderr)
    sys.stderr = tail
    try:
        return entry(request), tail.last
    finally:
        sys.stderr = tail.inner


class FinishedTrials:
    """The driver's view of the workers' progress: a line per trial finished since the last look,
    with the slot of the worker that ran it, read from the storage at most every ``POLL_SECONDS``
    (the workers' own lines stay in Ray's logs on their nodes)."""

    POLL_SECONDS = 2.0

    def __init__(self, study: optuna.Study, jobs: int) -> None:
        self.study, self.jobs = study, jobs
        self.seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self.last_poll = 0.0

    def new_lines(self, force: bool = False) -> list[tuple[int, str]]:
        """``(slot, line)`` per newly finished trial; ``force``: look now (the last look of a run)."""
        if not force and time.monotonic() - self.last_poll < self.POLL_SECONDS:
            return []
        self.last_poll = time.monotonic()
        new = [t for t in self.study.get_trials(deepcopy=False) if t.state.is_finished() and t.number not in self.seen]
        if not new:
            return []
        attrs = self.study.user_attrs
        slots = {attrs.get(SLOT_KEY.format(i)): i for i in range(self.jobs)}
        names = StudyRecord.from_study(self.study).objectives
        lines = []
        for trial in new:
            self.seen.add(trial.number)
            values = " ".join(f"{k}={v:.4f}" for k, v in zip(names, trial.values or [])) if trial.state.name == "COMPLETE" else trial.state.name
            worker = trial.user_attrs.get(WORKER, "?")
            lines.append((slots.get(worker, 0), f"trial {trial.number}: {values} ({worker})"))
        return lines


class RayWorkers:
    """Start, watch, restart and stop K Ray tasks of the worker loop."""

    def __init__(self, entry: Callable[[Any], int], requests: Sequence[Any], study: optuna.Study, *, storage_url: str,
                 target: int, cpus: float, gpus: float, on_line: Line) -> None:  # fmt: skip
        self.ray = _ray()
        self.entry, self.requests, self.study = entry, list(requests), study
        self.storage_url, self.target, self.on_line = storage_url, target, on_line
        self.remote = self.ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_slot_entry)
        self.refs: dict[int, Any] = {}
        self.restarts = [0] * len(self.requests)
        self.errors = 0

    def start(self, slot: int) -> None:
        self.study.set_user_attr(SLOT_KEY.format(slot), "")
        self.refs[slot] = self.remote.remote(self.entry, self.requests[slot], self.storage_url, slot)

    def _holder(self, slot: int) -> str:
        return str(self.study.user_attrs.get(SLOT_KEY.format(slot)) or "")

    def _recover(self, slot: int, why: str) -> list[int]:
        holder = self._holder(slot)
        return recover_worker_trials(self.study, holder, f"worker {holder} {why}") if holder else []

    def _finished(self) -> int:
        from ple_search.study.record import count_finished

        return count_finished(self.study)

    def supervise(self, tick: Callable[[], None], stop: threading.Event) -> int:
        """Run to the end (``Interrupted`` once ``stop`` is set: signals must not raise inside
        Ray's calls); returns the number of workers that failed with an error."""
        for slot in range(len(self.requests)):
            self.start(slot)
        while self.refs:
            if stop.is_set():
                raise Interrupted("stop requested")
            ready, _ = self.ray.wait(list(self.refs.values()), num_returns=1, timeout=1.0)
            tick()
            for ref in ready:
                slot = next(s for s, r in self.refs.items() if r == ref)
                del self.refs[slot]
                try:
                    code, last = self.ray.get(ref)
                except (self.ray.exceptions.WorkerCrashedError, self.ray.exceptions.NodeDiedError, self.ray.exceptions.ActorDiedError,
                        self.ray.exceptions.LocalRayletDiedError, self.ray.exceptions.RaySystemError) as exc:  # fmt: skip
                    failed = self._recover(slot, f"died ({type(exc).__name__})")
                    short = self._finished() < self.target
                    again = short and self.restarts[slot] < RESTARTS
                    recovered = f"trials {failed} marked FAIL and retried once" if failed else "no trial of it left running (already recovered)"
                    self.on_line(f"worker {slot} died ({type(exc).__name__}); {recovered}" + ("; starting it again" if again else ""))
                    if again:
                        self.restarts[slot] += 1
                        self.start(slot)
                    continue
                except self.ray.exceptions.RayTaskError as exc:
                    self.errors += 1
                    self.on_line(f"worker {slot} failed: {str(exc).strip().splitlines()[-1]}")
                    continue
                if code:
                    self.errors += 1
                    self.on_line(f"worker {slot} exited with code {code}: {last}")
        return self.errors

    def stop(self) -> None:
        """Cancel every task (each worker marks its trial FAIL), then kill what is left."""
        for ref in self.refs.values():
            self.ray.cancel(ref, force=False)
        deadline = time.monotonic() + CANCEL_GRACE_SECONDS
        pending = list(self.refs.items())
        while pending and time.monotonic() < deadline:
            ready, _ = self.ray.wait([r for _, r in pending], num_returns=len(pending), timeout=1.0)
            pending = [(s, r) for s, r in pending if r not in ready]
        for slot, ref in pending:
            self.ray.cancel(ref, force=True)
            self._recover(slot, "was stopped")
        # a worker cancelled before its trial could be marked leaves it RUNNING: fail those too
        for slot in range(len(self.requests)):
            holder = self._holder(slot)
            if holder:
                recover_worker_trials(self.study, holder, "interrupted")
        self.refs = {}


def run_ray_workers(entry: Callable[[Any], int], requests: Sequence[Any], study: optuna.Study, *, address: str, storage_url: str,
                    target: int, cpus: float, gpus: float, tick: Callable[[], None], on_line: Line) -> tuple[int, bool]:  # fmt: skip
    """Run one Ray task of ``entry`` per request to the end; returns (workers failed, interrupted).
    Ctrl-C and SIGTERM set a flag the loop checks (raised inside Ray's C++ calls they would
    corrupt its state)."""
    connect(address)
    workers = RayWorkers(entry, requests, study, storage_url=storage_url, target=target, cpus=cpus, gpus=gpus, on_line=on_line)
    with stop_flag() as stop:  # held through the stopping too: a second Ctrl-C must not raise inside Ray
        try:
            return workers.supervise(tick, stop), False
        except (KeyboardInterrupt, Interrupted):
            workers.stop()
            return 0, True
        finally:
            if workers.refs:
                workers.stop()
            workers.ray.shutdown()


@contextlib.contextmanager
def stop_flag() -> Iterator[threading.Event]:
    """An event Ctrl-C and SIGTERM set for the length of the block, instead of raising: raised
    inside Ray's C++ calls they would corrupt its state; the loops check the flag between calls."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass(frozen=True)
class RayPlacement:
    """Where ``baselines`` and ``confirm`` place their work on a Ray cluster: ``jobs`` search
    workers (the worker loop ``entry``, the CLI's) and one Ray task per seed retraining, each with
    ``cpus`` CPUs (its torch threads) and ``gpus`` GPUs."""

    address: str
    storage_url: str
    jobs: int = 2
    cpus: int = 1
    gpus: float = 0.0
    entry: Callable[[Any], int] | None = None
    on_line: Line = print


def ray_search(placement: RayPlacement, study: optuna.Study, trials: int, *, tasks: Sequence[str], accelerator: str, data_dir: str | None) -> None:
    """Run the stored space of ``study`` (created by the caller) to ``trials`` finished trials on
    ``placement.jobs`` Ray workers training ``tasks`` of its data; ``KeyboardInterrupt`` on Ctrl-C."""
    from ple_search.study.run import RunRequest

    base = RunRequest(study.study_name, trials, placement.storage_url, data_dir=data_dir, accelerator=accelerator, tasks=tuple(tasks))
    requests = [base.for_worker(i, placement.cpus) for i in range(placement.jobs)]
    assert placement.entry is not None, "a Ray search needs the worker loop"
    errors, interrupted = run_ray_workers(
        placement.entry, requests, study, address=placement.address, storage_url=placement.storage_url, target=trials,
        cpus=placement.cpus, gpus=placement.gpus, tick=lambda: None, on_line=placement.on_line,
    )  # fmt: skip
    if interrupted:
        raise KeyboardInterrupt
    if errors:
        raise StorageError(f"{errors} of {placement.jobs} Ray workers of study '{study.study_name}' failed; see their last lines above")


@dataclass(frozen=True)
class SeedJob:
    """One retraining of a config on one seed, as a Ray task runs it: the study's dataset
    (re-described, then ``tasks`` of it), its budget and objectives, the config and the seed."""

    dataset: dict
    data_dir: str | None
    tasks: tuple[str, ...]
    objectives: tuple[str, ...]
    budget: dict
    hparams: dict
    seed: int
    accelerator: str = "cpu"
    threads: int = 1
    gates: bool = False  # also measure what the gates do (``serve.gates``) on the test split


@dataclass
class SeedSummary:
    """What a seed's Ray task sends back (the module stays on its node): the names a
    ``train.engine.SeedRun`` has for them."""

    seed: int
    val: dict[str, float]
    test: dict[str, float]
    seconds: float
    curve: list[dict[str, float]]
    gates: dict | None = None


def _seed_entry(job: SeedJob) -> SeedSummary:
    """One seed inside its Ray task: load the data on this node, train, evaluate."""
    import torch

    from ple_search.data import load_described
    from ple_search.serve.gates import measure
    from ple_search.train.engine import TrialSettings, evaluate, train_config

    torch.set_num_threads(job.threads)
    dataset = load_described(job.dataset, job.data_dir)
    if list(job.tasks) != dataset.schema.task_names:
        dataset = dataset.select_tasks(list(job.tasks))
    settings = TrialSettings.from_budget(dataset.schema.tasks_named(list(job.objectives)), job.budget, accelerator=job.accelerator)
    module, recorder, seconds = train_config(job.hparams, dataset, settings, job.seed, run_name=f"seed-{job.seed}")
    gates = measure(module, dataset.test) if job.gates else None
    return SeedSummary(job.seed, recorder.curve[recorder.best_epoch], evaluate(module, dataset.test), seconds, recorder.curve, gates)


def ray_seed_runs(placement: RayPlacement, jobs: Sequence[SeedJob]) -> list[SeedSummary]:
    """Every job as one Ray task (all at once: Ray queues what the cluster cannot hold yet),
    their summaries in the jobs' order. A task whose worker or node dies is run again once by Ray
    (a seed's result depends on nothing but its job); a seed that fails is a ``TrialFailed`` with
    its last line; Ctrl-C cancels every task (``KeyboardInterrupt``)."""
    from ple_search.core.errors import TrialFailed

    ray = connect(placement.address)
    remote = ray.remote(num_cpus=placement.cpus, num_gpus=placement.gpus, max_retries=1)(_seed_entry)
    refs = [remote.remote(job) for job in jobs]
    with stop_flag() as stop:
        pending = list(refs)
        while pending:
            if stop.is_set():
                for ref in refs:
                    ray.cancel(ref, force=True)
                raise KeyboardInterrupt
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
    results = []
    for job, ref in zip(jobs, refs):
        try:
            results.append(ray.get(ref))
        except ray.exceptions.RayTaskError as exc:
            raise TrialFailed(f"seed {job.seed} failed on Ray: {str(exc).strip().splitlines()[-1]}") from None
    return results
