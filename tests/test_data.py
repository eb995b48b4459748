"""Data sources (census, synthetic, users' tables), the cache, bad inputs and batches."""

import gzip
import io
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ple_search.data import census, load
from ple_search.data.batches import TensorBatches
from ple_search.data.synthetic import generate
from ple_search.core.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "census-income-kdd"
EDUCATION = ["Children", "High school graduate", "Bachelors degree(BA AB BS)", "Masters degree(MA MS MEng MEd MSW MBA)"]
MARITAL = ["Never married", "Married-civilian spouse present", "Divorced"]


def census_rows(n: int, seed: int) -> list[str]:
    """Rows in the UCI format (", "-separated, 42 columns, literal NA and ? categories)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        values = []
        for col in census.COLUMNS:
            if col in census.NUMERIC:
                values.append(str(int(rng.integers(0, 90))))
            elif col == "education":
                values.append(EDUCATION[i % 4])
            elif col == "marital_status":
                values.append(MARITAL[i % 3])
            elif col == "income":
                values.append("50000+." if i % 5 == 0 else "- 50000.")
            elif col == "instance_weight":
                values.append(f"{rng.uniform(100, 3000):.2f}")
            elif col == "hispanic_origin":
                values.append(["NA", "All other", "Mexican (Mexicano)"][i % 3])
            else:
                values.append(["?", "Not in universe", f"v{rng.integers(0, 4)}"][i % 3])
        rows.append(", ".join(values))
    return rows


def write_census(folder: Path, train: int | None = 200, test: int | None = 120, gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, seed in ((census.TRAIN_FILE, train, 1), (census.TEST_FILE, test, 2)):
        if n is None:
            continue
        text = "\n".join(census_rows(n, seed)) + "\n"
        if gz:
            with gzip.open(folder / f"{name}.gz", "wt") as f:
                f.write(text)
        else:
            (folder / name).write_text(text)
    return folder


def test_census_official_split_tasks_and_features(tmp_path):
    d = load("census", data_dir=write_census(tmp_path / "c"), tasks=["income", "marital", "education"])
    assert (len(d.train), len(d.val), len(d.test)) == (200, 60, 60)
    assert d.schema.task_names == ["income", "marital", "education"]
    assert d.info["split"].startswith("official")
    features = set(d.schema.categorical) | set(d.schema.numeric)
    assert not features & {"education", "marital_status", "income", "instance_weight"}
    assert abs(float(d.train.labels[:, 0].mean()) - 0.2) < 1e-6  # every 5th row is 50000+.
    assert abs(float(d.train.labels[:, 1].mean()) - 67 / 200) < 1e-6  # "Never married" every 3rd
    hispanic = census.CATEGORICAL.index("hispanic_origin")
    assert "NA" in d.preprocessor.categorical["hispanic_origin"]  # NA is a category, not missing
    assert d.train.cat[:, hispanic].min() >= 1


def test_census_single_file_fallback_is_stratified_and_said(tmp_path):
    d = load("census", data_dir=write_census(tmp_path / "c", train=None, test=400, gz=True))
    assert d.info["split"].startswith("single-file fallback")
    assert (len(d.train), len(d.val), len(d.test)) == (280, 60, 60)
    for split in (d.train, d.val, d.test):
        assert abs(float(split.labels[:, 0].mean()) - 0.2) < 0.02


def test_census_features_are_the_same_for_single_and_multi_task(tmp_path):
    folder = write_census(tmp_path / "c")
    single = load("census", data_dir=folder, tasks=["income"])
    multi = load("census", data_dir=folder, tasks=["income", "marital"])
    assert single.schema.categorical == multi.schema.categorical and torch.equal(single.train.num, multi.train.num)


@pytest.mark.skipif(not (SHARED / "census-income.test.gz").exists(), reason="shared census file not present")
def test_census_development_file_label_rates():
    d = load("census", data_dir=SHARED)
    assert len(d.train) + len(d.val) + len(d.test) == 99_762
    labels = torch.cat([d.train.labels, d.val.labels, d.test.labels])
    assert abs(float(labels[:, 0].mean()) - 0.062) < 0.001 and abs(float(labels[:, 1].mean()) - 0.432) < 0.001


def test_census_missing_files_offline_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(census, "URL", "http://127.0.0.1:9/census.zip")
    with pytest.raises(DataError, match="put census-income.data and census-income.test") as info:
        load("census")
    assert "download failed" in str(info.value)


def test_census_download_verifies_and_unpacks(tmp_path, monkeypatch):
    src = write_census(tmp_path / "src", train=30, test=20, gz=True)
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:gz") as tar:
        for name in ("census-income.data.gz", "census-income.test.gz"):
            tar.add(src / name, arcname=f"census/{name}")
    archive = tmp_path / "census.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("census.tar.gz", tar_bytes.getvalue())
    monkeypatch.setattr(census, "EXPECTED_ROWS", {census.TRAIN_FILE: 30, census.TEST_FILE: 20})
    import hashlib

    monkeypatch.setattr(census, "TEST_MD5", {True: hashlib.md5((src / "census-income.test.gz").read_bytes()).hexdigest(), False: ""})
    target = tmp_path / "dl"
    files = census.fetch(target, url=archive.as_uri())
    assert sorted(p.name for p in files.values()) == ["census-income.data.gz", "census-income.test.gz"]
    assert sorted(p.name for p in target.iterdir()) == ["census-income.data.gz", "census-income.test.gz"]
    monkeypatch.setattr(census, "EXPECTED_ROWS", {census.TRAIN_FILE: 31, census.TEST_FILE: 20})
    with pytest.raises(DataError, match="has 30 rows, expected 31"):
        census.fetch(tmp_path / "dl2", url=archive.as_uri())
    assert not list((tmp_path / "dl2").iterdir())  # nothing half-written


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"1, 2, 3\n", "has 3 columns, expected 42"),
])  # fmt: skip
def test_census_bad_files(tmp_path, content, match):
    (tmp_path / census.TEST_FILE).write_bytes(content)
    with pytest.raises(DataError, match=match):
        load("census", data_dir=tmp_path)


def test_census_truncated_gz_is_a_clear_error(tmp_path):
    folder = write_census(tmp_path / "c", train=None, test=300, gz=True)
    path = folder / f"{census.TEST_FILE}.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="cannot read census file"):
        load("census", data_dir=folder)


def test_cache_hit_skips_parsing_and_changed_file_invalidates(tmp_path, monkeypatch):
    folder = write_census(tmp_path / "c")
    first = load("census", data_dir=folder)
    calls = []
    original = census.read_raw
    monkeypatch.setattr(census, "read_raw", lambda p: calls.append(p) or original(p))
    second = load("census", data_dir=folder)
    assert calls == [] and torch.equal(first.train.cat, second.train.cat)
    assert second.schema == first.schema and second.info["split"] == first.info["split"]
    time.sleep(0.01)
    test_file = folder / census.TEST_FILE
    test_file.write_text(test_file.read_text() + census_rows(1, 9)[0] + "\n")
    third = load("census", data_dir=folder)
    assert len(calls) == 2 and len(third.val) + len(third.test) == 121


def test_synthetic_is_deterministic_and_correlation_controls_tasks():
    x1, y1 = generate(2000, d=20, p=0.5, seed=3)
    x2, y2 = generate(2000, d=20, p=0.5, seed=3)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    _, same = generate(4000, d=20, p=1.0, seed=3, m=10)
    _, opposite = generate(4000, d=20, p=-1.0, seed=3, m=0)
    assert np.corrcoef(same.T)[0, 1] > 0.99 and np.corrcoef(opposite.T)[0, 1] < -0.99
    d = load("synthetic", n=500, d=8, p=0.0)
    assert d.schema.task_names == ["y1", "y2"] and {t.type for t in d.schema.tasks} == {"regression"}
    assert (len(d.train), len(d.val), len(d.test)) == (400, 50, 50)


def write_table(tmp_path: Path, frame: pd.DataFrame, spec: str, name: str = "data.csv") -> Path:
    if name.endswith(".parquet"):
        frame.to_parquet(tmp_path / name)
    else:
        frame.to_csv(tmp_path / name, index=False)
    (tmp_path / "spec.yaml").write_text(spec.replace("FILE", name))
    return tmp_path / "spec.yaml"


def user_frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "country": rng.choice(["de", "fr", "us"], n),
        "price": rng.exponential(10, n).round(2),
        "age": rng.integers(18, 80, n),
        "clicked": np.where(np.arange(n) % 2 == 0, "yes", "no"),
        "seconds": rng.uniform(0, 100, n).round(1),
        "split": ["train"] * (n * 6 // 10) + ["val"] * (n * 2 // 10) + ["test"] * (n - n * 8 // 10),
    })  # fmt: skip


SPEC = """
file: FILE
categorical: [country]
numeric: [price, age]
log1p: [price]
tasks:
  - {name: click, column: clicked, type: binary, labels: {"yes": 1, "no": 0}}
  - {name: watch, column: seconds, type: regression}
