"""`ple-search init`: a user's table becomes a dataset spec and a search space, each decision
printed and asserted here, and the files it writes run a study unchanged; bad input is one line."""

import numpy as np
import pandas as pd
import pytest
import yaml

from ple_search.cli.main import main


def realistic(folder):
    """The README's demo table (``bench/events.py``): a recommender's log with a row ID, 100k-value
    user IDs, item IDs, a device, prices, a constant, timestamps, clicks and purchases after clicks."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("events", Path(__file__).resolve().parent.parent / "bench" / "events.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.events().to_parquet(folder / "events.parquet")
    return folder / "events.parquet"


def decisions(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.slow
def test_a_realistic_log_gets_every_decision_and_its_files_run_a_study(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = realistic(tmp_path)
    assert main(["init", "--table", str(table), "--tasks", "click,purchase", "--time-column", "ts", "--hours", "0.1"]) == 0
    err = decisions(capsys)
    assert "column event_id: left out: ID-like" in err
    assert "column user_id: categorical: integer IDs" in err and "hash buckets" in err.split("column user_id")[1].splitlines()[0]
    assert "column item_id: categorical: integer IDs (3,000 values; the name says ID); a vocabulary" in err
    assert "column device: categorical: string with 3 values" in err
    assert "column price: numeric" in err and "log1p (positive, heavy-tailed" in err
    assert "column country: left out: constant ('de')" in err
    assert "split: by time on ts" in err
    assert "task purchase: its positives are a subset of click's" in err and "a cascade click -> purchase" in err
    spec = yaml.safe_load((tmp_path / "events.spec.yaml").read_text())
    assert spec["categorical"] == ["user_id", "item_id", "device"] and spec["numeric"] == ["price"] and spec["log1p"] == ["price"]
    assert set(spec["hash_buckets"]) == {"user_id"} and spec["split"] == {"by": "ts", "fractions": [0.8, 0.1, 0.1]}
    assert spec["tasks"][1] == {"name": "purchase", "type": "binary", "depends_on": "click"}
    command = err.strip().splitlines()[-1]
    assert command.startswith("run it: ple-search run --study events --space search_spaces/events.yaml --trials ")
    space = yaml.safe_load((tmp_path / "search_spaces" / "events.yaml").read_text())
    assert space["objectives"] == ["click", "purchase"] and space["budget"]["max_epochs"] >= 3
    assert space["params"]["task_relation"]["choices"] == ["esmm", "aitm", "independent"]
    argv = command.removeprefix("run it: ple-search ").split()
    argv[argv.index("--trials") + 1] = "2"
    assert main([*argv, "--quiet", "--max-epochs", "1"]) == 0  # the written spec and space, unchanged
    assert "2/2 trials finished" in capsys.readouterr().err


def small_csv(folder, **columns):
    rng = np.random.default_rng(1)
    n = 1500
    base = {"x": rng.normal(size=n), "code": rng.integers(0, 5, n), "name": [f"n{i}" for i in range(n)]}
    frame = pd.DataFrame({**base, **{k: v(rng, n) if callable(v) else v for k, v in columns.items()}})
    frame.to_csv(folder / "t.csv", index=False)
    return folder / "t.csv"


def test_regression_sparse_and_named_labels_codes_and_text_ids_are_decided_and_said(tmp_path, capsys):
    table = small_csv(
        tmp_path, spend=lambda rng, n: rng.normal(50, 10, n), liked=lambda rng, n: rng.choice(["yes", "no"], n),
        rated=lambda rng, n: np.where(rng.random(n) < 0.3, rng.integers(0, 2, n).astype(float), np.nan),
    )  # fmt: skip
    assert main(["init", "--table", str(table), "--tasks", "spend,liked,rated", "--hours", "0.01", "--out", str(tmp_path)]) == 0
    err = decisions(capsys)
    assert "task spend: regression" in err
    assert "task liked: binary (no, yes; positive: yes)" in err
    assert "task rated: sparse, labelled on" in err
    assert "column code: categorical: 5 integer values (a code, not a quantity)" in err
    assert "column name: left out: ID-like" in err
    assert "column x: numeric: float" in err and "log1p" not in err.split("column x:")[1].splitlines()[0]
    assert "split: random 80/10/10" in err
    spec = yaml.safe_load((tmp_path / "t.spec.yaml").read_text())
    assert spec["tasks"][1] == {"name": "liked", "type": "binary", "labels": {"no": 0, "yes": 1}}


@pytest.mark.parametrize("argv, needle", [
    (["--tasks", "nope"], "--tasks: no column 'nope'"),
    (["--tasks", "code", "--time-column", "when"], "--time-column: no column 'when'"),
    (["--tasks", "one"], "--tasks: task 'one' has one class"),
])  # fmt: skip
def test_bad_columns_are_one_line(tmp_path, capsys, argv, needle):
    table = small_csv(tmp_path, one=1)
    assert main(["init", "--table", str(table), *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "t.spec.yaml").exists()


def test_a_file_that_is_not_a_table_is_one_line(tmp_path, capsys):
    (tmp_path / "t.parquet").write_bytes(b"PAR1 this is not parquet at all")
    assert main(["init", "--table", str(tmp_path / "t.parquet"), "--tasks", "y", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a readable PARQUET table" in err


def test_existing_files_are_not_replaced_without_force(tmp_path, capsys):
    table = small_csv(tmp_path, y=lambda rng, n: rng.integers(0, 2, n))
    args = ["init", "--table", str(table), "--tasks", "y", "--hours", "0.01", "--out", str(tmp_path)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
