"""``ple-search``: run a search, show its Pareto front, list studies.

Library errors (``PLESearchError``) and storage failures become one line on stderr and exit code 2;
Ctrl-C or SIGTERM during ``run`` marks the running trial FAIL, prints how to resume and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

# OpenMP threads that spin while waiting turn a busy neighbour process into a 20x slowdown of small
# models (issue 23); waiting passively costs them nothing. Read when torch loads, so set first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from rich.console import Console  # noqa: E402

from ple_search.core.errors import Interrupted, PLESearchError, StorageError
from ple_search.study.storage import DEFAULT_STORAGE, mask_url


def _consoles() -> tuple[Console, Console]:
    """stderr (messages, which quote [extras] and paths verbatim) and stdout."""
    return Console(stderr=True, highlight=False, soft_wrap=True, markup=False), Console(highlight=False, markup=False)


err, out = _consoles()


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``ple-search run: error: ...``) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _number(kind: type, minimum: float, *, strict: bool = False) -> Callable[[str], Any]:
    """An argparse type: ``kind`` (int or float) >= ``minimum`` (> with ``strict``), finite."""
    bound = f"{'>' if strict else '>='} {minimum:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'} {bound}") from None
        if value != value or value in (float("inf"), float("-inf")) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"{text!r} must be {'an integer' if kind is int else 'a number'} {bound}")
        return value

    return parse


def _device_list(text: str) -> list[str]:
    """``--devices 0,1,3``: GPU indices for the ``--jobs`` workers."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give GPU indices separated by commas, e.g. 0,1")
    return parts


