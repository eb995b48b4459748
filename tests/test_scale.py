"""Recommender-scale data path: the Arrow columnar path equals the pandas path, hashed IDs,
the memory-mapped cache, and the run header's embedding memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ple_search.data import census, columnar, load, table
from ple_search.data.cache import cache_dir
from ple_search.data.preprocess import hashed_codes
from ple_search.core.errors import DataError
from helpers import user_table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "census-income-kdd"


def both_paths(spec_path: Path):
    spec = table.read_spec(spec_path)
    fast = table._build_columnar(spec, spec["file"], {})
    reference = table._build_pandas(spec, spec["file"], {})
    return fast, reference


def assert_identical(fast, reference):
    assert fast.preprocessor == reference.preprocessor
    assert fast.schema == reference.schema
    for name in ("train", "val", "test"):
        a, b = fast.split(name), reference.split(name)
        assert a.cat.dtype == b.cat.dtype == torch.int32
        assert torch.equal(a.cat, b.cat)
        assert torch.equal(a.num, b.num)  # bit-identical floats
        assert torch.equal(torch.nan_to_num(a.labels, -1.0), torch.nan_to_num(b.labels, -1.0))


def mixed_frame(n: int = 500, seed: int = 0) -> pd.DataFrame:
    """Every kind of column the two paths could read differently: integer IDs with gaps (stored
    as float by Parquet), floats, text with blanks and 'nan', booleans, missing numerics, a
    regression label and a sparse binary one."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 40, n).astype(float)
    ids[rng.random(n) < 0.1] = np.nan
    city = rng.choice(["berlin", "paris", "", "nan", "rome", "1.0", "1"], n)
    income = rng.lognormal(3, 1, n).round(3)
    income[rng.random(n) < 0.05] = np.nan
    click = rng.random(n) < 0.4
    return pd.DataFrame({
        "user": ids, "city": city, "flag": rng.random(n) < 0.5, "score": rng.normal(0, 1, n),
        "income": income, "visits": rng.poisson(2, n), "watch": rng.uniform(0, 100, n).round(2),
        "click": click.astype(int), "buy": np.where(click, (rng.random(n) < 0.3).astype(float), np.nan),
    })  # fmt: skip


MIXED_SPEC = """
file: FILE
categorical: [user, city, flag]
numeric: [score, income, visits]
log1p: [income]
min_count: 2
tasks:
  - {name: click, type: binary}
  - {name: buy, type: binary}
  - {name: watch, type: regression}
split: {fractions: [0.6, 0.2, 0.2], seed: 3}
"""


@pytest.mark.parametrize("name", ["mixed.csv", "mixed.parquet"])
def test_the_arrow_path_gives_the_pandas_paths_codes_vocabularies_and_values(tmp_path, name):
    frame = mixed_frame()
    frame.to_parquet(tmp_path / name) if name.endswith(".parquet") else frame.to_csv(tmp_path / name, index=False)
    (tmp_path / "spec.yaml").write_text(MIXED_SPEC.replace("FILE", name))
    assert_identical(*both_paths(tmp_path / "spec.yaml"))


def test_the_arrow_path_equals_the_pandas_path_on_the_user_table_fixture(tmp_path):
    assert_identical(*both_paths(user_table(tmp_path)))


@pytest.mark.skipif(not (SHARED / f"{census.TEST_FILE}.gz").is_file(), reason="census file not beside the repository")
def test_the_arrow_path_equals_the_pandas_path_on_the_census_file(tmp_path):
    frame = census.read_raw(SHARED / f"{census.TEST_FILE}.gz")
    frame["income_label"] = census.TASKS["income"](frame).astype(int)
    frame["marital_label"] = census.TASKS["marital"](frame).astype(int)
    frame.to_csv(tmp_path / "census.csv", index=False)
    spec = {
        "file": "census.csv", "categorical": census.CATEGORICAL, "numeric": census.NUMERIC, "log1p": census.LOG1P,
        "tasks": [{"name": "income", "column": "income_label", "type": "binary"}, {"name": "marital", "column": "marital_label", "type": "binary"}],
        "split": {"fractions": [0.7, 0.15, 0.15], "seed": 0},
    }  # fmt: skip
    (tmp_path / "census.yaml").write_text(yaml.safe_dump(spec))
    fast, reference = both_paths(tmp_path / "census.yaml")
    assert_identical(fast, reference)
    assert len(fast.train) + len(fast.val) + len(fast.test) == 99_762


def test_a_regular_table_never_takes_the_pandas_path(tmp_path, monkeypatch):
    spec = user_table(tmp_path)
    monkeypatch.setattr(table, "_build_pandas", lambda *a: pytest.fail("the pandas path ran"))
    assert len(load(str(spec), use_cache=False).train) == 240


