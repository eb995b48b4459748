"""The newest features meet bad input and damaged files: one line naming the file, flag or key and
what to do, exit code 2, no traceback, nothing half-written; real cut files and real services."""

import json
import math
import shutil

import pandas as pd
import pytest
import yaml

from helpers import tiny_space, user_table
from ple_search.cli.main import main


def one_line(capsys, *needles):
    """The command's stderr is one line holding every needle, and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A `ple-search train` folder of a tiny user table, and raw rows to predict."""
    folder = tmp_path_factory.mktemp("trained")
    spec = user_table(folder)
    space = {
        "dataset": {"name": str(spec)}, "sampler": {"name": "random", "seed": 1}, "budget": {"max_epochs": 1, "patience": 1},
        "fixed": {"batch_size": 64, "expert_hidden": [8], "tower_hidden": [4], "levels": 1},
    }  # fmt: skip
    (folder / "space.yaml").write_text(yaml.safe_dump(space))
    storage = str(folder / "s.journal")
    assert main(["run", "--study", "shop", "--space", str(folder / "space.yaml"), "--trials", "1", "--storage", storage, "--quiet", "--threads", "1"]) == 0
    assert main(["export", "--study", "shop", "--storage", storage, "--trial", "0", "--out", str(folder / "best.yaml")]) == 0
    assert main(["train", "--config", str(folder / "best.yaml"), "--seeds", "1", "--out", str(folder / "model")]) == 0
    raw = pd.read_csv(folder / "events.csv", dtype=str, keep_default_na=False)
    raw[raw.split == "test"].drop(columns=["click", "buy", "split"]).head(20).to_csv(folder / "rows.csv", index=False)
    return folder


