"""GPU training, precision and per-worker placement on a real CUDA device. Skipped with the
reason on machines without one; the worker-to-device assignment itself is also tested without a
GPU (``test_parallel.py``: the environment each worker receives)."""

from __future__ import annotations

import pytest
import torch
import yaml

from ple_search.train.engine import TrialSettings, evaluate, train_config
from helpers import make_dataset, tiny_space

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is visible on this machine"),
]


@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
def test_a_config_trains_on_the_gpu_in_each_precision_and_matches_fp32_auc(precision):
    dataset = make_dataset(n=2000)
    settings = TrialSettings(list(dataset.schema.tasks), max_epochs=4, patience=4, accelerator="gpu")
    module, recorder, _ = train_config({"precision": precision, "lr": 0.01, "batch_size": 128}, dataset, settings, seed=0)
    assert next(module.parameters()).device.type == "cuda"
    cpu = TrialSettings(list(dataset.schema.tasks), max_epochs=4, patience=4)
    _, reference, _ = train_config({"precision": "32", "lr": 0.01, "batch_size": 128}, dataset, cpu, seed=0)
    for task in ("t0", "t1"):
        assert recorder.curve[recorder.best_epoch][task] == pytest.approx(reference.curve[reference.best_epoch][task], abs=0.03)
    assert set(evaluate(module, dataset.test)) == {"t0", "t1"}


def test_gradient_balancing_runs_on_the_gpu():
    dataset = make_dataset(n=1000)
    settings = TrialSettings(list(dataset.schema.tasks), max_epochs=2, patience=2, accelerator="gpu")
    for method in ("pcgrad", "nash", "famo"):
        module, recorder, _ = train_config({"loss_weighting": method, "batch_size": 128}, dataset, settings, seed=0)
        assert torch.isfinite(module.weighting.weights()).all() and recorder.best_epoch >= 0


def test_jobs_workers_train_on_the_listed_gpu(tmp_path, monkeypatch):
    import optuna

    from ple_search.cli.main import main

    monkeypatch.chdir(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(tiny_space()))
    storage = str(tmp_path / "g.journal")
    argv = ["run", "--study", "g", "--space", str(space), "--trials", "2", "--jobs", "2", "--devices", "0", "--accelerator", "gpu", "--storage", storage, "--quiet"]
    assert main(argv) == 0
    from ple_search.study.storage import open_storage

    trials = optuna.load_study(study_name="g", storage=open_storage(storage)).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert {t.user_attrs["device"] for t in trials} == {"0"}


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs: a two-process GPU trial takes one per rank")
def test_a_two_process_gpu_trial_trains_with_nccl_one_gpu_per_rank():
    dataset = make_dataset(n=2001)
    one = TrialSettings(list(dataset.schema.tasks), max_epochs=2, patience=2, accelerator="gpu")
    two = TrialSettings(list(dataset.schema.tasks), max_epochs=2, patience=2, accelerator="gpu", processes=2)
    _, single, _ = train_config({"lr": 0.01, "batch_size": 128}, dataset, one, seed=0)
    module, double, _ = train_config({"lr": 0.01, "batch_size": 128}, dataset, two, seed=0)
    assert next(module.parameters()).device == torch.device("cuda", 0)
    for a, b in zip(single.curve, double.curve):
        assert a == pytest.approx(b, abs=5e-3)
