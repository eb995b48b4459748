"""Bad inputs are one line naming the file/key/column/flag and exit 2, checked before any work;
inputs that mean the same thing give the same result (file types, unquoted YAML words, units)."""

import subprocess
import sys

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from helpers import user_table
from ple_search.cli.main import main
from ple_search.data import load
from ple_search.data.preprocess import Preprocessor
from ple_search.core.errors import ConfigError, DataError
from ple_search.train.engine import TrialSettings, train_config
from ple_search.study.search import reference_point
from ple_search.study.space import parse_space

TINY = {
    "dataset": {"name": "synthetic", "options": {"n": 600, "d": 4}},
    "sampler": {"name": "random", "seed": 0},
    "budget": {"max_epochs": 1, "patience": 1},
    "fixed": {"batch_size": 128},
    "params": {"lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True}},
}


def one_line_error(capsys, code):
    captured = capsys.readouterr()
    text = (captured.err + captured.out).strip()
    assert code == 2, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    return text


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def call(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's exit for usage errors
        return exc.code


@pytest.mark.parametrize("flag, value, allowed", [
    ("--seed", "-1", ">= 0"), ("--threads", "0", ">= 1"), ("--max-epochs", "-1", ">= 1"),
    ("--max-epochs", "0", ">= 1"), ("--patience", "0", ">= 1"), ("--timeout", "0", "> 0"),
    ("--timeout", "nan", "> 0"), ("--trials", "0", ">= 1"), ("--jobs", "0", ">= 1"),
    ("--heartbeat-interval", "0", ">= 1"), ("--storage-retry", "-5", ">= 0"), ("--seed", "x", "an integer"),
])  # fmt: skip
def test_out_of_range_run_options_are_one_line_before_any_work(tmp_path, tiny, capsys, flag, value, allowed):
    storage = tmp_path / "s.journal"
    argv = ["run", "--study", "s", "--space", str(tiny), "--trials", "1", "--storage", str(storage), flag, value]
    text = one_line_error(capsys, call(argv))
    assert f"argument {flag}" in text and allowed in text
    assert not storage.exists()  # nothing was started


@pytest.mark.parametrize("argv, message", [
    (["train", "--config", "c.yaml", "--seeds", "0"], "argument --seeds"),
    (["confirm", "--study", "s", "--top", "0"], "argument --top"),
    (["baselines", "--study", "s", "--trials", "-3"], "argument --trials"),
    (["export", "--study", "s", "--trial", "-1"], "argument --trial"),
    (["pareto", "--study", "s", "--plot", "front.pdf"], "must end in .png or .html"),
])  # fmt: skip
def test_out_of_range_options_of_other_commands_are_one_line(argv, message, capsys):
    assert message in one_line_error(capsys, call(argv))


@pytest.mark.parametrize("command", [
    ["pareto", "--study", "s", "--output", "{dir}"], ["export", "--study", "s", "--pick", "knee", "--out", "{dir}"],
    ["predict", "--model", "m", "--input", "x.csv", "--output", "{dir}"],
])  # fmt: skip
def test_an_output_path_that_is_a_folder_is_refused(tmp_path, command, capsys):
    argv = [a.format(dir=tmp_path) for a in command]
    assert "is a folder; name a file to write" in one_line_error(capsys, call(argv))


@pytest.mark.parametrize("change, key", [
    ({"params": {"lr": {"type": "float", "low": 0.001, "high": 0.01, "step": 0}}}, "params.lr.step"),
    ({"params": {"levels": {"type": "int", "low": 1, "high": 3, "step": 0.5}}}, "params.levels.step"),
    ({"fixed": ["lr"]}, "'fixed'"),
    ({"params": {"loss_weighting": {"type": "categorical", "choices": ["equal", "dwa"]},
                 "dwa_temperature": {"type": "float", "low": 1, "high": 3, "when": {"loss_weighting": ["uncertainty"]}}}},
     "params.dwa_temperature.when.loss_weighting"),
    ({"params": {"levels": {"type": "int", "low": 1, "high": 2},
                 "dropout": {"type": "float", "low": 0, "high": 0.3, "when": {"levels": [5]}}}}, "params.dropout.when.levels"),
    ({"params": {"expert_hidden": {"type": "categorical", "choices": [{"a": 1}]}}}, "params.expert_hidden.choices"),
    ({"sampler": ["tpe"]}, "'sampler'"), ({"sampler": {"name": "tpe", "seed": -1}}, "sampler.seed"),
    ({"budget": 5}, "'budget'"), ({"enqueue": {"levels": 1}}, "'enqueue'"),
    ({"dataset": {"name": "synthetic", "options": [1]}}, "dataset.options"),
])  # fmt: skip
def test_space_values_optuna_would_reject_while_sampling_are_refused_naming_the_key(change, key):
    raw = {**TINY, **change}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_space(raw, "space.yaml")


def test_a_yaml_syntax_error_is_one_line_with_its_position(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  lr: {type: float, low: 1\nfixed: x\n")
    text = one_line_error(capsys, call(["run", "--study", "s", "--space", str(bad), "--trials", "1"]))
    assert f"{bad}: search space is not valid YAML at line 3" in text


def write_table(folder, frame, name="t.csv"):
    path = folder / name
    frame.to_parquet(path) if name.endswith(".parquet") else frame.to_csv(path, index=False)
    (folder / "t.yaml").write_text(
        f"file: {name}\ncategorical: [c]\nnumeric: [x]\n"
        "tasks:\n  - {name: y, type: binary}\nsplit: {fractions: [0.6, 0.2, 0.2], seed: 0}\n"
    )
    return folder / "t.yaml"


def small_frame(n=60):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"c": rng.choice(["a", "b"], n), "x": rng.normal(size=n).round(3), "y": np.arange(n) % 2})


@pytest.mark.parametrize("bad", ["inf", "-inf", "1e400"])
def test_non_finite_numbers_are_refused_with_column_and_row(tmp_path, bad):
    frame = small_frame().astype({"x": object})
    frame.loc[7, "x"] = bad
    spec = write_table(tmp_path, frame)
    with pytest.raises(DataError, match=rf"numeric column 'x' has a non-finite value '{bad}' at row 8"):
        load(str(spec))


def test_a_ragged_csv_row_is_one_line_naming_the_line(tmp_path, capsys):
    spec = write_table(tmp_path, small_frame())
    with open(tmp_path / "t.csv", "a") as handle:
        handle.write("a,0.5,1,extra\n")
    with pytest.raises(DataError, match=r"t\.csv: line 62 has 4 fields where the header has 3"):
        load(str(spec))


def test_duplicate_parquet_columns_are_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table([pa.array(["a", "b"]), pa.array([1.0, 2.0]), pa.array([0, 1]), pa.array([1, 2])], names=["c", "x", "y", "x"]), tmp_path / "t.parquet")
    spec = write_table(tmp_path, small_frame(), "t.parquet")
    pq.write_table(pa.table([pa.array(["a", "b"]), pa.array([1.0, 2.0]), pa.array([0, 1]), pa.array([1, 2])], names=["c", "x", "y", "x"]), tmp_path / "t.parquet")
    with pytest.raises(DataError) as info:
        load(str(spec))
    assert str(info.value).endswith("t.parquet: duplicate column name 'x'") and "\n" not in str(info.value)


def test_integer_categories_get_the_same_codes_from_csv_and_parquet(tmp_path):
    frame = pd.DataFrame({"store": [1, 2, None, 3, 2, 1, None, 3], "x": np.arange(8.0)})
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.to_parquet(tmp_path / "a.parquet")
    from ple_search.data.table import read_table

    csv, parquet = read_table(tmp_path / "a.csv", "csv"), read_table(tmp_path / "a.parquet", "parquet")
    assert parquet["store"].dtype == np.float64  # Parquet keeps an int column with gaps as float
    fitted = Preprocessor.fit(csv, ["store"], ["x"])
    assert fitted.categorical["store"] == ["1", "2", "3", "nan"]
    assert np.array_equal(fitted.transform(csv)[0], fitted.transform(parquet)[0])
    assert np.array_equal(Preprocessor.fit(parquet, ["store"], ["x"]).transform(parquet)[0], fitted.transform(csv)[0])


def test_unquoted_yes_no_labels_are_read_as_the_user_wrote_them(tmp_path):
    spec = user_table(tmp_path)
    text = spec.read_text().replace("labels: {'yes': 1, 'no': 0}", "labels: {yes: 1, no: 0}")
    assert "{yes: 1, no: 0}" in text
    spec.write_text(text)
    assert yaml.safe_load(text)["tasks"][0]["labels"] == {True: 1, False: 0}  # what YAML 1.1 makes of it
    dataset = load(str(spec))
    frame = pd.read_csv(tmp_path / "events.csv")
    train = frame[frame["split"] == "train"]
    assert dataset.train.labels[:, 0].numpy().tolist() == (train["click"] == "yes").astype(float).tolist()


def test_a_regression_task_far_from_zero_beats_the_mean_predictor(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    x = rng.normal(size=(n, 3))
    age = 70 + 12 * np.tanh(x[:, 0] + 0.5 * x[:, 1]) + rng.normal(0, 3, n)  # mean ~70, std ~10
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "age": age.round(2), "click": (x[:, 2] > 0).astype(int)})
    frame.to_csv(tmp_path / "people.csv", index=False)
    (tmp_path / "people.yaml").write_text(
        "file: people.csv\nnumeric: [a, b, c]\ntasks:\n  - {name: age, type: regression}\n  - {name: click, type: binary}\n"
    )
    dataset = load(str(tmp_path / "people.yaml"))
    task = dataset.schema.tasks[0]
    assert task.shift == pytest.approx(float(dataset.train.labels[:, 0].mean()), rel=1e-6) and 8 < task.scale < 14
    settings = TrialSettings(list(dataset.schema.tasks), max_epochs=10, patience=10)
    module, recorder, _ = train_config({"lr": 0.01, "batch_size": 128, "expert_hidden": [16]}, dataset, settings, seed=0)
    rmse = recorder.curve[recorder.best_epoch]["age"]
    mean_predictor = reference_point(dataset, ["age"])[0]
    assert rmse < 0.5 * mean_predictor, (rmse, mean_predictor)
    outputs = module(dataset.val.cat, dataset.val.num)[:, 0]
    assert abs(float(outputs.detach().mean()) - 70) < 3  # predictions are in the label's units