def cut(path, keep=0.5):
    """A real torn file: its first ``keep`` share of bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.slow
@pytest.mark.parametrize("damaged, engine, needle", [
    ("model.onnx", "onnx", "ONNX model"),
    ("model.pt", "torchscript", "TorchScript model"),
    ("seed-0/best.ckpt", "eager", "checkpoint"),
    ("metrics.json", "torchscript", "metrics.json"),
    ("preprocessor.json", "torchscript", "preprocessor.json"),
])  # fmt: skip
def test_predict_on_a_model_folder_with_a_cut_file_is_one_line_naming_it(trained, tmp_path, capsys, damaged, engine, needle):
    model = tmp_path / "model"
    shutil.copytree(trained / "model", model)
    cut(model / damaged)
    capsys.readouterr()
    code = main(["predict", "--model", str(model), "--input", str(trained / "rows.csv"), "--engine", engine])
    assert code == 2
    line = one_line(capsys, needle, damaged.split("/")[-1])
    assert "retrain" in line or "not a `ple-search train`" in line


def test_predict_on_a_missing_model_folder_is_one_line(tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path / "nowhere"), "--input", str(tmp_path / "rows.csv")]) == 2
    one_line(capsys, "--model", "no such folder")


def degenerate_table(folder, n=600, seed=0):
    """A regression table whose column ``const`` is constant and ``empty`` blank in the train split
    (both vary in validation and test), beside one informative column."""
    import numpy as np

    rng = np.random.default_rng(seed)
    split = np.where(np.arange(n) < n * 0.6, "train", np.where(np.arange(n) < n * 0.8, "val", "test"))
    x = rng.normal(0, 1, n)
    frame = pd.DataFrame({
        "x": x, "const": np.where(split == "train", 5.0, rng.normal(50, 30, n)),
        "empty": np.where(split == "train", np.nan, rng.normal(-40, 20, n)),
        "spend": 100 + 13 * x + rng.normal(0, 3, n), "split": split,
    })  # fmt: skip
    frame.to_csv(folder / "t.csv", index=False)
    (folder / "t.yaml").write_text("file: t.csv\nnumeric: [x, const, empty]\ntasks:\n  - {name: spend, type: regression}\nsplit: {column: split}\n")
    return folder / "t.yaml", float(frame.spend[split == "val"].std())


@pytest.mark.parametrize("encoding", ["quantile", "piecewise", "periodic", "standard"])
def test_columns_empty_or_constant_in_train_keep_every_encoding_sane(tmp_path, encoding):
    from ple_search.data import load
    from ple_search.train.engine import TrialSettings, train_config

    spec, spread = degenerate_table(tmp_path)
    dataset = load(str(spec), use_cache=False)
    settings = TrialSettings(list(dataset.schema.tasks), max_epochs=4, patience=4)
    hparams = {"numeric_encoding": encoding, "numeric_bins": 8, "lr": 0.01, "batch_size": 64, "levels": 1}
    _, recorder, _ = train_config(hparams, dataset, settings, seed=0)
    rmse = recorder.curve[recorder.best_epoch]["spend"]
    assert math.isfinite(rmse) and rmse < 1.5 * spread, (encoding, rmse, spread)  # predicting the mean gives ~spread


def test_a_constant_regression_label_is_refused_before_any_trial_naming_the_task(tmp_path, capsys):
    spec, _ = degenerate_table(tmp_path)
    frame = pd.read_csv(tmp_path / "t.csv")
    frame["spend"] = 7.0
    frame.to_csv(tmp_path / "t.csv", index=False)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**tiny_space(), "dataset": {"name": str(spec)}}))
    storage = tmp_path / "s.journal"
    assert main(["run", "--study", "c", "--space", str(space), "--trials", "1", "--storage", str(storage), "--quiet"]) == 2
    one_line(capsys, "regression task 'spend' is constant (7) in the train split")
    assert not storage.exists() or not __import__("optuna").get_all_study_names(__import__("ple_search.study.storage", fromlist=["x"]).open_storage(str(storage)))


def test_pareto_json_is_strict_json_even_for_trials_without_metrics(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(tiny_space(objectives=["y1", "y2", {"cost": "params"}], limits={"params": 1500},
                                               params={"expert_hidden": {"type": "categorical", "choices": [[4], [64]]}},
                                               enqueue=[{"expert_hidden": [64]}, {"expert_hidden": [4]}], fixed={"batch_size": 128, "levels": 1})))
    storage = str(tmp_path / "s.journal")
    assert main(["run", "--study", "c", "--space", str(space), "--trials", "2", "--storage", storage, "--quiet", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "PRUNED before training, over budget: params " in err and "None epochs" not in err
    assert main(["pareto", "--study", "c", "--storage", storage, "--format", "json", "--all"]) == 0
    text = capsys.readouterr().out
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in strict JSON"))


def test_a_plot_of_a_cost_the_study_never_measured_is_one_line(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(tiny_space()))
    storage = str(tmp_path / "s.journal")
    assert main(["run", "--study", "c", "--space", str(space), "--trials", "1", "--storage", storage, "--quiet", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["pareto", "--study", "c", "--storage", storage, "--plot", str(tmp_path / "p.png"), "--x", "latency", "--y", "y1"]) == 2
    one_line(capsys, "'latency_ms'", "never measured it")
    assert not (tmp_path / "p.png").exists()


def test_a_column_under_both_categorical_and_numeric_is_one_line(tmp_path, capsys):
    spec, _ = degenerate_table(tmp_path)
    spec.write_text(spec.read_text().replace("numeric: [x, const, empty]", "categorical: [x]\nnumeric: [x, const]"))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**tiny_space(), "dataset": {"name": str(spec)}}))
    assert main(["run", "--study", "c", "--space", str(space), "--trials", "1", "--storage", str(tmp_path / "s.journal")]) == 2
    one_line(capsys, "column 'x' is listed under both 'categorical' and 'numeric'")


def test_a_cache_variable_naming_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("PLE_SEARCH_CACHE", str(tmp_path / "file"))
    spec, _ = degenerate_table(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**tiny_space(), "dataset": {"name": str(spec)}}))
    assert main(["run", "--study", "c", "--space", str(space), "--trials", "1", "--storage", str(tmp_path / "s.journal")]) == 2
    one_line(capsys, "PLE_SEARCH_CACHE=", "is a file; name a folder")


def test_model_folders_follow_the_umask_like_their_files(trained):
    import stat

    folder = trained / "model"
    mask = __import__("os").umask(0)
    __import__("os").umask(mask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((folder / "seed-0").stat().st_mode) == 0o777 & ~mask


# --- settings that would fail every trial, and places and services, checked before the first trial ---


def run_tiny(tmp_path, *extra, space=None, study="c"):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space or tiny_space()))
    storage = tmp_path / "s.journal"
    code = main(["run", "--study", study, "--space", str(path), "--trials", "1", "--storage", str(storage), "--quiet", "--threads", "1", *extra])
    return code, storage


def nothing_left(storage):
    assert not storage.exists(), "a refused run left its storage file behind"


def test_tensorboard_naming_a_file_is_one_line_before_any_study(tmp_path, capsys):
    (tmp_path / "tb").write_text("a file")
    code, storage = run_tiny(tmp_path, "--tensorboard", str(tmp_path / "tb"))
    assert code == 2
    one_line(capsys, "--tensorboard", "is a file; name a folder")
    nothing_left(storage)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_accelerator_gpu_without_a_gpu_is_one_line_before_any_study(tmp_path, capsys):
    code, storage = run_tiny(tmp_path, "--accelerator", "gpu")
    assert code == 2
    one_line(capsys, "--accelerator gpu: no CUDA GPU is visible")
    nothing_left(storage)


def test_a_serving_batch_no_machine_can_measure_is_one_line(tmp_path, capsys):
    code, storage = run_tiny(tmp_path, space=tiny_space(serving={"batch_size": 10**12}))
    assert code == 2
    one_line(capsys, "key 'serving.batch_size': must be an integer from 1 to 1,000,000")
    nothing_left(storage)


def test_limits_no_model_meets_leave_no_study_and_no_file(tmp_path, capsys):
    code, storage = run_tiny(tmp_path, space=tiny_space(limits={"params": 10}))
    assert code == 2
    one_line(capsys, "no config of the space can meet it")
    nothing_left(storage)


def test_a_missing_data_dir_is_one_line(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**tiny_space(), "dataset": {"name": "census"}}))
    assert main(["run", "--study", "c", "--space", str(space), "--trials", "1", "--storage", str(tmp_path / "s.journal"), "--data-dir", str(tmp_path / "nope")]) == 2
    one_line(capsys, "--data-dir", "no such folder")


def test_mlflow_naming_a_folder_is_one_line_naming_the_flag_within_seconds(tmp_path, capsys):
    import time

    (tmp_path / "store").mkdir()
    start = time.monotonic()
    code, storage = run_tiny(tmp_path, "--mlflow", f"sqlite:///{tmp_path / 'store'}")
    assert code == 2 and time.monotonic() - start < 10
    one_line(capsys, "--mlflow", "is a folder")
    nothing_left(storage)


def test_mlflow_on_a_closed_port_is_one_line_within_seconds(tmp_path, capsys):
    import socket
    import time

    with socket.socket() as probe:  # a real port, closed again: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    code, storage = run_tiny(tmp_path, "--mlflow", f"http://127.0.0.1:{port}")
    assert code == 2 and time.monotonic() - start < 10
    one_line(capsys, f"--mlflow http://127.0.0.1:{port}: no MLflow server answers there")
    nothing_left(storage)


@pytest.mark.slow
@pytest.mark.parametrize("missing, extra, space, needle", [
    (("onnx", "onnxruntime"), [], tiny_space(serving={"engine": "onnx", "repeats": 2}), "key 'serving': the onnx engine needs the serve extra: pip install 'ple-search[serve]'"),
    (("tensorboard", "tensorboardX"), ["--tensorboard", "tb"], tiny_space(), "--tensorboard needs the track extra: pip install 'ple-search[track]'"),
])  # fmt: skip
def test_an_extra_that_is_not_installed_is_one_line_naming_its_pip_install(tmp_path, missing, extra, space, needle):
    """In a fresh interpreter where the extra's packages cannot be imported (``sys.modules[name] =
    None``: ``import`` raises ModuleNotFoundError and ``find_spec`` finds nothing, as for a user
    who never installed the extra)."""
    import subprocess
    import sys

    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    probe = (
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({missing!r}))\n"
        "from ple_search.cli.main import main\n"
        f"sys.exit(main(['run', '--study', 'c', '--space', 'space.yaml', '--trials', '1', '--storage', 's.journal', '--quiet', *{extra!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1 and needle in done.stderr, done.stderr
    assert not (tmp_path / "s.journal").exists()


@pytest.mark.slow
def test_latency_on_the_onnx_engine_leaves_nothing_in_the_temp_folder(tmp_path, monkeypatch):
    import tempfile

    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile reads TMPDIR again
    code, _ = run_tiny(tmp_path, space=tiny_space(serving={"engine": "onnx", "repeats": 2, "warmup": 0}, objectives=["y1", "y2", {"cost": "latency"}]))
    assert code == 0
    assert [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("ple-search-onnx-")] == []


def test_resume_refuses_changed_serving_settings_even_with_allow_space_change(tmp_path, capsys):
    space = tiny_space(serving={"batch_size": 64, "repeats": 2, "warmup": 0}, objectives=["y1", "y2", {"cost": "latency"}])
    code, storage = run_tiny(tmp_path, space=space)
    assert code == 0
    space["serving"]["batch_size"] = 512
    capsys.readouterr()
    code, _ = run_tiny(tmp_path, "--allow-space-change", space=space)
    assert code == 2
    one_line(capsys, "cannot continue: serving {'batch_size': 64", "latencies measured differently", "pick another --study name")


def test_resume_with_changed_limits_needs_allow_space_change_and_records_it(tmp_path, capsys):
    space = tiny_space(limits={"params": 100000})
    assert run_tiny(tmp_path, space=space)[0] == 0
    space["limits"] = {"params": 50000}
    capsys.readouterr()
    assert run_tiny(tmp_path, space=space)[0] == 2
    one_line(capsys, "limits.params 100000 -> 50000", "--allow-space-change")
    assert run_tiny(tmp_path, "--allow-space-change", space=space)[0] == 0


@pytest.mark.parametrize("argv", [
    ["pareto", "--study", "s", "--output", "{file}/x.json"],
    ["pareto", "--study", "s", "--plot", "{file}/x.png"],
    ["export", "--study", "s", "--trial", "0", "--out", "{file}/b.yaml"],
    ["train", "--config", "c.yaml", "--out", "{file}/model"],
    ["predict", "--model", "m", "--input", "rows.csv", "--output", "{file}/p.csv"],
])  # fmt: skip
def test_an_output_under_a_file_is_one_line_before_any_work(tmp_path, capsys, argv):
    (tmp_path / "afile").write_text("a file")
    with pytest.raises(SystemExit) as exit_info:
        main([a.replace("{file}", str(tmp_path / "afile")) for a in argv])
    assert exit_info.value.code == 2
    one_line(capsys, "afile is a file, so nothing can be written under it")


def test_a_cut_exported_config_is_one_line_naming_it(trained, tmp_path, capsys):
    text = (trained / "best.yaml").read_text()
    (tmp_path / "cut.yaml").write_text(text[: len(text) // 3])
    assert main(["train", "--config", str(tmp_path / "cut.yaml"), "--seeds", "1", "--out", str(tmp_path / "m")]) == 2
    one_line(capsys, "cut.yaml")
    assert not (tmp_path / "m").exists()
