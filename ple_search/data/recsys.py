"""A recommender's logs, generated: impressions of items to users, clicks, conversions after a
click, watch time, over days (data source ``recsys``).

Users and items have latent factors (dimension ``factors``); item IDs are drawn from a Zipf law
over ``items`` items (a long tail: a few items take most impressions); each impression has a
slot ``position`` 1-10 and a timestamp over ``days`` days, and the users' tastes drift along a
direction of their own as the days pass, so the future differs from the past. Then, per
impression:

* click ~ Bernoulli(sigmoid(a + <u, i> + item bias - position bias)), ``a`` set so that about
  ``click_rate`` of impressions are clicked;
* conversion given a click ~ Bernoulli(sigmoid(b + <u', i'>)), where the second affinity shares
  ``relatedness`` of the first: ``u' = r u + sqrt(1 - r^2) u_own`` (same for items), ``b`` set
  for about ``conversion_rate`` conversions per click; ``relatedness: 0`` makes the tasks
  unrelated, 1 makes them share the whole affinity;
* watch time (seconds, clicked impressions only) from the first affinity, log-normal.

The true click and conversion probabilities of every impression are written beside them
(``true_ctr``, ``true_cvr``), and ``conversion_if_clicked``, a conversion drawn from
``true_cvr`` on every impression (what a click would have led to), so a conversion model's AUC
over the entire space can be measured against the truth, not only on the clicked rows it was
trained on. Every column is generated in chunks and streamed to Parquet, so millions of rows cost
one chunk of memory; deterministic for a seed.

``load_recsys`` writes the table once per set of options (beside the preprocessed-data cache) with
a dataset spec: categorical user, item, category, device, hour; numeric position, price, user
age; list-valued ``recent_items`` (up to ``history`` of the user's history: items it has most
affinity for, so they say who the user is) and ``tags`` (an item's; they follow its factors);
tasks click, conversion (``depends_on: click``) and watch_time; a time split (the latest days test). It then loads it like any user's table (the Arrow path, the memory-mapped cache).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ple_search.core.errors import DataError

CHUNK = 250_000
CATEGORIES = 400
TAGS = 48  # an item's tags name the largest of its factors' signs (2 * factors) and its category's group
HISTORY = 20  # items in a user's history, of which an impression shows a recent few
POOL = 2_000  # a history is drawn from the most popular items
DEVICES = ("ios", "android", "web")
SPEC = """file: events.parquet
categorical: [user_id, item_id, category, device, hour]
numeric: [position, price, user_age]
lists: {{recent_items: {{sep: "|", max_len: {history}}}, tags: {{sep: "|", max_len: 3}}}}
log1p: [price]
min_count: {min_count}
tasks:
  - {{name: click, type: binary}}
  - {{name: conversion, type: binary, depends_on: click}}
  - {{name: watch_time, type: regression}}
