"""Production training of an exported config, and loading the result to predict on raw rows.

``train`` writes one output folder, moved into place only when complete:

* ``seed-N/best.ckpt``: the best-validation Lightning checkpoint of each seed,
* ``metrics.json``: validation and test metrics per seed, their mean and std, the best seed,
* ``config.yaml``: the config as trained, ``preprocessor.json``: schema and fitted preprocessing
  (plain JSON, no pickle), ``model.pt``: TorchScript of the best seed, ``(cat, num) -> outputs``,
* ``gates.json`` and ``gates.png``: each task's mean gate weight on each expert per level on the
  test split (``serve.gates``; ``ple-search explain`` shows it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd
import torch


from ple_search.data import Dataset
from ple_search.data.preprocess import Preprocessor
from ple_search.data.schema import Schema
from ple_search.core.errors import ConfigError, DataError, PLESearchError
from ple_search.serve.exported import write_config
from ple_search.core.files import follow_umask, fsync_path, fsync_tree, strict_json
from ple_search.train.module import PLEModule
from ple_search.train.metrics import summarize
from ple_search.serve import gates
from ple_search.serve.engines import Engine, engine, export_onnx, onnx_available, torchscript
from ple_search.train.engine import EpochHook, SeedRun, TrialSettings, score, train_on_seeds

METRICS, PREPROCESSOR, SCRIPTED, CONFIG, ONNX = "metrics.json", "preprocessor.json", "model.pt", "config.yaml", "model.onnx"


def load_config_dataset(config: dict[str, Any], data_dir: str | None = None) -> Dataset:
    """The dataset an exported config describes; ``data_dir`` (census files) is recorded in it."""
    from ple_search.data import load_described, with_data_dir

    config["dataset"] = with_data_dir(config["dataset"], data_dir)
    return load_described(config["dataset"])


def build_module(config: Mapping[str, Any], schema: Schema | Mapping[str, Any] | None = None) -> PLEModule:
    """A fresh ``PLEModule`` for an exported config (its own schema unless one is given)."""
    return PLEModule(schema if schema is not None else config["schema"], config["hparams"])


def train(
    config: dict[str, Any],
    dataset: Dataset,
    out_dir: Path,
    seeds: int = 3,
    *,
    max_epochs: int | None = None,
    accelerator: str = "cpu",
    hook: Callable[[int], EpochHook] | None = None,
    tensorboard: str | None = None,
    on_seed: Callable[[SeedRun], None] | None = None,
) -> dict[str, Any]:
    """Train ``config`` once per seed (early stopping on validation), evaluate on test and write
    ``out_dir`` atomically; returns the metrics written to ``metrics.json``.

    Args:
        config: an exported config (``serve.exported.load_config``).
        dataset: its data (``data.load_described(config["dataset"])``).
        out_dir: the folder to create; it must not exist.
        seeds: train on seeds 0..seeds-1; the best by validation score is exported.
        max_epochs: overrides the config's epoch budget.
        accelerator: Lightning's (``cpu``, ``gpu``, ``auto``).
        hook: ``hook(seed)`` gives each seed's per-epoch callback.
        tensorboard: a folder for Lightning's TensorBoard logger (one version per seed).
        on_seed: called with each finished seed's run (experiment tracking).
    """
    if out_dir.exists():
        raise ConfigError(f"output folder {out_dir} already exists; pass another --out")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    tasks = dataset.schema.tasks_named(config.get("objectives") or dataset.schema.task_names, "the config")
    training = {**config["training"], **({"max_epochs": max_epochs} if max_epochs else {})}
    study = (config.get("provenance") or {}).get("study", "model")
    settings = TrialSettings.from_budget(tasks, training, accelerator=accelerator, tensorboard=tensorboard, experiment=f"{study}-train")
    if settings.processes > (os.cpu_count() or 1):
        raise ConfigError(f"the config's training.trial_processes = {settings.processes}: this machine has {os.cpu_count()} cores; at most that many")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    follow_umask(work)
    try:
        runs, best = {}, None
        for run in train_on_seeds(config["hparams"], dataset, settings, range(seeds), hook=hook):
            if on_seed is not None:
                on_seed(run)
            runs[run.seed] = {"val": run.val, "test": run.test, "best_epoch": run.recorder.best_epoch + 1, "train_seconds": round(run.seconds, 3)}
            (work / f"seed-{run.seed}").mkdir()
            run.module.trainer.save_checkpoint(work / f"seed-{run.seed}" / "best.ckpt")
            if best is None or score(run.val, tasks) > score(best.val, tasks):
                best = run
        example = (dataset.test.cat[:2].long().to(best.module.device), dataset.test.num[:2].to(best.module.device))
        torchscript(best.module, example).save(str(work / SCRIPTED))
        if onnx_available():  # the serve extra; without it model.pt is the serving graph
            export_onnx(best.module, work / ONNX, example)
        usage = gates.measure(best.module, dataset.test)  # what the best seed's gates do on test
        if usage is not None:
            (work / gates.GATES).write_text(strict_json(usage, indent=2))
            gates.plot(usage, work / gates.GATES_PLOT)
        val_mean, val_std = summarize([r["val"] for r in runs.values()])
        test_mean, test_std = summarize([r["test"] for r in runs.values()])
        metrics = {
            "runs": {str(seed): run for seed, run in runs.items()},
            "mean": {"val": val_mean, "test": test_mean},
            "std": {"val": val_std, "test": test_std},
            "best_seed": best.seed,
            "checkpoint": f"seed-{best.seed}/best.ckpt",
        }
        (work / METRICS).write_text(strict_json(metrics, indent=2))
        (work / PREPROCESSOR).write_text(strict_json({"schema": dataset.schema.to_dict(), "preprocessor": dataset.preprocessor.to_dict()}))
        write_config({**config, "training": training}, work / CONFIG)
        fsync_tree(work)
        os.replace(work, out_dir)
        fsync_path(out_dir.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return metrics


def load_trained(out_dir: str | Path) -> tuple[PLEModule, Preprocessor]:
    """The best seed's module (``weights_only`` loading) and the fitted preprocessing."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ConfigError(f"--model {out_dir}: no such folder; name a folder written by `ple-search train`")
    metrics = _read_json(out_dir, METRICS)
    saved = _read_json(out_dir, PREPROCESSOR)
    checkpoint = metrics.get("checkpoint") if isinstance(metrics, dict) else None
    if not isinstance(checkpoint, str) or not isinstance(saved, dict) or not {"schema", "preprocessor"} <= set(saved):
        raise ConfigError(f"{out_dir}: {METRICS} or {PREPROCESSOR} is not what `ple-search train` writes; {RETRAIN}")
    with _damaged(out_dir / checkpoint, "checkpoint"):
        module = PLEModule.load_from_checkpoint(out_dir / checkpoint, map_location="cpu", weights_only=True)
    module.eval()
    with _damaged(out_dir / PREPROCESSOR, "preprocessor file"):
        schema, preprocessor = Schema.from_dict(saved["schema"]), Preprocessor.from_dict(saved["preprocessor"])
    if schema != module.schema:
        raise ConfigError(f"{out_dir}: {PREPROCESSOR} does not match the checkpoint's schema; {RETRAIN}")
    return module, preprocessor


