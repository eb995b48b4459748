"""What one ``ple-search run`` asks for, as typed settings (``RunRequest``), and opening it: the
storage, the space, the data and the study (``open_run``), in this process or, for a ``--jobs``
parent that only coordinates, in a process forked from the workers' fork server (``prepare_run``),
so that the parent never loads torch or Lightning.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ple_search.study.storage import DEFAULT_STORAGE, mask_url

if TYPE_CHECKING:
    import optuna

    from ple_search.data import Dataset
    from ple_search.study.space import SearchSpace

Notify = Callable[[str], None]


@dataclass(frozen=True)
class RunRequest:
    """Every setting of a run, checked by the CLI; workers get one each (``for_worker``)."""

    study: str
    trials: int
    storage: str = DEFAULT_STORAGE
    space: str | None = None
    sampler: str | None = None
    seed: int | None = None
    timeout: float | None = None
    data_dir: str | None = None
    max_epochs: int | None = None
    patience: int | None = None
    accelerator: str = "cpu"
    threads: int | None = None
    jobs: int = 1
    devices: tuple[str, ...] | None = None
    heartbeat_interval: int = 30
    grace_period: int | None = None
    storage_retry: float = 300.0
    mlflow: str | None = None
    tensorboard: str | None = None
    allow_space_change: bool = False
    quiet: bool = False
    ray: str | None = None  # a Ray cluster's address (or auto): the --jobs workers are Ray tasks there (study.cluster)
    cpus_per_worker: int = 1  # --ray: CPUs (and torch threads) each worker asks Ray for
    gpus_per_worker: float = 0.0  # --ray: GPUs each worker asks Ray for (Ray makes them its only visible ones)
    worker: int | None = None  # the index of a --jobs worker; None in the process the user started
    tasks: tuple[str, ...] | None = None  # train on these tasks of the data only (a single-task baseline study's workers)
    auto_jobs: bool = False  # neither --jobs nor --threads given: workers where they finish more trials per hour

    def for_worker(self, index: int, threads: int) -> "RunRequest":
        """Worker ``index``'s request: one job, its share of threads, one log line per trial."""
        return dataclasses.replace(self, jobs=1, threads=threads, quiet=True, worker=index)

    def epoch_budget(self, space: "SearchSpace") -> dict[str, int]:
        """The space's epoch budget with ``--max-epochs``/``--patience`` over it."""
        given = {"max_epochs": self.max_epochs, "patience": self.patience}
        return {**space.budget, **{k: v for k, v in given.items() if v is not None}}


@dataclass
class OpenRun:
    """A run opened: its storage, space, data, study and the seed it samples with."""

    storage: Any
    space: "SearchSpace"
    dataset: "Dataset"
    study: "optuna.Study"
    seed: int
    objectives: list


def open_run(request: RunRequest, notify: Notify) -> OpenRun:
    """Open the storage, read the space, load the data and create or resume the study, refusing a
    different dataset, space or objectives before any trial (``search.open_study``)."""
    from ple_search.study.search import load_run_space, load_space_dataset, objectives_of, open_study
    from ple_search.study.storage import local_files, open_storage, remove_if_unused

    created = local_files(request.storage)
    storage = open_storage(request.storage, request.heartbeat_interval, request.grace_period, retry_seconds=request.storage_retry, notify=notify)
    try:
        space = load_run_space(request.study, storage, request.space)
        if request.worker is None:
            for note in space.notes:
                notify(note)
        dataset = load_space_dataset(space, request.data_dir)
        if request.tasks:
            dataset = dataset.select_tasks(list(request.tasks))
        preflight(request, space, dataset)
        seed = request.seed if request.seed is not None else int(space.sampler.get("seed") or 0)
        study = open_study(
            request.study, storage, space, dataset, sampler=request.sampler, seed=seed,
            allow_space_change=request.allow_space_change, notify=notify,
        )  # fmt: skip
    except BaseException:
        remove_if_unused(created, storage)  # a refused run leaves no storage file behind
        raise
    return OpenRun(storage, space, dataset, study, seed, objectives_of(space, dataset))


