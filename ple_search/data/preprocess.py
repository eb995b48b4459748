"""Preprocessing fitted on the train split only, saved as plain JSON (never pickle).

Categorical columns become int codes: 0 is the shared "other" code for values unseen in train or
rarer than ``min_count``; a column with ``hash_buckets: N`` keeps no vocabulary and maps each
value to 1 + (a stable hash of its text mod N), so IDs that keep appearing never grow the model;
numeric columns are optionally log1p-transformed, then standardised with the train mean and
standard deviation; missing numeric values become the train mean (0).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ple_search.core.errors import DataError
from ple_search.data.schema import ListFeature


def to_numeric(values: pd.Series, where: str, column: str) -> np.ndarray:
    """Float64 values of a column (empty cells become NaN), or a ``DataError`` naming the first
    non-numeric row (1-based, header not counted). Values that are numbers already (a generated
    table, numpy, Parquet's floats and integers) are taken as they are: only text is parsed."""
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        result = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = values.astype("string").str.strip()
        empty = text.isna() | (text == "")
        parsed = pd.to_numeric(text.mask(empty), errors="coerce")
        bad = parsed.isna() & ~empty
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{where}: numeric column '{column}' has a non-numeric value {values.iloc[row]!r} "
                f"(first at row {_file_row(values, row)})"
            )
        result = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.isinf(result)
    if infinite.any():
        row = int(np.flatnonzero(infinite)[0])
        raise DataError(
            f"{where}: numeric column '{column}' has a non-finite value {values.iloc[row]!r} at row {_file_row(values, row)} "
            "(inf, -inf or beyond float range); numbers must be finite: leave the cell empty for a missing value"
        )
    return result


def _file_row(values: pd.Series, position: int) -> int:
    """The 1-based data row (header not counted) of ``values``' ``position``: a split keeps the
    file's row labels, so this is the row in the file, not in the split."""
    label = values.index[position]
    return int(label) + 1 if isinstance(label, (int, np.integer)) else position + 1


_INTEGRAL_TEXT = r"^(-?\d+)\.0+$"
_EXACT_INTEGERS = 2.0**53


def category_text(values: pd.Series) -> pd.Series:
    """A categorical column as strings that do not depend on how the file stored it: an integer
    held as a float (Parquet stores an int column with gaps as float, a CSV written from one says
    ``1.0``) becomes ``"1"``, and every missing value becomes ``"nan"``."""
    missing = values.isna().to_numpy()
    if pd.api.types.is_float_dtype(values.dtype):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        integral = np.isfinite(numbers) & (np.abs(numbers) < _EXACT_INTEGERS) & (numbers == np.round(numbers))
        text = values.astype(str).to_numpy(dtype=object)
        text[integral] = numbers[integral].astype(np.int64).astype(str)
        text = pd.Series(text, index=values.index, dtype=object)
    else:
        text = values.astype(str).str.replace(_INTEGRAL_TEXT, r"\1", regex=True)
    return text.where(~missing, "nan")


def hashed_codes(texts: Sequence[str] | np.ndarray, buckets: int) -> np.ndarray:
    """``1 + h(text) mod buckets`` per text, int32: ``h`` is the first 8 bytes of the text's
    BLAKE2b digest, the same in every process, run and machine (Python's ``hash`` is salted)."""
    return np.fromiter(
        (1 + int.from_bytes(hashlib.blake2b(str(t).encode(), digest_size=8).digest(), "little") % buckets for t in texts),
        dtype=np.int32, count=len(texts),
    )  # fmt: skip


def standardise(values: np.ndarray, stats: Mapping[str, Any], *, in_place: bool = False) -> np.ndarray:
    """``(values - mean) / std`` (float64; callers store it as float32), missing values at 0 (the
    train mean); ``in_place`` overwrites ``values`` instead of allocating a copy."""
    standard = values if in_place else values.astype(np.float64, copy=True)
    standard -= stats["mean"]
    standard /= stats["std"]
    standard[np.isnan(standard)] = 0.0
    return standard