@pytest.mark.slow
def test_an_exported_config_trains_from_another_directory(tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    project.mkdir()
    user_table(project)
    space = dict(TINY, dataset={"name": "events.yaml"}, fixed={"batch_size": 64, "expert_hidden": [4], "tower_hidden": [4]})
    (project / "space.yaml").write_text(yaml.safe_dump(space))
    monkeypatch.chdir(project)  # `run` is given the spec relative to where it starts
    storage = f"sqlite:///{tmp_path}/s.db"
    assert main(["run", "--study", "shop", "--space", "space.yaml", "--trials", "2", "--storage", storage, "--quiet", "--threads", "1"]) == 0
    assert main(["export", "--study", "shop", "--storage", storage, "--trial", "0", "--out", str(tmp_path / "best.yaml")]) == 0
    config = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert config["dataset"]["name"] == str(project / "events.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--config", str(tmp_path / "best.yaml"), "--seeds", "1", "--out", str(tmp_path / "model")]) == 0
    assert (tmp_path / "model" / "metrics.json").is_file()


@pytest.mark.parametrize("argv", [["--help"], ["studies"], ["pareto", "--study", "s"], ["export", "--study", "s", "--trial", "0"]])
def test_commands_that_do_not_train_never_import_torch(tmp_path, argv):
    storage = tmp_path / "s.journal"
    study = optuna.create_study(study_name="s", storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(storage))), directions=["maximize"])
    study.set_user_attr("ple_search", {"objectives": ["a"], "metrics": ["auc"], "reference_point": [0.5], "schema": {"tasks": []}})
    args = argv + (["--storage", str(storage)] if argv != ["--help"] else [])
    code = (
        "import sys\nfrom ple_search.cli.main import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "loaded = sorted(m for m in ('torch', 'pytorch_lightning', 'lightning') if m in sys.modules)\n"
        "print('HEAVY', loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "HEAVY []" in done.stdout, done.stdout + done.stderr