def _writable_place(text: str) -> str:
    """``text`` names a place that can be created: the nearest existing folder above it is a
    writable folder (not a file)."""
    above = Path(text).expanduser().absolute().parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: {above} is a file, so nothing can be written under it")
    if not os.access(above, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: the folder {above} is not writable")
    return text


def _output_file(text: str) -> str:
    """An argparse type: a file to write, never an existing folder, in a place that can be written."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; name a file to write")
    return _writable_place(text)


def _plot_file(text: str) -> str:
    if not text.endswith((".png", ".html")):
        raise argparse.ArgumentTypeError(f"{text!r}: the plot file must end in .png or .html")
    return _output_file(text)


def _new_folder(text: str) -> str:
    if Path(text).exists():
        raise argparse.ArgumentTypeError(f"{text!r} already exists; name a new folder")
    return _writable_place(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: give a whole number from 1 to 65535")
    return int(text)


# Every numeric option of every command, with what it allows: one table, one check each.
COUNT = _number(int, 1)  # trials, jobs, seeds, epochs, threads, top
INDEX = _number(int, 0)  # seeds and trial numbers
SECONDS = _number(float, 0, strict=True)
GPU_SHARE = _number(float, 0)
RETRY_SECONDS = _number(float, 0)


def _limit_args(p: argparse.ArgumentParser) -> None:
    """``--max-NAME`` for every serving cost measure (``--max-params``, ``--max-flops``,
    ``--max-latency``): view or pick under serving limits."""
    from ple_search.serve.cost import MEASURES

    for m in MEASURES.values():
        kind = COUNT if m.integer else _number(float, 0, strict=True)
        p.add_argument(f"--max-{m.name}", type=kind, metavar="N" if m.integer else "MS", help=m.help)


def _limits(args: argparse.Namespace):
    from ple_search.serve.cost import MEASURES, Limits

    limits = {m.key: getattr(args, f"max_{m.name}") for m in MEASURES.values()}
    return Limits.from_dict({k: v for k, v in limits.items() if v is not None}, "command line")


def _tracking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlflow", metavar="URI", help="log to MLflow (e.g. sqlite:///mlflow.db or http://host:5000); needs the track extra")
    p.add_argument("--tensorboard", metavar="DIR", help="Lightning's TensorBoard logger in DIR, one version per trial or seed")


def _tracker(args, experiment: str):
    """The MLflow tracker of ``--mlflow`` (``args``: parsed options or a ``RunRequest``), or None."""
    if not args.mlflow:
        return None
    from ple_search.study.tracking import MLflowTracker

    return MLflowTracker(args.mlflow, experiment)


def _accelerator_arg(p: argparse.ArgumentParser, default: str = "cpu") -> None:
    p.add_argument("--accelerator", default=default, choices=["auto", "cpu", "gpu"], help="Lightning accelerator")


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default {DEFAULT_STORAGE})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ple-search", description="Multi-objective architecture search for PLE multi-task models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="create or resume a study and run it to --trials finished trials")
    run.add_argument("--study", required=True, help="study name; also picks search_spaces/NAME.yaml")
    run.add_argument("--trials", type=COUNT, required=True, help="target number of finished trials in the study")
    run.add_argument("--space", help="search space YAML (default: search_spaces/STUDY.yaml, else the stored one)")
    _storage_arg(run)
    run.add_argument("--sampler", choices=["tpe", "nsga2", "nsga3", "gp", "random"], help="override the space's sampler")
    run.add_argument("--seed", type=INDEX, help="sampler and training seed (default: the space's sampler seed)")
    run.add_argument("--timeout", type=SECONDS, help="stop starting new trials after this many seconds")
    run.add_argument("--data-dir", help="folder holding the census files")
    run.add_argument("--max-epochs", type=COUNT, help="override the space's per-trial epoch budget")
    run.add_argument("--patience", type=COUNT, help="override the space's early-stopping patience")
    _accelerator_arg(run)
    run.add_argument("--threads", type=COUNT, help="torch threads per trial (default: one, more where a measured training step shows they pay)")
    run.add_argument("--quiet", action="store_true", help="one log line per trial instead of the live panel")
    run.add_argument("--jobs", type=COUNT, help="worker processes on this machine sharing the study (default: one per core, one thread each, on a CPU run with at least 4 trials per core to share, else 1)")
    _ray_args(run, "place the --jobs workers on this Ray cluster (host:port, or auto); needs an RDB or grpc:// storage")
    run.add_argument("--devices", type=_device_list, help="GPUs for the --jobs workers, round-robin (default: every visible GPU with --accelerator gpu|auto)")
    run.add_argument("--heartbeat-interval", type=COUNT, default=30, help="RDB storages and the gRPC proxy: seconds between a running trial's heartbeats")
    run.add_argument("--grace-period", type=COUNT, help="RDB storages and the gRPC proxy: seconds without heartbeat before a trial is failed and retried (default 2x interval)")
    run.add_argument("--storage-retry", type=RETRY_SECONDS, default=300.0, help="seconds to keep retrying an unreachable storage mid-run")
    _tracking_args(run)
    run.add_argument("--allow-space-change", action="store_true", help="resume a study whose stored space searches other params")

    pareto = sub.add_parser("pareto", help="show the Pareto-optimal trials of a study")
    pareto.add_argument("--study", required=True)
    _storage_arg(pareto)
    pareto.add_argument("--format", default="table", choices=["table", "json", "csv", "markdown"])
    pareto.add_argument("--output", type=_output_file, help="write the report to this file instead of stdout")
    pareto.add_argument("--plot", type=_plot_file, help="also write a Pareto plot (.png or .html)")
    pareto.add_argument("--x", help="with --plot: the x axis, any objective or serving cost (params, flops, latency)")
    pareto.add_argument("--y", help="with --plot: the y axis")
    pareto.add_argument("--all", action="store_true", help="every finished trial with its Pareto rank")
    pareto.add_argument("--confirmed", action="store_true", help="the trials re-checked by `ple-search confirm`")
    pareto.add_argument("--gates", type=INDEX, metavar="TRIAL", help="what the gates of a confirmed trial do (its first fresh seed, test split)")
    _limit_args(pareto)

    studies = sub.add_parser("studies", help="list the studies in a storage")
    _storage_arg(studies)

    proxy = sub.add_parser("storage-proxy", help="serve a storage to many workers through Optuna's gRPC storage proxy (--storage grpc://HOST:PORT)")
    proxy.add_argument("--storage", required=True, help="the storage behind the proxy: an RDB URL (postgresql://..., sqlite:///...) or a journal file")
    proxy.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    proxy.add_argument("--port", type=_port, default=13000, help="port to listen on (default 13000)")

    export = sub.add_parser("export", help="write one trial's config as a self-contained YAML")
    export.add_argument("--study", required=True)
    _storage_arg(export)
    chosen = export.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--trial", type=INDEX, help="this finished trial")
    chosen.add_argument("--pick", help="knee | best:TASK | weights:TASK=W,TASK=W (see README)")
    export.add_argument("--confirmed", action="store_true", help="with --pick: choose on the front `ple-search confirm` found (fresh-seed validation means)")
    _limit_args(export)
    export.add_argument("--out", type=_output_file, help="output YAML (default results/STUDY/best.yaml)")

    train = sub.add_parser("train", help="train an exported config on several seeds for production")
    train.add_argument("--config", required=True, help="YAML written by `ple-search export`")
    train.add_argument("--data-dir", help="folder holding the census files")
    train.add_argument("--seeds", type=COUNT, default=3)
    train.add_argument("--max-epochs", type=COUNT, help="override the config's epoch budget")
    train.add_argument("--out", type=_new_folder, help="output folder (default results/STUDY/train-TIMESTAMP)")
    _accelerator_arg(train, default="auto")
    _tracking_args(train)

    baselines = sub.add_parser("baselines", help="tune and retrain a single-task baseline per task of a study")
    baselines.add_argument("--study", required=True)
    _storage_arg(baselines)
    baselines.add_argument("--trials", type=COUNT, default=20, help="trials of each single-task search")
    baselines.add_argument("--seeds", type=COUNT, default=3, help="seeds the best single-task config is retrained on")
    baselines.add_argument("--data-dir", help="folder holding the census files")
    _accelerator_arg(baselines)
    baselines.add_argument("--no-gbdt", action="store_true", help="skip the gradient-boosted trees yardstick")
    baselines.add_argument("--threads", type=COUNT, help="torch threads (default: all cores)")
    _ray_args(baselines, "run each single-task search on --jobs Ray workers and each seed as a Ray task there (host:port, or auto); needs an RDB or grpc:// storage")
    baselines.add_argument("--jobs", type=COUNT, default=2, help="--ray: workers of each single-task search (default 2)")
    _tracking_args(baselines)

    confirm = sub.add_parser("confirm", help="retrain the front's configs on fresh seeds")
    confirm.add_argument("--study", required=True)
    _storage_arg(confirm)
    confirm.add_argument("--top", type=COUNT, help="only the K front trials with the largest hypervolume contribution")
    confirm.add_argument("--trial", type=INDEX, action="append", default=[], help="confirm this finished trial (repeatable)")
    confirm.add_argument("--seeds", type=COUNT, default=5)
    confirm.add_argument("--data-dir", help="folder holding the census files")
    confirm.add_argument("--threads", type=COUNT, help="torch threads (default: all cores)")
    _ray_args(confirm, "train every (trial, seed) as one Ray task on this cluster (host:port, or auto)")
    _accelerator_arg(confirm)
    _tracking_args(confirm)

    explain = sub.add_parser("explain", help="what a trained model's gates do: each task's weight on each expert")
    explain.add_argument("--model", required=True, help="folder written by `ple-search train`")
    explain.add_argument("--format", default="table", choices=["table", "json"])

    init = sub.add_parser("init", help="read a table and write a dataset spec and a search space for it")
    init.add_argument("--table", required=True, help="CSV or Parquet file, one row per example")
    init.add_argument("--tasks", required=True, type=_names, help="the label columns, e.g. click,purchase")
    init.add_argument("--time-column", help="split by this time column: earliest rows train, latest test")
    init.add_argument("--hours", type=SECONDS, default=1.0, help="the time the study may take; sizes epochs and trials (default 1)")
    init.add_argument("--out", default=".", type=_writable_place, help="folder for NAME.spec.yaml and search_spaces/NAME.yaml (default .)")
    init.add_argument("--name", help="study name (default: the table's file name)")
    init.add_argument("--force", action="store_true", help="replace existing spec and space files")

    predict = sub.add_parser("predict", help="score raw rows with a trained model")
    predict.add_argument("--model", required=True, help="folder written by `ple-search train`")
    predict.add_argument("--input", required=True, help="CSV or Parquet with the raw feature columns")
    predict.add_argument("--output", type=_output_file, help="CSV or Parquet to write (default: CSV on stdout)")
    predict.add_argument("--engine", default="torchscript", choices=["torchscript", "onnx", "eager"], help="serving graph: model.pt, model.onnx, or the checkpoint eagerly")
    predict.add_argument("--weights", help="also a fused score prod_k p_k^w_k, e.g. income=0.7,marital=0.3")
    return parser


def _resume_hint(argv: Sequence[str]) -> str:
    shown = [mask_url(a) for a in argv]
    return "ple-search " + shlex.join(shown)


def _run_request(args: argparse.Namespace):
    """The checked options of ``run`` as the typed request the library and the workers take."""
    from ple_search.study.run import RunRequest

    fields = RunRequest.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    values["devices"] = tuple(args.devices) if args.devices else None
    values["auto_jobs"] = args.jobs is None and args.threads is None
    return RunRequest(**values)


def cmd_run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ple_search.cli.progress import quiet_libraries

    quiet_libraries()
    request = _run_request(args)
    if request.auto_jobs:
        request = dataclasses.replace(request, jobs=_auto_jobs(request))
    if request.ray is not None:
        _tracker(request, request.study)
        return _run_ray(request, argv)
    if request.jobs > 1:  # the parent coordinates: the data and the engine load in forked processes only
        _tracker(request, request.study)  # a store MLflow refuses is one line before any study is created
        return _run_parallel(request, argv)
    return _run_one(request, argv)


def _run_one(request, argv: Sequence[str] | None) -> int:
    """A run in this process: the user's own with ``--jobs 1``, or one ``--jobs`` worker's."""
    import torch

    from ple_search.cli.progress import LiveReporter, LogReporter
    from ple_search.study.run import choose_threads, open_run, run_header, threads_line, trial_processes
    from ple_search.study.search import run_search
    from ple_search.train.engine import TrialSettings

    tracker = _tracker(request, request.study)  # checked before any study is created
    opened = open_run(request, _notice)
    study = opened.study
    threads = request.threads
    if request.worker is None:
        threads, why = choose_threads(request, opened)
        for line in [*run_header(request, opened), threads_line(threads, request.jobs, why, trial_processes(opened.space))]:
            err.print(line)
    torch.set_num_threads(threads or 1)
    settings = TrialSettings.from_budget(
        opened.objectives, request.epoch_budget(opened.space), seed=opened.seed, accelerator=request.accelerator,
        tensorboard=request.tensorboard, experiment=request.study,
    )  # fmt: skip
    display = (LogReporter if request.quiet else LiveReporter)(study, request.trials, err)
    if tracker is not None:
        from ple_search.study.record import StudyRecord
        from ple_search.study.tracking import TrackingReporter

        display = TrackingReporter(display, tracker, StudyRecord.from_study(study).objectives)
    with display as reporter:
        try:
            finished = run_search(
                study, opened.space, opened.dataset, settings, target=request.trials, reporter=reporter,
                timeout=request.timeout, storage_url=request.storage, storage_retry=request.storage_retry,
            )  # fmt: skip
        except (KeyboardInterrupt, Interrupted):
            if request.worker is None:
                _print_resume(study, request, argv)
            return 0
    if request.worker is None:
        err.print(f"{finished}/{request.trials} trials finished. {_pareto_hint(request)}")
    return 0


def _prepare_quietly(request) -> dict:
    """``study.run.prepare_run`` in the forked process that prepares a --jobs run, with Optuna's
    log lines and warnings off there too (that process starts from the fork server, not from us)."""
    from ple_search.cli.progress import quiet_libraries
    from ple_search.study.run import prepare_run

    quiet_libraries()
    return prepare_run(request)


def _auto_jobs(request) -> int:
    """Workers to try without --jobs/--threads: counts the study's finished trials (torch-free)."""
    from ple_search.study.record import count_finished
    from ple_search.study.run import auto_jobs
    from ple_search.study.storage import load_study, local_files, open_storage

    finished = 0
    if auto_jobs(request, 0) > 1 and not local_files(request.storage):  # a storage that exists: its trials count
        try:
            finished = count_finished(load_study(request.study, open_storage(request.storage, retry_seconds=request.storage_retry, notify=_notice)))
        except StorageError:
            finished = 0  # no such study yet
    return auto_jobs(request, finished)


def _pareto_hint(request) -> str:
    storage = f" --storage '{mask_url(request.storage)}'" if request.storage != DEFAULT_STORAGE else ""
    return f"Show the front: ple-search pareto --study {request.study}{storage}"


def _notice(message: str) -> None:
    err.print(message)


def _print_resume(study, request, argv: Sequence[str]) -> None:
    from ple_search.study.record import count_finished

    err.print(f"interrupted: {count_finished(study)}/{request.trials} trials finished and kept; running trials are marked FAIL.")
    err.print(f"resume with: {_resume_hint(argv)}")


def _run_parallel(request, argv: Sequence[str]) -> int:
    """``--jobs N``: the study is opened (created, checked) in a forked process, then N workers run
    it; this process only shows their progress and recovers dead workers' trials."""
    from ple_search.cli.progress import WorkersReporter
    from ple_search.study.parallel import call_forked, run_workers
    from ple_search.study.storage import load_study, open_storage

    prepared = call_forked(_prepare_quietly, request)
    for line in [*prepared["lines"], prepared["threads_line"]]:
        err.print(line)
    request = dataclasses.replace(request, jobs=prepared["jobs"])
    storage = open_storage(request.storage, request.heartbeat_interval, request.grace_period, retry_seconds=request.storage_retry, notify=_notice)
    study = load_study(request.study, storage)
    workers = [request.for_worker(i, prepared["threads"]) for i in range(request.jobs)]
    reporter = WorkersReporter(study, request.trials, err, request.jobs, echo=request.quiet)
    with reporter:
        errors, interrupted = run_workers(
            worker_main, workers, study, console=err, on_line=reporter.worker_line, tick=reporter.tick,
            devices=list(request.devices or prepared["gpus"]) or None,
        )  # fmt: skip
    return _workers_ended(study, request, argv, interrupted, errors, request.jobs, "workers")


def _workers_ended(study, request, argv: Sequence[str], interrupted: bool, errors: int, jobs: int, kind: str) -> int:
    """The last lines of a run by workers (``--jobs`` or ``--ray``) and its exit code."""
    from ple_search.study.record import count_finished

    if interrupted:
        _print_resume(study, request, argv)
        return 0
    if errors:
        err.print(f"error: {errors} of {jobs} {kind} failed; see their last lines above")
        return 2
    err.print(f"{count_finished(study)}/{request.trials} trials finished by {jobs} {kind}. {_pareto_hint(request)}")
    return 0


def _run_ray(request, argv: Sequence[str]) -> int:
    """``--ray ADDRESS``: the study is opened as for ``--jobs``, then ``--jobs`` workers run it as
    Ray tasks on the cluster (``study.cluster``); this process shows their progress."""
    from ple_search.cli.progress import WorkersReporter
    from ple_search.study.cluster import FinishedTrials, check_storage, connect, run_ray_workers
    from ple_search.study.parallel import call_forked
    from ple_search.study.storage import load_study, open_storage

    check_storage(request.storage)
    connect(request.ray)  # an unreachable cluster is one line before any study is created
    jobs = request.jobs if not request.auto_jobs else 2
    request = dataclasses.replace(request, jobs=jobs, threads=request.cpus_per_worker, auto_jobs=False)
    prepared = call_forked(_prepare_quietly, request)
    for line in prepared["lines"]:
        err.print(line)
    gpus = f", {request.gpus_per_worker:g} GPUs" if request.gpus_per_worker else ""
    processes = prepared["processes"]
    threads = max(1, request.cpus_per_worker // processes)  # a trial's processes share the worker's CPUs
    per = f"{processes} processes x {threads} torch threads" if processes > 1 else f"{threads} torch threads"
    err.print(f"workers: {jobs} Ray tasks on {request.ray}, {request.cpus_per_worker} CPUs{gpus} each ({per})")
    storage = open_storage(request.storage, request.heartbeat_interval, request.grace_period, retry_seconds=request.storage_retry, notify=_notice)
    study = load_study(request.study, storage)
    workers = [dataclasses.replace(request.for_worker(i, threads), ray=None) for i in range(jobs)]
    reporter = WorkersReporter(study, request.trials, err, jobs, echo=request.quiet)
    finished = FinishedTrials(study, jobs)

    def tick() -> None:  # the workers' lines stay on their nodes: each finished trial is told from the storage
        for slot, line in finished.new_lines():
            reporter.worker_line(slot, line)
        reporter.tick()

    from ple_search.cli import main as entry_module  # by its import name: Ray ships it by reference, also under `python -m`

    with reporter:
        errors, interrupted = run_ray_workers(
            entry_module.worker_main, workers, study, address=request.ray, storage_url=request.storage, target=request.trials,
            cpus=request.cpus_per_worker, gpus=request.gpus_per_worker, tick=tick, on_line=_notice,
        )  # fmt: skip
        for slot, line in finished.new_lines(force=True):
            reporter.worker_line(slot, line)
    return _workers_ended(study, request, argv, interrupted, errors, jobs, "Ray workers")


def _show_gates(report: dict, source: str, fmt: str) -> None:
    """A gate report (``serve.gates``) as a table, or as JSON with ``fmt`` json."""
    import json

    from rich.table import Table

    from ple_search.core.errors import ConfigError
    from ple_search.serve.gates import table

    try:
        header, rows = table(report)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{source}: damaged or not a ple-search gate report ({type(exc).__name__}: {exc}); retrain the model") from None
    if fmt == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    shown = Table(*header, title=f"mean gate weight per expert on the {report['split']} split ({report['rows']:,} rows)")
    for row in rows:
        shown.add_row(*row)
    out.print(shown)
    for level in report["levels"]:
        shares = ", ".join(f"{task} {gate['shared_share']:.0%}" for task, gate in level["tasks"].items())
        err.print(f"level {level['level']}: shared experts take {shares} of the task gates' weight")


def cmd_explain(args: argparse.Namespace) -> int:
    import json

    from ple_search.core.errors import ConfigError
    from ple_search.serve.gates import GATES

    path = Path(args.model) / GATES
    if not Path(args.model).is_dir():
        raise ConfigError(f"--model {args.model}: no such folder; name a folder written by `ple-search train`")
    if not path.is_file():
        raise ConfigError(f"{path}: not found; `ple-search train` writes it for models with gates (retrain a folder from before it did)")
    try:
        report = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: damaged or not a ple-search gates file ({type(exc).__name__}: {exc}); retrain the model") from None
    _show_gates(report, str(path), args.format)
    return 0


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: give column names separated by commas, e.g. click,purchase")
    return names


def cmd_init(args: argparse.Namespace) -> int:
    from ple_search.study.starter import init

    result, spec, space = init(
        Path(args.table), args.tasks, time_column=args.time_column, hours=args.hours, out=Path(args.out), force=args.force, name=args.name,
    )  # fmt: skip
    for line in result.decisions:
        err.print(line)
    err.print(f"wrote {spec} and {space}")
    err.print(f"run it: ple-search run --study {result.name} --space {shlex.quote(str(space))} --trials {result.trials}")
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ple_search.evaluate.report import plot, plot_axes, render, report, summary_line, table_rows
    from ple_search.study.storage import load_study, open_storage

    study = load_study(args.study, open_storage(args.storage))
    if args.gates is not None:
        from ple_search.core.errors import ConfigError
        from ple_search.study.record import StudyRecord

        entry = StudyRecord.from_study(study).confirmed.get("trials", {}).get(str(args.gates))
        if entry is None or "gates" not in entry:
            why = "has no gates (cross-stitch)" if entry is not None else "is not confirmed"
            raise ConfigError(f"--gates {args.gates}: trial {args.gates} of study '{args.study}' {why}; `ple-search confirm --study {args.study} --trial {args.gates}` trains it and stores what its gates do")
        _show_gates(entry["gates"], f"study '{args.study}' trial {args.gates}", "json" if args.format == "json" else "table")
        return 0
    axes = (args.x, args.y) if args.x or args.y else None
    if axes is not None:
        plot_axes(study, args.plot, axes)
    data = report(study, include_all=args.all, confirmed=args.confirmed, limits=_limits(args))
    if args.format == "table" and not args.output:
        header, cells = table_rows(data)
        table = Table(*header, title=summary_line(data))
        for row in cells:
            table.add_row(*row)
        out.print(table)
    else:
        text = render(data, "markdown" if args.format == "table" else args.format)
        if args.output:
            from ple_search.core.files import atomic_write_text

            atomic_write_text(Path(args.output), text)
        else:
            sys.stdout.write(text)
    if args.plot:
        plot(study, args.plot, axes)
    return 0


def cmd_studies(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ple_search.evaluate.report import studies_overview
    from ple_search.study.storage import open_storage

    table = Table("study", "finished", "pruned", "failed", "running", "front", "hypervolume", title=f"studies in {mask_url(args.storage)}")
    for row in studies_overview(open_storage(args.storage)):
        table.add_row(
            row["study"], *(str(row[s]) for s in ("complete", "pruned", "fail", "running")), str(row["front"]), f"{row['hypervolume']:.5f}"
        )  # fmt: skip
    out.print(table)
    return 0


def cmd_storage_proxy(args: argparse.Namespace) -> int:
    from ple_search.study.storage import serve_proxy

    serve_proxy(args.storage, args.host, args.port, notify=_notice)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ple_search.evaluate.export import Pick, build_config
    from ple_search.serve.exported import write_config
    from ple_search.study.storage import load_study, open_storage

    study = load_study(args.study, open_storage(args.storage))
    limits = _limits(args)
    pick = Pick(study, limits, confirmed=args.confirmed and args.trial is None)
    trial, reason = pick.choose(args.trial, args.pick)
    if args.confirmed and args.trial is None:
        reason += " (the front confirmed on fresh seeds, their validation means)"
    config = build_config(study, trial, args.storage, reason)
    out = Path(args.out or Path("results") / args.study / "best.yaml")
    write_config(config, out)
    err.print(f"chose trial {trial.number}: {reason}")
    if limits:
        err.print(f"  within the serving limits {limits.describe()}: they leave out {pick.excluded} of the front's trials")
    for k, task in enumerate(pick.tasks):
        low, high = pick.ranges()[task]
        value = pick.values[pick.front.index(trial), k] if trial in pick.front else trial.values[k]
        err.print(f"  {task}: {value:.4f} (front {low:.4f} .. {high:.4f})")
    err.print(f"  {pick_summary(trial)}")
    err.print(f"wrote {out}")
    return 0


def pick_summary(trial) -> str:
    from ple_search.study.record import BEST_EPOCH, HPARAMS
    from ple_search.evaluate.report import architecture

    hp = trial.user_attrs[HPARAMS]
    return f"{architecture(hp, len(trial.values))}, best epoch {trial.user_attrs.get(BEST_EPOCH)}"


def cmd_train(args: argparse.Namespace) -> int:
    import datetime as dt

    from rich.progress import Progress

    from ple_search.serve.exported import load_config
    from ple_search.cli.progress import quiet_libraries
    from ple_search.serve.production import load_config_dataset, train

    quiet_libraries()
    config = load_config(args.config)
    dataset = load_config_dataset(config, args.data_dir)
    study = (config.get("provenance") or {}).get("study", "model")
    out = Path(args.out or Path("results") / study / f"train-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")
    with Progress(console=err, transient=False) as progress:
        bars = {}

        def hook(seed: int):
            def on_epoch(epoch: int, max_epochs: int, best_epoch: int, metrics: dict[str, float]) -> None:
                if seed not in bars:
                    bars[seed] = progress.add_task(f"seed {seed}", total=max_epochs)
                shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
                progress.update(bars[seed], completed=epoch + 1, description=f"seed {seed} val {shown}")

            return on_epoch

        tracker = _tracker(args, study)
        on_seed = (lambda run: tracker.log_seeds("train", config["hparams"], [run])) if tracker else None
        metrics = train(
            config, dataset, out, args.seeds, max_epochs=args.max_epochs, accelerator=args.accelerator, hook=hook,
            tensorboard=args.tensorboard, on_seed=on_seed,
        )  # fmt: skip
    for task in metrics["mean"]["test"]:
        err.print(f"test {task}: {metrics['mean']['test'][task]:.4f} +- {metrics['std']['test'][task]:.4f} over {args.seeds} seeds")
    err.print(f"wrote {out} (best seed {metrics['best_seed']})")
    return 0


def _ray_args(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--ray", metavar="ADDRESS", help=what)
    parser.add_argument("--cpus-per-worker", type=COUNT, default=1, help="--ray: CPUs (and torch threads) per worker (default 1)")
    parser.add_argument("--gpus-per-worker", type=GPU_SHARE, default=0.0, help="--ray: GPUs per worker, e.g. 1 or 0.5 (default 0)")


def _placement(args: argparse.Namespace, search: bool):
    """``--ray``'s placement for ``baselines`` (``search``: workers on the shared storage) and
    ``confirm`` (seed tasks only); None without ``--ray``. Checked before any work starts."""
    if args.ray is None:
        return None
    from ple_search.study.cluster import RayPlacement, check_storage, connect

    if search:
        check_storage(args.storage)
    connect(args.ray)
    from ple_search.cli import main as entry_module  # by its import name: Ray ships it by reference

    return RayPlacement(args.ray, args.storage, getattr(args, "jobs", 1), args.cpus_per_worker, args.gpus_per_worker, entry_module.worker_main, _notice)


def _study_and_data(args: argparse.Namespace):
    """The study named by ``--study`` and its dataset, as ``run`` stored them."""
    import torch

    from ple_search.cli.progress import quiet_libraries
    from ple_search.study.search import load_study_and_data

    quiet_libraries()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    return load_study_and_data(args.study, args.storage, args.data_dir)


def cmd_baselines(args: argparse.Namespace) -> int:
    from ple_search.evaluate.baselines import run_baselines
    from ple_search.cli.progress import LogReporter
    from ple_search.study.record import StudyRecord

    placement = _placement(args, search=True)
    storage, study, dataset = _study_and_data(args)

    def reporter(single, trials):
        tracker = _tracker(args, single.study_name)
        if tracker is None:
            return LogReporter(single, trials, err)
        from ple_search.study.tracking import TrackingReporter

        return TrackingReporter(LogReporter(single, trials, err), tracker, StudyRecord.from_study(single).objectives)

    results = run_baselines(
        study, storage, dataset, args.trials, seeds=args.seeds, reporter=reporter, tensorboard=args.tensorboard, accelerator=args.accelerator,
        ray=placement, data_dir=args.data_dir,
    )  # fmt: skip
    for task, b in results.items():
        err.print(f"single-task {task}: test {b['test_mean']:.4f} +- {b['test_std']:.4f} over {b['seeds']} seeds (study {b['study']}, trial {b['trial']})")
    if not args.no_gbdt:
        from ple_search.evaluate.baselines import run_gbdt

        for task, g in run_gbdt(study, dataset, args.seeds).items():
            err.print(f"GBDT {task}: test {g['test_mean']:.4f} +- {g['test_std']:.4f} over {g['seeds']} seeds ({g['model']}, {g['params']})")
    err.print(f"stored in study {args.study}; `ple-search pareto --study {args.study}` now shows MTL gains")
    return 0


def cmd_confirm(args: argparse.Namespace) -> int:
    from ple_search.evaluate.confirm import choose, run_confirm
    from ple_search.study.record import HPARAMS

    placement = _placement(args, search=False)
    _, study, dataset = _study_and_data(args)
    trials = choose(study, args.top, args.trial)
    where = f" as {len(trials) * args.seeds} Ray tasks on {args.ray}" if placement else ""
    err.print(f"confirming trials {[t.number for t in trials]} on {args.seeds} fresh seeds{where}")
    tracker = _tracker(args, args.study)
    on_runs = (lambda trial, runs: tracker.log_seeds("confirm", trial.user_attrs[HPARAMS], runs, {"trial": trial.number})) if tracker else None
    result = run_confirm(
        study, dataset, trials, args.seeds, accelerator=args.accelerator, tensorboard=args.tensorboard, on_runs=on_runs,
        ray=placement, data_dir=args.data_dir,
    )  # fmt: skip
    stay = [n for n, c in result["trials"].items() if c["on_front"]]
    err.print(f"non-dominated on the seed means: trials {stay}; `ple-search pareto --study {args.study} --confirmed` shows them")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ple_search.data.table import read_table
    from ple_search.evaluate.export import parse_weights
    from ple_search.serve.production import load_engine, load_trained, predict

    module, preprocessor = load_trained(args.model)
    run = load_engine(args.model, args.engine, module)
    source = Path(args.input)
    frame = read_table(source, "parquet" if source.suffix in (".parquet", ".pq") else "csv")
    weights = parse_weights(args.weights, module.schema.task_names) if args.weights else None
    result = predict(module, preprocessor, frame, weights, where=str(source), run=run)
    if not args.output:
        sys.stdout.write(result.to_csv(index=False))
        return 0
    from ple_search.core.files import atomic_write

    out = Path(args.output)
    parquet = out.suffix in (".parquet", ".pq")
    atomic_write(out, lambda tmp: result.to_parquet(tmp) if parquet else result.to_csv(tmp, index=False))
    err.print(f"wrote {len(result)} rows to {out}")
    return 0


def _raise_interrupt(signum, frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _guarded(lambda: cmd_run(args, argv), interruptible=True)
    commands = {
        "pareto": cmd_pareto, "studies": cmd_studies, "export": cmd_export, "train": cmd_train,
        "predict": cmd_predict, "baselines": cmd_baselines, "confirm": cmd_confirm, "init": cmd_init, "explain": cmd_explain,
        "storage-proxy": cmd_storage_proxy,
    }  # fmt: skip
    return _guarded(lambda: commands[args.command](args))


def _guarded(command: Callable[[], int], interruptible: bool = False) -> int:
    """Run a command: library errors and storage failures are one line and exit code 2; with
    ``interruptible`` (``run``), Ctrl-C and SIGTERM raise ``Interrupted`` where the run handles them."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    if interruptible:
        for sig in previous:
            signal.signal(sig, _raise_interrupt)
    try:
        return command()
    except PLESearchError as exc:
        err.print(f"error: {' '.join(str(exc).split())}")  # one line, whatever the source said
        return 2
    except (KeyboardInterrupt, Interrupted):
        err.print("interrupted")
        return 130
    except Exception as exc:
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError):
            err.print(f"error: {StorageError(mask_url(str(exc).splitlines()[0]))}")
            return 2
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def worker_main(request) -> int:
    """A ``--jobs`` worker (``study.parallel``): its ``RunRequest`` run in this process, with the
    consoles made again (this module may have been imported before the worker's stderr became
    its pipe to the parent) and Ctrl-C/SIGTERM handled as in ``run``."""
    from ple_search.cli.progress import quiet_libraries

    global err, out
    err, out = _consoles()
    quiet_libraries()  # the worker's own process: Optuna's per-trial log lines would reach the parent's display
    return _guarded(lambda: _run_one(request, None), interruptible=True)


if __name__ == "__main__":
    sys.exit(main())