LIST_PAD, LIST_OTHER = 0, 1  # list slots: 0 = no item (padding), 1 = an item outside the vocabulary


def list_items(cells: pd.Series, sep: str, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The items of a list-valued column: ``(row, slot, item)`` for each row's first ``max_len``
    items, in order; an empty or missing cell is an empty list, items are stripped, empty items
    dropped. Computed once per distinct cell (both data paths call this)."""
    values = cells.to_numpy(dtype=object)
    missing = pd.isna(values)
    text = np.where(missing, "", values).astype(str)
    distinct, inverse = np.unique(text, return_inverse=True)
    parsed = [[item.strip() for item in cell.split(sep) if item.strip()][:max_len] for cell in distinct]
    per_distinct = np.array([len(items) for items in parsed], dtype=np.int64)
    inverse = inverse.reshape(-1)
    lengths = per_distinct[inverse]
    rows = np.repeat(np.arange(len(values)), lengths)
    slots = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    flat = [item for items in parsed for item in items]
    # the items of every row, gathered from its distinct cell's items
    take = np.repeat((np.cumsum(per_distinct) - per_distinct)[inverse], lengths) + slots
    items = np.asarray(flat, dtype=object)[take] if flat else np.zeros(0, dtype=object)
    return rows, slots, items


def list_vocabulary(items: np.ndarray, min_count: int) -> list[str]:
    """The items seen at least ``min_count`` times (in the train rows' lists), sorted."""
    if not len(items):
        return []
    distinct, counts = np.unique(items.astype(str), return_counts=True)
    return sorted(distinct[counts >= max(min_count, 1)].tolist())


def list_codes(cells: pd.Series, entry: Mapping[str, Any], buckets: int | None) -> np.ndarray:
    """``[N, max_len]`` int32 codes of a list column: ``LIST_PAD`` for empty slots, then per item
    2 + its vocabulary index (``LIST_OTHER`` outside it), or 1 + its hash bucket (1..buckets)
    with ``buckets``: a list's table has ``len(values) + 2`` (or ``buckets + 2``) rows."""
    rows, slots, items = list_items(cells, entry["sep"], entry["max_len"])
    codes = np.full((len(cells), entry["max_len"]), LIST_PAD, dtype=np.int32)
    if len(items):
        text = items.astype(str)
        if buckets is not None:
            distinct, inverse = np.unique(text, return_inverse=True)
            values = hashed_codes(distinct, buckets)[inverse.reshape(-1)] + 1
        else:
            values = pd.Index(entry["values"]).get_indexer(text) + 2
            values[values < 2] = LIST_OTHER
        codes[rows, slots] = values
    return codes


@dataclass
class Preprocessor:
    """Fitted vocabularies (``categorical[col]`` lists the values with codes 1..n; empty for a
    hashed column), hashed columns' bucket counts (``hash_buckets[col]``) and numeric statistics
    (``numeric[col] = {"mean", "std", "log1p"}``)."""

    categorical: dict[str, list[str]] = field(default_factory=dict)
    numeric: dict[str, dict[str, Any]] = field(default_factory=dict)
    hash_buckets: dict[str, int] = field(default_factory=dict)
    # list-valued columns: {col: {"sep", "max_len", "values": vocabulary (empty when hashed)}}
    lists: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        categorical: Sequence[str],
        numeric: Sequence[str],
        *,
        log1p: Sequence[str] = (),
        min_count: int = 1,
        hash_buckets: Mapping[str, int] | None = None,
        lists: Mapping[str, Mapping[str, Any]] | None = None,
        where: str = "data",
    ) -> "Preprocessor":
        buckets = dict(hash_buckets or {})
        fitted_lists = {}
        for col, entry in (lists or {}).items():
            values = [] if col in buckets else list_vocabulary(list_items(frame[col], entry["sep"], entry["max_len"])[2], min_count)
            fitted_lists[col] = {"sep": entry["sep"], "max_len": int(entry["max_len"]), "values": values}
        vocab = {}
        for col in categorical:
            if col in buckets:
                vocab[col] = []
                continue
            counts = category_text(frame[col]).value_counts()
            kept = counts[counts >= min_count]
            vocab[col] = sorted(kept.index.tolist())
        stats = {}
        for col in numeric:
            values = to_numeric(frame[col], where, col)
            if col in log1p:
                values = log1p_checked(values, where, col)
            stats[col] = cls.numeric_stats(values, col in log1p)
        return cls(vocab, stats, buckets, fitted_lists)

    @staticmethod
    def numeric_stats(train_values: np.ndarray, log1p: bool) -> dict[str, Any]:
        """Mean and std (1 when 0 or undefined) of a column's train values, NaN = missing."""
        finite = np.isfinite(train_values).any()
        mean = float(np.nanmean(train_values)) if finite else 0.0
        std = float(np.nanstd(train_values)) if finite else 1.0
        return {"mean": mean, "std": std if std > 0 else 1.0, "log1p": log1p}

    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        return tuple(self.hash_buckets[c] + 1 if c in self.hash_buckets else len(v) + 1 for c, v in self.categorical.items())

    @property
    def list_features(self) -> tuple[ListFeature, ...]:
        return tuple(
            ListFeature(c, e["max_len"], self.hash_buckets[c] + 2 if c in self.hash_buckets else len(e["values"]) + 2) for c, e in self.lists.items()
        )

    def transform(self, frame: pd.DataFrame, where: str = "data") -> tuple[np.ndarray, np.ndarray]:
        """``(codes[N, C + L] int64, numeric[N, F] float32)``: the categorical codes, then each
        list column's slots; a missing column is a ``DataError``."""
        missing = [c for c in (*self.categorical, *self.lists, *self.numeric) if c not in frame.columns]
        if missing:
            raise DataError(f"{where}: required column '{missing[0]}' is missing")
        slots = sum(e["max_len"] for e in self.lists.values())
        codes = np.zeros((len(frame), len(self.categorical) + slots), dtype=np.int64)
        for j, (col, values) in enumerate(self.categorical.items()):
            text = category_text(frame[col])
            if col in self.hash_buckets:
                distinct, inverse = np.unique(text.to_numpy(dtype=str), return_inverse=True)
                codes[:, j] = hashed_codes(distinct, self.hash_buckets[col])[inverse.reshape(-1)]
            else:
                codes[:, j] = pd.Index(values).get_indexer(text) + 1
        start = len(self.categorical)
        for col, entry in self.lists.items():
            codes[:, start : start + entry["max_len"]] = list_codes(frame[col], entry, self.hash_buckets.get(col))
            start += entry["max_len"]
        num = np.zeros((len(frame), len(self.numeric)), dtype=np.float32)
        for j, (col, s) in enumerate(self.numeric.items()):
            values = to_numeric(frame[col], where, col)
            if s["log1p"]:
                values = log1p_checked(values, where, col)
            num[:, j] = standardise(values, s)
        return codes, num

    def to_dict(self) -> dict[str, Any]:
        return {
            "categorical": self.categorical, "numeric": self.numeric,
            **({"hash_buckets": self.hash_buckets} if self.hash_buckets else {}), **({"lists": self.lists} if self.lists else {}),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preprocessor":
        return cls(
            dict(data["categorical"]), dict(data["numeric"]), {k: int(v) for k, v in (data.get("hash_buckets") or {}).items()},
            {k: dict(v) for k, v in (data.get("lists") or {}).items()},
        )  # fmt: skip


def log1p_checked(values: np.ndarray, where: str, column: str, out: np.ndarray | None = None) -> np.ndarray:
    """``log1p`` of a column listed for it (into ``out`` when given); a value <= -1 is a ``DataError``."""
    if (values[~np.isnan(values)] <= -1).any():
        raise DataError(f"{where}: column '{column}' is listed for log1p but has values <= -1")
    return np.log1p(values, out=out)
