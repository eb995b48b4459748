"""List-valued categorical features (``lists:`` in a table spec): a user's recent items, an
item's tags; codes through both data paths, pooled embeddings, predict and the serving graphs."""

import numpy as np
import pandas as pd
import pytest
import torch

from ple_search.model.encoders import FeatureEncoder, ListPooling


def list_table(folder, n: int = 600, fmt: str = "csv"):
    rng = np.random.default_rng(0)
    items = [f"i{k}" for k in range(40)]
    recent = ["|".join(rng.choice(items, rng.integers(0, 6), replace=False)) for _ in range(n)]
    tags = [",".join(rng.choice(["red", "big", "new", "sale"], rng.integers(0, 3), replace=False)) for _ in range(n)]
    liked = np.array([sum(int(t[1:]) < 10 for t in r.split("|") if t) for r in recent])
    click = (liked + rng.normal(0, 0.8, n) > 0.5).astype(int)
    frame = pd.DataFrame({"device": rng.choice(["ios", "web"], n), "price": rng.exponential(5, n).round(2), "recent": recent, "tags": tags,
                          "click": click, "split": np.where(np.arange(n) < n * 0.6, "train", np.where(np.arange(n) < n * 0.8, "val", "test"))})  # fmt: skip
    data = folder / f"events.{fmt}"
    frame.to_csv(data, index=False) if fmt == "csv" else frame.to_parquet(data)
    (folder / "events.yaml").write_text(
        f"file: {data.name}\ncategorical: [device]\nnumeric: [price]\nlists: {{recent: {{sep: '|', max_len: 4}}, tags: {{sep: ',', max_len: 3}}}}\n"
        "hash_buckets: {tags: 16}\ntasks:\n  - {name: click, type: binary}\nsplit: {column: split}\n"
    )
    return folder / "events.yaml", frame


def test_list_pooling_is_the_mean_of_the_items_embeddings_without_empty_slots():
    torch.manual_seed(0)
    pool = ListPooling([(3, 5), (2, 4)], 6, "mean")
    codes = torch.tensor([[2, 3, 0, 1, 0], [0, 0, 0, 0, 0]])
    out = pool(codes)
    table = pool.table.weight
    torch.testing.assert_close(out[0, 0], (table[2] + table[3]) / 2)
    torch.testing.assert_close(out[0, 1], table[5 + 1])  # the second list's table starts after the first's 5 rows
    torch.testing.assert_close(out[1], torch.zeros(2, 6))  # empty lists are zeros
    summed = ListPooling([(3, 5), (2, 4)], 6, "sum")
    summed.table.weight.data.copy_(table)
    torch.testing.assert_close(summed(codes)[0, 0], table[2] + table[3])


def test_an_empty_slot_gets_no_gradient():
    pool = ListPooling([(3, 5)], 4, "mean")
    pool(torch.tensor([[2, 0, 0]])).sum().backward()
    grad = pool.table.weight.grad
    assert grad[0].abs().sum() == 0 and grad[2].abs().sum() > 0


def test_list_codes_are_identical_through_the_arrow_and_pandas_paths(tmp_path):
    from ple_search.data import table

    for fmt in ("csv", "parquet"):
        folder = tmp_path / fmt
        folder.mkdir()
        spec_path, frame = list_table(folder, fmt=fmt)
        spec = table.read_spec(spec_path)
        fast, reference = table._build_columnar(spec, spec["file"], {}), table._build_pandas(spec, spec["file"], {})
        assert fast.preprocessor == reference.preprocessor and fast.schema == reference.schema
        assert [(f.name, f.max_len) for f in fast.schema.lists] == [("recent", 4), ("tags", 3)]
        assert fast.schema.lists[1].vocab_size == 16 + 2
        for name in ("train", "val", "test"):
            assert torch.equal(fast.split(name).cat, reference.split(name).cat)
        train = fast.train.cat.numpy()
        first = frame.iloc[0]["recent"].split("|") if isinstance(frame.iloc[0]["recent"], str) else []
        assert (train[0, 1 : 1 + 4] > 0).sum() == min(len([t for t in first if t]), 4)  # one code per item, the rest empty


def test_a_bad_lists_entry_is_one_line_naming_the_key(tmp_path):
    from ple_search.core.errors import DataError
    from ple_search.data import table

    spec_path, _ = list_table(tmp_path)
    spec_path.write_text(spec_path.read_text().replace("max_len: 4", "max_len: 0"))
    with pytest.raises(DataError, match=r"lists.recent.max_len must be a whole number from 1 to 1024"):
        table.read_spec(spec_path)


@pytest.mark.slow
def test_list_features_train_reproduce_test_metrics_through_predict_and_serve_equal_to_eager(tmp_path, capsys):
    from helpers import run_export_train
    from ple_search.cli.main import main
    from ple_search.train.metrics import roc_auc

    spec_path, frame = list_table(tmp_path, n=3000)
    space = {"dataset": {"name": str(spec_path)}, "sampler": {"name": "random", "seed": 0}, "budget": {"max_epochs": 3, "patience": 3},
             "fixed": {"batch_size": 64, "lr": 0.01, "list_pooling": "sum"}}  # fmt: skip
    metrics = run_export_train(tmp_path, space, "l")
    raw = pd.read_csv(tmp_path / "events.csv", dtype=str, keep_default_na=False)
    test = raw[raw.split == "test"]
    test.drop(columns=["click", "split"]).to_csv(tmp_path / "rows.csv", index=False)
    for engine in ("eager", "torchscript", "onnx"):
        capsys.readouterr()
        assert main(["predict", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "rows.csv"), "--output", str(tmp_path / f"{engine}.csv"), "--engine", engine]) == 0
    scores = {e: pd.read_csv(tmp_path / f"{e}.csv")["click"].to_numpy() for e in ("eager", "torchscript", "onnx")}
    np.testing.assert_allclose(scores["torchscript"], scores["eager"], atol=1e-5)
    np.testing.assert_allclose(scores["onnx"], scores["eager"], atol=1e-5)
    auc = roc_auc(torch.tensor(scores["eager"]), torch.tensor(test["click"].astype(float).to_numpy()))
    assert auc == pytest.approx(metrics["runs"]["0"]["test"]["click"], abs=1e-4)
    assert auc > 0.7  # the recent items carry the signal