def test_a_value_the_arrow_path_cannot_vouch_for_gets_the_pandas_paths_one_line_error(tmp_path):
    frame = mixed_frame()
    frame["score"] = frame["score"].astype(object)
    frame.loc[7, "score"] = "nan"  # Arrow would read NaN; the pandas path refuses the text
    frame.to_csv(tmp_path / "mixed.csv", index=False)
    (tmp_path / "spec.yaml").write_text(MIXED_SPEC.replace("FILE", "mixed.csv"))
    spec = table.read_spec(tmp_path / "spec.yaml")
    with pytest.raises(columnar.Irregular):
        table._build_columnar(spec, spec["file"], {})
    with pytest.raises(DataError, match=r"mixed.csv: numeric column 'score' has a non-numeric value 'nan' \(first at row 8\)"):
        load(str(tmp_path / "spec.yaml"))


HASHED_SPEC = """
file: t.parquet
categorical: [user, city]
numeric: [score]
hash_buckets: {user: 16}
tasks: [{name: click, type: binary}]
"""


def test_hashed_columns_take_codes_1_to_n_and_the_vocabulary_stays_empty(tmp_path):
    frame = mixed_frame(800)
    frame["user"] = [f"u{i}" for i in np.random.default_rng(1).integers(0, 5000, 800)]
    frame.to_parquet(tmp_path / "t.parquet")
    (tmp_path / "spec.yaml").write_text(HASHED_SPEC)
    fast, reference = both_paths(tmp_path / "spec.yaml")
    assert_identical(fast, reference)
    assert fast.preprocessor.categorical["user"] == [] and fast.schema.vocab_sizes[0] == 17
    codes = torch.cat([fast.train.cat[:, 0], fast.test.cat[:, 0]])
    assert int(codes.min()) >= 1 and int(codes.max()) <= 16 and codes.unique().numel() > 12
    # serving encodes raw rows the same way, unseen IDs included
    raw = frame.iloc[:50].assign(user=[f"new{i}" for i in range(50)])
    served, _ = fast.preprocessor.transform(raw)
    assert np.array_equal(served[:, 0], hashed_codes([f"new{i}" for i in range(50)], 16))


def test_hashing_is_the_same_in_another_process():
    texts = ["u1", "", "nan", "ü-42", "9" * 40]
    here = hashed_codes(texts, 1000).tolist()
    code = f"from ple_search.data.preprocess import hashed_codes; print(hashed_codes({texts!r}, 1000).tolist())"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert json.loads(there.stdout) == here


@pytest.mark.parametrize("buckets, match", [
    ("{city: 0}", "hash_buckets for 'city' is 0; give a whole number of buckets from 1"),
    ("{score: 8}", "hash_buckets column 'score' is not listed under 'categorical'"),
    ("[user]", "'hash_buckets' must map categorical column names to bucket counts"),
])  # fmt: skip
def test_bad_hash_buckets_are_one_line_naming_the_spec_and_column(tmp_path, buckets, match):
    (tmp_path / "spec.yaml").write_text(HASHED_SPEC.replace("{user: 16}", buckets))
    with pytest.raises(DataError, match=match):
        table.read_spec(tmp_path / "spec.yaml")


def mapped_file(tensor: torch.Tensor) -> Path | None:
    """The file whose mapping holds the tensor's memory (from /proc/self/maps), or None."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return Path(fields[5]) if len(fields) == 6 and fields[5].startswith("/") else None
    return None


def test_a_loaded_dataset_is_memory_mapped_from_its_cache_entry(tmp_path):
    spec = user_table(tmp_path)
    first = load(str(spec))
    again = load(str(spec))
    entry = Path(again.info["cache"])
    for dataset in (first, again):  # the builder, too, trains from the mapping
        assert mapped_file(dataset.train.cat) == entry / "train_cat.npy"
        assert mapped_file(dataset.test.num) == entry / "test_num.npy"
    assert entry.is_dir() and sorted(p.name for p in entry.iterdir()) == sorted(
        ["meta.json"] + [f"{s}_{k}.npy" for s in ("train", "val", "test") for k in ("cat", "num", "labels")]
    )
    assert torch.equal(first.train.cat, again.train.cat) and again.schema == first.schema


def test_a_torn_cache_entry_is_rebuilt(tmp_path):
    spec = user_table(tmp_path)
    first = load(str(spec))
    expected = first.train.num.clone()  # the mapping itself sees the truncation below
    entry = Path(first.info["cache"])
    array = entry / "train_num.npy"
    array.write_bytes(array.read_bytes()[: array.stat().st_size // 2])  # a real truncated file
    again = load(str(spec))
    assert torch.equal(again.train.num, expected)
    assert not list(cache_dir().glob(".*.tmp"))  # no leftovers


def test_the_run_header_shows_rows_and_embedding_memory(tmp_path, capsys):
    from ple_search.cli.main import main

    spec = user_table(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "dataset": {"name": str(spec)}, "sampler": {"name": "random", "seed": 0}, "budget": {"max_epochs": 1, "patience": 1},
        "params": {"embedding_dim": {"type": "categorical", "choices": [4, 8]}},
    }))  # fmt: skip
    assert main(["run", "--study", "s", "--space", str(space), "--storage", str(tmp_path / "s.journal"), "--trials", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "rows train / val / test 240 / 80 / 80; 1 categorical, 2 numeric features; embeddings 5 rows x 4-8 = 0.0-0.0 MB" in err