split: {column: split}
"""


@pytest.mark.parametrize("name", ["data.csv", "data.parquet"])
def test_user_table_loads_with_mapping_split_and_unseen_categories(tmp_path, name):
    frame = user_frame()
    frame.loc[50, "country"] = "zz"  # only in test: maps to the "other" code 0
    d = load(str(write_table(tmp_path, frame, SPEC, name)))
    assert (len(d.train), len(d.val), len(d.test)) == (36, 12, 12)
    assert d.schema.task_names == ["click", "watch"] and d.schema.tasks[1].type == "regression"
    assert d.test.cat[50 - 48, 0] == 0
    assert set(d.train.labels[:, 0].tolist()) == {0.0, 1.0}
    assert abs(float(d.train.num[:, 0].mean())) < 1e-5  # standardised on train


BAD_INPUTS = [
    (lambda f: f.drop(columns=["age"]), SPEC, "column 'age' \\(numeric feature\\) not found"),
    (lambda f: f.assign(clicked=["yes", "no", "maybe"] * 20), SPEC, "'maybe' at row 3 is not a binary label"),
    (lambda f: f.assign(clicked="yes"), SPEC, "task 'click' has only one class"),
    (lambda f: f.assign(clicked=np.where(f.split == "val", "", f.clicked)), SPEC, "task 'click' has no labels in the val split"),
    (lambda f: f.assign(age=["12", "x1"] + ["3"] * 58), SPEC, "numeric column 'age' has a non-numeric value 'x1' \\(first at row 2\\)"),
    (lambda f: f, SPEC.replace("labels: {\"yes\": 1, \"no\": 0}", "labels: {\"yes\": 2}"), "labels must map raw values to 0 or 1"),
    (lambda f: f, SPEC + "bogus: 1\n", "unknown key 'bogus'"),
]  # fmt: skip


@pytest.mark.parametrize("change, spec, match", BAD_INPUTS)
def test_user_table_bad_inputs_name_file_column_and_row(tmp_path, change, spec, match):
    with pytest.raises(DataError, match=match):
        load(str(write_table(tmp_path, change(user_frame()), spec)))


def test_user_table_empty_corrupt_and_duplicate_columns(tmp_path):
    spec = write_table(tmp_path, user_frame(), SPEC)
    (tmp_path / "data.csv").write_text("")
    with pytest.raises(DataError, match="data.csv: the file is empty"):
        load(str(spec))
    (tmp_path / "data.csv").write_text("country,age,age\nde,1,2\n")
    with pytest.raises(DataError, match="duplicate column name 'age'"):
        load(str(spec))
    (tmp_path / "spec.yaml").write_text(SPEC.replace("FILE", "data.csv.gz"))
    buf = io.BytesIO()
    with gzip.open(buf, "wt") as f:
        user_frame().to_csv(f, index=False)
    (tmp_path / "data.csv.gz").write_bytes(buf.getvalue()[:200])
    with pytest.raises(DataError, match="data.csv.gz: cannot read the file"):
        load(str(spec))
    (tmp_path / "spec.yaml").write_text(SPEC.replace("FILE", "data.parquet"))
    (tmp_path / "data.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match="data.parquet: cannot read the file"):
        load(str(spec))


def test_unknown_source_and_option():
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load("mnist")
    with pytest.raises(DataError, match="unknown option 'rows'"):
        load("synthetic", rows=10)


def test_batches_cover_the_split_reshuffle_per_epoch_and_repeat_for_a_seed():
    d = load("synthetic", n=1000, d=4)
    batches = TensorBatches(d.train, 128, shuffle=True, seed=5)
    epoch1 = torch.cat([y for _, _, y in batches])
    epoch2 = torch.cat([y for _, _, y in batches])
    assert len(batches) == 7 and epoch1.shape == d.train.labels.shape
    assert not torch.equal(epoch1, epoch2)
    assert torch.equal(torch.sort(epoch1[:, 0]).values, torch.sort(d.train.labels[:, 0]).values)
    again = torch.cat([y for _, _, y in TensorBatches(d.train, 128, shuffle=True, seed=5)])
    assert torch.equal(epoch1, again)
    ordered = list(TensorBatches(d.val, 64))
    assert torch.equal(torch.cat([y for _, _, y in ordered]), d.val.labels)


def test_numeric_columns_that_are_numbers_already_equal_their_text_bit_for_bit():
    import pandas as pd

    from ple_search.data.preprocess import to_numeric

    rng = np.random.default_rng(0)
    floats = pd.Series(np.r_[rng.standard_normal(500) * 1e6, [np.nan, 0.1, -0.0, 1e-300]])
    ints = pd.Series(rng.integers(-(2**40), 2**40, 200))
    for series in (floats, ints, ints.astype("Int64").where(ints > 0)):
        text = series.astype(object).map(lambda v: "" if pd.isna(v) else repr(v)).astype("string")
        np.testing.assert_array_equal(to_numeric(series, "t", "c"), to_numeric(text, "t", "c"))


def test_an_infinite_number_is_refused_as_it_is_in_text():
    import pandas as pd

    from ple_search.core.errors import DataError
    from ple_search.data.preprocess import to_numeric

    with pytest.raises(DataError, match="non-finite value"):
        to_numeric(pd.Series([1.0, np.inf]), "t", "c")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_time_split_trains_on_the_earliest_rows_and_tests_on_the_latest(tmp_path, fmt):
    from ple_search.data import load

    rng = np.random.default_rng(0)
    n = 500
    ts = pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.permutation(n), unit="h")  # shuffled in the file
    x = rng.normal(size=n)
    frame = pd.DataFrame({"ts": ts, "x": x, "y": (x + rng.normal(0, 0.5, n) > 0).astype(int)})
    name = f"t.{fmt}"
    frame.to_parquet(tmp_path / name) if fmt == "parquet" else frame.to_csv(tmp_path / name, index=False)
    (tmp_path / "t.yaml").write_text(f"file: {name}\nnumeric: [x]\ntasks:\n  - {{name: y, type: binary}}\nsplit: {{time: ts, fractions: [0.8, 0.1, 0.1]}}\n")
    dataset = load(str(tmp_path / "t.yaml"), use_cache=False)
    order = np.argsort(ts.to_numpy())
    raw = (x - x[order[:400]].mean()) / x[order[:400]].std()  # standardised on the train split
    for split, rows in (("train", order[:400]), ("val", order[400:450]), ("test", order[450:])):
        got = np.sort(dataset.split(split).num.numpy()[:, 0])
        np.testing.assert_allclose(got, np.sort(raw[rows]).astype(np.float32), rtol=1e-4, atol=1e-5)


def test_an_unreadable_time_is_one_line_naming_the_row(tmp_path):
    from ple_search.core.errors import DataError
    from ple_search.data import load

    (tmp_path / "t.csv").write_text("ts,x,y\n2026-01-01,1,0\nsoon,2,1\n2026-01-03,3,1\n2026-01-04,1,0\n")
    (tmp_path / "t.yaml").write_text("file: t.csv\nnumeric: [x]\ntasks:\n  - {name: y, type: binary}\nsplit: {time: ts}\n")
    with pytest.raises(DataError, match="time column 'ts' has no readable time 'soon' at row 2"):
        load(str(tmp_path / "t.yaml"), use_cache=False)


def test_label_scaling_is_the_same_whatever_the_torch_thread_count():
    """A worker with one thread (a Ray task) must read the study's data exactly as it was created."""
    import torch

    from ple_search.data.dataset import _with_label_scale
    from ple_search.data.schema import Task

    labels = torch.from_numpy(np.random.default_rng(0).standard_normal(300_000).astype(np.float32) * 7 + 3)
    previous = torch.get_num_threads()
    try:
        scaled = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            scaled.append(_with_label_scale(Task("y", "regression"), labels))
    finally:
        torch.set_num_threads(previous)
    assert scaled[0] == scaled[1] and abs(scaled[0].shift - 3) < 0.05