split: {{by: ts, fractions: [0.8, 0.1, 0.1]}}
"""


def _check(n: int, users: int, items: int, zipf: float, relatedness: float, days: int, click_rate: float, conversion_rate: float, factors: int) -> None:
    if n < 1000 or users < 10 or items < 10 or days < 1 or factors < 1:
        raise DataError(f"recsys: need n >= 1000, users >= 10, items >= 10, days >= 1, factors >= 1 (got n={n}, users={users}, items={items}, days={days}, factors={factors})")
    if not 0.0 <= relatedness <= 1.0:
        raise DataError(f"recsys: relatedness = {relatedness} must lie in [0, 1] (0: unrelated tasks, 1: one shared affinity)")
    if zipf <= 0:
        raise DataError(f"recsys: zipf = {zipf} must be > 0 (the exponent of the items' popularity law)")
    for name, rate in (("click_rate", click_rate), ("conversion_rate", conversion_rate)):
        if not 0.0 < rate < 1.0:
            raise DataError(f"recsys: {name} = {rate} must lie in (0, 1)")


def _intercept(scores: np.ndarray, rate: float, weights: np.ndarray | None = None) -> float:
    """The offset ``a`` with ``mean(sigmoid(a + scores)) = rate``, weighted by ``weights`` (the
    click probabilities, for a rate given a click); bisection, the mean is monotone in a."""
    low, high = -30.0, 30.0
    for _ in range(60):
        mid = (low + high) / 2
        if np.average(1 / (1 + np.exp(-(mid + scores))), weights=weights) < rate:
            low = mid
        else:
            high = mid
    return (low + high) / 2


class _World:
    """The users, items and their factors: everything fixed before the first impression."""

    def __init__(self, users: int, items: int, zipf: float, relatedness: float, factors: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        scale = 1.0 / math.sqrt(factors)
        self.user = rng.standard_normal((users, factors)).astype(np.float32)
        self.item = (rng.standard_normal((items, factors)) * 1.5 * scale).astype(np.float32)
        self.drift = (rng.standard_normal((users, factors)) * 0.5).astype(np.float32)  # each user's direction of change
        own_user = rng.standard_normal((users, factors)).astype(np.float32)
        own_item = (rng.standard_normal((items, factors)) * 1.5 * scale).astype(np.float32)
        keep = math.sqrt(1 - relatedness**2)
        self.user2, self.item2 = relatedness * self.user + keep * own_user, relatedness * self.item + keep * own_item
        self.item_bias = (rng.standard_normal(items) * 0.5).astype(np.float32)
        self.category = rng.integers(0, CATEGORIES, items)
        self.price = np.round(rng.lognormal(3.0, 1.0, items), 2)
        self.age = rng.integers(18, 75, users)
        self.device = rng.integers(0, len(DEVICES), users)
        popularity = 1.0 / np.arange(1, items + 1) ** zipf
        self.cdf = np.cumsum(popularity / popularity.sum())
        self.order = rng.permutation(items)  # popularity rank -> item id, so ids carry no rank
        self.users, self.items = users, items
        # each user's history: popular items it has the most affinity for (Gumbel-perturbed top)
        popular = self.order[: min(POOL, items)]
        self.history = np.empty((users, min(HISTORY, len(popular))), dtype=np.int64)
        for lo in range(0, users, 4096):
            scores = self.user[lo : lo + 4096] @ self.item[popular].T + rng.gumbel(size=(min(4096, users - lo), len(popular)))
            self.history[lo : lo + 4096] = popular[np.argsort(-scores, axis=1)[:, : self.history.shape[1]]]
        self.history_names = np.char.add("i", self.history.astype(str)).astype(object)  # as the item_id column spells them
        # an item's tags: the sign pattern of its two largest factors, and its category's group
        top = np.argsort(-np.abs(self.item), axis=1)[:, :2]
        signs = np.take_along_axis(self.item, top, 1) > 0
        first, second = 2 * top[:, 0] + signs[:, 0], 2 * top[:, 1] + signs[:, 1]
        self.tags = np.array([f"t{a % TAGS}|t{b % TAGS}|g{c % 8}" for a, b, c in zip(first, second, self.category)], dtype=object)

    def impressions(self, rng: np.random.Generator, n: int, t: np.ndarray) -> dict[str, np.ndarray]:
        """``n`` impressions at day fractions ``t`` in [0, 1]: ids, features and the two affinities."""
        user = rng.integers(0, self.users, n)
        item = self.order[np.minimum(np.searchsorted(self.cdf, rng.random(n)), self.items - 1)]
        position = rng.integers(1, 11, n)
        taste = self.user[user] + t[:, None].astype(np.float32) * self.drift[user]
        affinity = np.einsum("nf,nf->n", taste, self.item[item]) + self.item_bias[item] - 0.25 * (position - 1)
        affinity2 = np.einsum("nf,nf->n", self.user2[user], self.item2[item])
        return {"user": user, "item": item, "position": position, "affinity": affinity, "affinity2": affinity2}

    def recent(self, rng: np.random.Generator, user: np.ndarray, max_len: int) -> np.ndarray:
        """Each impression's recent items: 0 to ``max_len`` of its user's history, joined by "|"."""
        counts = rng.integers(0, max_len + 1, len(user))
        start = rng.integers(0, self.history.shape[1], len(user))
        width = self.history.shape[1]
        names = self.history_names
        return np.array(["|".join(names[u, (s + np.arange(c)) % width]) for u, s, c in zip(user, start, counts)], dtype=object)


def write(
    path: str | Path, n: int = 200_000, *, users: int = 20_000, items: int = 200_000, zipf: float = 1.05, relatedness: float = 0.5,
    days: int = 14, click_rate: float = 0.04, conversion_rate: float = 0.08, factors: int = 8, seed: int = 0, history: int = 10,
) -> Path:  # fmt: skip
    """Write ``n`` impressions in time order to the Parquet file ``path`` (atomically); returns it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _check(n, users, items, zipf, relatedness, days, click_rate, conversion_rate, factors)
    world = _World(users, items, zipf, relatedness, factors, seed)
    rng = np.random.default_rng(seed + 1)
    calibration = world.impressions(np.random.default_rng(seed + 2), 50_000, np.random.default_rng(seed + 3).random(50_000))
    a = _intercept(calibration["affinity"], click_rate)
    clicks = 1 / (1 + np.exp(-(a + calibration["affinity"])))
    b = _intercept(calibration["affinity2"], conversion_rate, weights=clicks)  # conversions per click
    times = np.sort(rng.random(n))  # day fractions in [0, 1), in time order
    start = np.datetime64("2026-01-01T00:00:00", "s")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = None
    try:
        for lo in range(0, n, CHUNK):
            t = times[lo : lo + CHUNK]
            m = len(t)
            imp = world.impressions(rng, m, t)
            true_ctr = 1 / (1 + np.exp(-(a + imp["affinity"])))
            true_cvr = 1 / (1 + np.exp(-(b + imp["affinity2"])))
            click = rng.random(m) < true_ctr
            converts = rng.random(m) < true_cvr  # what a click would lead to, on every impression
            seconds = np.exp(2.5 + 0.4 * imp["affinity"] + 0.5 * rng.standard_normal(m))
            stamp = start + (t * days * 86_400).astype("timedelta64[s]")
            user, item = imp["user"], imp["item"]
            table = pa.table({
                "ts": pa.array(stamp),
                "user_id": pa.array(np.char.add("u", user.astype(str))),
                "item_id": pa.array(np.char.add("i", item.astype(str))),
                "category": pa.array(world.category[item].astype(np.int32)),
                "device": pa.array(np.asarray(DEVICES)[world.device[user]]),
                "hour": pa.array(((t * days * 24) % 24).astype(np.int32)),
                "position": pa.array(imp["position"].astype(np.int32)),
                "price": pa.array(world.price[item]),
                "user_age": pa.array(world.age[user].astype(np.int32)),
                "recent_items": pa.array(world.recent(rng, user, history)),
                "tags": pa.array(world.tags[item]),
                "click": pa.array(click.astype(np.int8)),
                "conversion": pa.array((click & converts).astype(np.int8)),
                "watch_time": pa.array(np.where(click, np.round(seconds, 1), np.nan)),
                "true_ctr": pa.array(true_ctr.astype(np.float32)),
                "true_cvr": pa.array(true_cvr.astype(np.float32)),
                "conversion_if_clicked": pa.array(converts.astype(np.int8)),
            })  # fmt: skip
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
        writer.close()
        writer = None
        os.replace(tmp, path)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return path