def preflight(request: RunRequest, space: "SearchSpace", dataset: "Dataset") -> None:
    """Try once, before the study exists, every setting that would otherwise fail every trial:
    the accelerator, a precision only a GPU runs, the TensorBoard folder and extra, and the serving
    graph latency is measured on (its engine, extra and batch). Each is one ``ConfigError``
    naming the flag or key; nothing is left in the storage."""
    import importlib.util

    from ple_search.core.errors import ConfigError

    if request.tensorboard:
        folder = Path(request.tensorboard)
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"--tensorboard {folder}: is a file; name a folder for the TensorBoard logs")
        if not (importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")):
            raise ConfigError("--tensorboard needs the track extra: pip install 'ple-search[track]'")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--tensorboard {folder}: cannot create the folder ({exc.strerror})") from None
    gpu_only = space.possible("precision") == ["16-mixed"]
    if request.accelerator == "gpu" or gpu_only:
        import torch

        if not torch.cuda.is_available():
            what = "--accelerator gpu" if request.accelerator == "gpu" else f"{space.path}: key 'precision' = 16-mixed"
            raise ConfigError(f"{what}: no CUDA GPU is visible on this machine; use --accelerator cpu (or auto), or precision 32 or bf16-mixed")
    processes = trial_processes(space)
    where = f"{space.path}: key 'budget.trial_processes' = {processes}"
    cores = os.cpu_count() or 1
    if processes > cores and request.ray is None:  # each process trains on a core of its own at least
        raise ConfigError(f"{where}: this machine has {cores} cores; a trial's processes run on one machine, so at most {cores}")
    if processes > 1 and request.accelerator in ("gpu", "auto"):
        import torch

        if torch.cuda.is_available():
            visible = int(request.gpus_per_worker) if request.ray is not None else torch.cuda.device_count()
            if visible < processes:
                flag = "--gpus-per-worker" if request.ray is not None else "visible GPUs"
                raise ConfigError(f"{where}: each process of a GPU trial takes its own GPU and {flag} is {visible}; lower it or give more GPUs")
            if request.ray is None and request.jobs > 1:
                raise ConfigError(f"{where}: a GPU trial on several processes takes the machine's GPUs; run it with --jobs 1 (or on Ray with --gpus-per-worker)")
    if "latency" in space.cost_measures():
        _try_serving(space, dataset)


def _try_serving(space: "SearchSpace", dataset: "Dataset") -> None:
    """Measure one latency of the space's smallest model on its serving settings."""
    import dataclasses as dc

    from ple_search.core.errors import ConfigError
    from ple_search.serve.cost import measure_costs
    from ple_search.train.module import PLEModule

    serving = space.serving_settings()
    try:
        module = PLEModule(dataset.schema, space.extreme_config(largest=False))
    except ConfigError:
        return  # the smallest corner is not a valid model: the trials will say so
    try:
        measure_costs(module, dc.replace(serving, repeats=1, warmup=0), ("latency",))
    except ConfigError as exc:
        raise ConfigError(f"{space.path}: key 'serving': {exc}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory for the batch: no trial could measure it
        reason = " ".join(str(exc).split())[:200]
        raise ConfigError(f"{space.path}: key 'serving': latency cannot be measured with {serving} ({type(exc).__name__}: {reason})") from None


def run_header(request: RunRequest, opened: OpenRun) -> list[str]:
    """The run's first lines: where the study and space are, and the data's rows and features."""
    from ple_search.serve.settings import embedding_memory

    dataset, space = opened.dataset, opened.space
    rows = " / ".join(f"{len(dataset.split(n)):,}" for n in ("train", "val", "test"))
    schema = dataset.schema
    lists = f", {len(schema.lists)} list" if schema.lists else ""
    data = f"rows train / val / test {rows}; {len(schema.categorical)} categorical{lists}, {len(schema.numeric)} numeric features"
    tables = [*schema.vocab_sizes, *(f.vocab_size for f in schema.lists)]
    if tables:
        data += f"; embeddings {embedding_memory(tables, space.possible('embedding_dim'))}"
    return [f"study {request.study} in {mask_url(request.storage)}; space {space.path}; data: {dataset.info.get('split')}", data]


AMORTISE = 4  # workers pay off when each of them gets at least this many trials (a fork server starts first)


def auto_jobs(request: RunRequest, finished: int, cores: int | None = None) -> int:
    """The workers when neither ``--jobs`` nor ``--threads`` is given: one per core on a CPU run
    with at least ``AMORTISE`` trials per core left (each worker then runs one thread: on small
    models workers scale about linearly where intra-op threads do not, ``bench/threads.py``),
    else one (whose threads ``choose_threads`` measures)."""
    cores = cores or os.cpu_count() or 1
    gpu = request.accelerator == "gpu" or (request.accelerator == "auto" and any(Path("/dev").glob("nvidia[0-9]*")))
    if not request.auto_jobs or gpu or cores < 2 or request.trials - finished < AMORTISE * cores:
        return 1  # GPU trials: one process per device is the user's choice (--jobs, --devices)
    return cores


def choose_threads(request: RunRequest, opened: OpenRun, cores: int | None = None) -> tuple[int, str]:
    """Torch threads per trial and why: ``--threads`` if given; else one per trial when the cores
    are shared out among ``--jobs`` (or a GPU trains), and more only where a training step of the
    space's largest model, measured here, shows they pay (``train.engine.pick_threads``)."""
    if request.threads:
        return request.threads, "--threads"
    cores = cores or os.cpu_count() or 1
    processes = trial_processes(opened.space)
    available = max(1, cores // (request.jobs * processes))
    if request.accelerator == "gpu":
        return available, "GPU trials"
    if available == 1:
        return 1, f"{cores} cores shared by {request.jobs} jobs" + (f" x {processes} processes" if processes > 1 else "")
    from ple_search.core.errors import ConfigError
    from ple_search.train.engine import pick_threads
    from ple_search.train.module import PLEModule

    try:
        module = PLEModule(opened.dataset.schema, opened.space.extreme_config(largest=True))
    except ConfigError:  # the largest corner builds no model: measure the smallest
        module = PLEModule(opened.dataset.schema, opened.space.extreme_config(largest=False))
    return pick_threads(module, opened.dataset.train, available)


def trial_processes(space: "SearchSpace") -> int:
    """Processes each trial trains on (``budget.trial_processes``, ``train.ranks``)."""
    return int(space.budget.get("trial_processes", 1))


def threads_line(threads: int, jobs: int, why: str, processes: int = 1) -> str:
    """The run header's line on threads and jobs, with why they were chosen."""
    overrides = "" if why == "--threads" else "; --threads N overrides"
    per = f"per process x {processes} processes per trial" if processes > 1 else "per trial"
    return f"threads: {threads} {per} x {jobs} jobs ({why}{overrides})"


def prepare_run(request: RunRequest) -> dict[str, Any]:
    """What a ``--jobs`` parent needs before it starts workers, computed where the engine may load
    (``parallel.call_forked``): the study created or checked, the lines to print, each worker's
    threads (without ``--jobs``/``--threads``: one, as workers were started one per core), the
    GPUs the workers may use, and the workers (``--jobs``, or without it the cores shared out among
    each trial's ``budget.trial_processes``). Returns ``{"lines", "threads_line", "threads", "gpus",
    "jobs", "processes"}``."""
    lines: list[str] = []
    opened = open_run(request, lines.append)
    processes = trial_processes(opened.space)
    jobs = request.jobs
    if request.auto_jobs:  # workers scale about linearly on small models, intra-op threads far less
        jobs = max(1, request.jobs // processes)
        threads, why = 1, f"{request.trials} trials to share: one " + ("trial per core" if processes == 1 else "process per core")
    else:
        threads, why = choose_threads(request, opened)
    gpus: list[str] = []
    if request.accelerator in ("gpu", "auto") and not request.devices:
        import torch

        if torch.cuda.is_available():
            gpus = [str(i) for i in range(torch.cuda.device_count())]
    lines += run_header(request, opened)
    return {"lines": lines, "threads_line": threads_line(threads, jobs, why, processes), "threads": threads, "gpus": gpus, "jobs": jobs, "processes": processes}
