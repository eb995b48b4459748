"""The generated recommender logs (data source ``recsys``): deterministic, shaped like a
recommender's logs, a click -> conversion cascade with its truth written beside it."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from ple_search.core.errors import DataError
from ple_search.data import load
from ple_search.data.recsys import write

SMALL = {"users": 300, "items": 2000, "days": 3}


def test_the_generator_is_deterministic_for_a_seed(tmp_path):
    a = pq.read_table(write(tmp_path / "a.parquet", 6000, seed=3, **SMALL)).to_pandas()
    b = pq.read_table(write(tmp_path / "b.parquet", 6000, seed=3, **SMALL)).to_pandas()
    c = pq.read_table(write(tmp_path / "c.parquet", 6000, seed=4, **SMALL)).to_pandas()
    assert a.equals(b) and not a.equals(c)  # (NaN watch times compare equal here)


def test_the_logs_have_a_long_tail_a_funnel_and_time_order(tmp_path):
    frame = pq.read_table(write(tmp_path / "e.parquet", 60_000, seed=0, **SMALL)).to_pandas()
    assert frame["ts"].is_monotonic_increasing and (frame["ts"].max() - frame["ts"].min()).days >= 2
    assert 0.03 < frame["click"].mean() < 0.05  # about 4% of impressions clicked
    assert 0.05 < frame.loc[frame["click"] == 1, "conversion"].mean() < 0.11  # about 8% of clicks convert
    assert (frame["conversion"] <= frame["click"]).all() and frame["watch_time"].notna().eq(frame["click"] == 1).all()
    shares = frame["item_id"].value_counts(normalize=True)
    assert shares.iloc[:20].sum() > 0.2  # a few items take much of the traffic (Zipf)
    assert frame["true_ctr"].between(0, 1).all() and frame["true_cvr"].between(0, 1).all()
    assert frame["recent_items"].str.len().eq(0).any() and frame["recent_items"].str.contains("|", regex=False).any()
    # the truth beside the labels: clicks follow true_ctr, the counterfactual conversions true_cvr
    assert abs(frame["click"].mean() - frame["true_ctr"].mean()) < 0.005
    assert abs(frame["conversion_if_clicked"].mean() - frame["true_cvr"].mean()) < 0.005


def test_relatedness_decides_how_much_conversion_shares_with_click(tmp_path):
    corr = {}
    for r in (0.0, 1.0):
        frame = pq.read_table(write(tmp_path / f"r{r}.parquet", 20_000, seed=0, relatedness=r, **SMALL)).to_pandas()
        logit = lambda p: np.log(p / (1 - p))  # noqa: E731
        corr[r] = np.corrcoef(logit(frame["true_ctr"]), logit(frame["true_cvr"]))[0, 1]
    assert abs(corr[0.0]) < 0.2 and corr[1.0] > 0.5


def test_load_gives_the_cascade_the_lists_and_a_time_split(tmp_path):
    dataset = load("recsys", n=40_000, seed=0, data_dir=str(tmp_path), **SMALL)
    tasks = {t.name: t for t in dataset.schema.tasks}
    assert tasks["conversion"].depends_on == "click" and tasks["watch_time"].type == "regression"
    assert [f.name for f in dataset.schema.lists] == ["recent_items", "tags"]
    assert dataset.schema.output_names == ["click", "conversion", "watch_time", "conversion@click"]
    table = pq.read_table(dataset.info["table"], columns=["ts"]).column(0).to_numpy()
    n = len(table)
    assert len(dataset.train) + len(dataset.val) + len(dataset.test) == n
    train_end, test_start = table[len(dataset.train) - 1], table[n - len(dataset.test)]
    assert test_start >= train_end  # written in time order: the test impressions are the latest


def test_a_bad_generator_option_is_one_line_naming_it(tmp_path):
    with pytest.raises(DataError, match=r"recsys: relatedness = 2 must lie in \[0, 1\]"):
        load("recsys", n=5000, relatedness=2, data_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"dataset 'recsys': unknown option 'rows'"):
        load("recsys", rows=5000)