RETRAIN = "retrain with `ple-search train --config CONFIG`"


def _read_json(out_dir: Path, name: str) -> Any:
    path = out_dir / name
    if not path.is_file():
        raise ConfigError(f"{out_dir}: no {name}; not a `ple-search train` output folder")
    with _damaged(path, "file"):
        return json.loads(path.read_text())


@contextlib.contextmanager
def _damaged(path: Path, what: str, advice: str = RETRAIN) -> Iterator[None]:
    """Whatever the reader of a model file raises (a cut zip archive, a bad protobuf, bad JSON,
    an I/O error) becomes one line naming the file and what to do."""
    try:
        yield
    except PLESearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - every library's own error for a damaged file
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ConfigError(f"{path}: damaged or not a ple-search {what} ({type(exc).__name__}: {reason}); {advice}") from None


def load_engine(out_dir: str | Path, name: str, module: PLEModule) -> Engine:
    """The serving graph of a ``train`` output folder run by engine ``name``: ``torchscript``
    (``model.pt``), ``onnx`` (``model.onnx``, written when the serve extra was installed) or
    ``eager`` (the checkpoint's module)."""
    out_dir = Path(out_dir)
    other = "or use --engine eager (the checkpoint)"
    if name == "torchscript":
        if not (out_dir / SCRIPTED).is_file():
            raise ConfigError(f"{out_dir}: no {SCRIPTED}; {RETRAIN}, {other}")
        with warnings.catch_warnings(), _damaged(out_dir / SCRIPTED, "TorchScript model", f"{RETRAIN}, {other}"):
            warnings.simplefilter("ignore", DeprecationWarning)
            return engine(name, module, scripted=torch.jit.load(str(out_dir / SCRIPTED), map_location="cpu"))
    if name == "onnx" and not (out_dir / ONNX).is_file():
        raise ConfigError(f"{out_dir}: no {ONNX}; it is written by `ple-search train` when the serve extra is installed (pip install 'ple-search[serve]')")
    if name == "eager":
        return engine(name, module)
    with _damaged(out_dir / ONNX, "ONNX model", f"{RETRAIN}, {other}"):
        return engine(name, module, onnx_path=out_dir / ONNX)


@torch.no_grad()
def predict(
    module: PLEModule, preprocessor: Preprocessor, frame: pd.DataFrame, weights: Mapping[str, float] | None = None,
    *, where: str = "input", run: Engine | None = None,
) -> pd.DataFrame:  # fmt: skip
    """One column per task (probability or value) for raw rows; with ``weights`` also the fused
    ranking score prod_k p_k^(w_k) over binary tasks. ``run`` is the engine (``load_engine``);
    default the module itself, eagerly."""
    cat, num = preprocessor.transform(frame, where)
    module.eval()
    if run is None:
        outputs = module.predict_outputs(torch.from_numpy(cat), torch.from_numpy(num)).numpy()
    else:
        outputs = run(cat, num)  # engines take the codes and numerics as transform returns them
    result = pd.DataFrame(outputs, columns=module.schema.output_names, index=frame.index)
    if weights:
        binary = [t.name for t in module.schema.tasks if t.kind.probability]
        bad = [t for t in weights if t not in binary]
        if bad:
            raise DataError(f"--weights: '{bad[0]}' is not a binary task of this model; binary tasks: {binary}")
        result["score"] = np.prod([result[t].to_numpy() ** w for t, w in weights.items()], axis=0)
    return result
