"""Experiment tracking end to end: MLflow runs and TensorBoard event files read back after a real
search and a real production training (the track extra; CI installs it)."""

import json

import pytest
import yaml

from helpers import tiny_space
from ple_search.cli.main import main

mlflow = pytest.importorskip("mlflow", reason="the track extra (mlflow-skinny, tensorboard) is not installed; CI installs it")
pytest.importorskip("tensorboard", reason="the track extra (mlflow-skinny, tensorboard) is not installed; CI installs it")

SPACE = tiny_space(epochs=2)


def scalars(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


@pytest.mark.slow
def test_a_search_and_a_training_are_logged_to_mlflow_and_tensorboard(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    storage, uri, board = str(tmp_path / "s.journal"), f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "tb"
    common = ["--storage", storage, "--mlflow", uri, "--tensorboard", str(board)]
    assert main(["run", "--study", "c", "--space", str(tmp_path / "space.yaml"), "--trials", "2", "--quiet", "--threads", "1", *common]) == 0

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("c")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ple_search.role") == "search"]
    trials = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id), key=lambda r: r.data.tags["trial"])
    assert len(parents) == 1 and [r.data.tags["trial"] for r in trials] == ["0", "1"]
    import optuna

    study = optuna.load_study(study_name="c", storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage)))
    for run, trial in zip(trials, study.trials):
        assert run.data.tags["state"] == "COMPLETE" and float(run.data.params["lr"]) == pytest.approx(trial.params["lr"])
        curve = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "val/y1"), key=lambda m: m.step)]
        assert curve == pytest.approx([row["y1"] for row in trial.user_attrs["val_curve"]])
        assert run.data.metrics["objective/y2"] == pytest.approx(trial.values[1])
        assert run.data.metrics["cost/params"] == trial.user_attrs["cost"]["params"]
        assert scalars(board / "c" / f"trial-{trial.number}", "val/y1/rmse") == pytest.approx(curve, rel=1e-6)

    assert main(["export", "--study", "c", "--storage", storage, "--trial", "0", "--out", str(tmp_path / "best.yaml")]) == 0
    out = tmp_path / "model"
    assert main(["train", "--config", str(tmp_path / "best.yaml"), "--seeds", "2", "--out", str(out), "--mlflow", uri, "--tensorboard", str(board)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    seeds = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("ple_search.role") == "train-member"]
    assert sorted(r.data.tags["seed"] for r in seeds) == ["0", "1"]
    for run in seeds:
        assert run.data.metrics["test/y1"] == pytest.approx(metrics["runs"][run.data.tags["seed"]]["test"]["y1"])
    assert (board / "c-train" / "seed-0").is_dir() and (board / "c-train" / "seed-1").is_dir()


def test_tracking_without_the_extra_is_one_line(tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    code = main(["run", "--study", "c", "--space", str(tmp_path / "space.yaml"), "--trials", "1", "--storage", str(tmp_path / "s.journal"), "--mlflow", "sqlite:///x.db"])
    err = capsys.readouterr().err
    assert code == 2 and "--mlflow needs the track extra: pip install 'ple-search[track]'" in err and len(err.strip().splitlines()) == 1


def test_a_tracking_store_mlflow_refuses_is_one_line_naming_the_flag_and_no_study_is_created(tmp_path, capsys):
    import optuna

    from ple_search.study.storage import open_storage

    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    storage = tmp_path / "s.journal"
    code = main(["run", "--study", "c", "--space", str(tmp_path / "space.yaml"), "--trials", "1", "--storage", str(storage), "--mlflow", "nosuch://user:hunter2@host/x"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: --mlflow nosuch://user:***@host/x: ") and "hunter2" not in err and "sqlite:///mlflow.db" in err
    assert optuna.get_all_study_names(open_storage(str(storage))) == []