def load_recsys(
    n: int = 200_000, *, users: int = 20_000, items: int = 200_000, zipf: float = 1.05, relatedness: float = 0.5, days: int = 14,
    click_rate: float = 0.04, conversion_rate: float = 0.08, factors: int = 8, seed: int = 0, history: int = 10, min_count: int = 3,
    data_dir: str | None = None, use_cache: bool = True,
) -> Any:  # fmt: skip
    """The generated logs as a dataset: written once per options under ``data_dir`` (default
    beside the preprocessed-data cache), then loaded through its dataset spec."""
    from ple_search.data.cache import cache_dir
    from ple_search.data.table import load_table

    options = {"n": n, "users": users, "items": items, "zipf": zipf, "relatedness": relatedness, "days": days,
               "click_rate": click_rate, "conversion_rate": conversion_rate, "factors": factors, "seed": seed, "history": history}  # fmt: skip
    _check(n, users, items, zipf, relatedness, days, click_rate, conversion_rate, factors)
    if isinstance(history, bool) or not isinstance(history, int) or not 1 <= history <= HISTORY:
        raise DataError(f"recsys: history = {history!r} must be a whole number from 1 to {HISTORY} (recent items per impression, at most)")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise DataError(f"recsys: min_count = {min_count!r} must be a whole number >= 1")
    name = "recsys-" + "-".join(f"{k}{v}" for k, v in options.items())
    folder = Path(data_dir).expanduser() if data_dir else cache_dir().parent / "generated"
    table = folder / name / "events.parquet"
    if not table.is_file():
        write(table, **options)
    spec = table.parent / f"events-min{min_count}.yaml"
    if not spec.is_file():
        spec.write_text(SPEC.format(min_count=min_count, history=history))
    dataset = load_table(spec, use_cache=use_cache)
    dataset.info.update(source="recsys", options={**options, "min_count": min_count}, table=str(table))
    (table.parent / "options.json").write_text(json.dumps(options))
    return dataset
