"""Columnar preprocessing of users' tables with Arrow: the fast path of ``table.load_table``.

Reading projects the needed columns only (Parquet: one column at a time, string columns as
dictionaries; CSV: multithreaded, categorical columns straight into dictionaries). A categorical
column is dictionary-encoded, so the per-value work (canonical text, vocabulary, hashing) runs
once per distinct value and the per-row work is one integer lookup; numeric columns are Arrow
casts. Every result equals the pandas path's (``preprocess.Preprocessor.fit``/``transform``, which
serving uses; tested on the census file and the table fixtures), so training and serving never
disagree. Anything irregular (a value the pandas path would refuse or read differently, a missing
column, an unreadable file) raises ``Irregular``: the caller then runs the pandas path, which
reads the same file and either succeeds identically or raises its one-line ``DataError`` naming
file, column and row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ple_search.data.dataset import SPLITS, Dataset, Split, joint_labels, numeric_quantiles
from ple_search.data.preprocess import Preprocessor, category_text, hashed_codes, list_codes, list_items, list_vocabulary, log1p_checked, standardise
from ple_search.data.schema import Schema, Task


class Irregular(Exception):
    """The fast path cannot vouch for identical results; use the pandas path."""


@dataclass
class Encoded:
    """A column as ``ids[N]`` (int32) into ``texts`` (sorted distinct canonical values; missing is
    the text "nan", as in the pandas path)."""

    ids: np.ndarray
    texts: np.ndarray


class Reader:
    """The needed columns of one CSV or Parquet file, each read on demand."""

    def __init__(self, file: Path, fmt: str, dictionary: Sequence[str], numeric: Sequence[str]) -> None:
        self.file, self.fmt = file, fmt
        try:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                schema = pq.read_schema(file)
                names = schema.names
                strings = [c for c in dictionary if c in names and pa.types.is_string(schema.field(c).type)]
                self._parquet = pq.ParquetFile(file, read_dictionary=strings)
                self._table = None
            else:
                import pyarrow.csv as pacsv

                names = pacsv.open_csv(file).schema.names
                wanted = [c for c in (*dictionary, *numeric) if c in names]
                types = {c: pa.dictionary(pa.int32(), pa.string()) for c in dictionary if c in names}
                types.update({c: pa.float64() for c in numeric if c in names})
                self._table = pacsv.read_csv(
                    file,
                    read_options=pacsv.ReadOptions(use_threads=True, block_size=1 << 24),
                    convert_options=pacsv.ConvertOptions(
                        include_columns=wanted, column_types=types, null_values=[""],
                        strings_can_be_null=True, quoted_strings_can_be_null=True,
                    ),
                )  # fmt: skip
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise Irregular(str(exc)) from None
        if len(set(names)) != len(names):
            raise Irregular("duplicate column names")
        self.names = list(names)

    @property
    def rows(self) -> int:
        return self._parquet.metadata.num_rows if self._table is None else self._table.num_rows

    def column(self, name: str) -> pa.ChunkedArray:
        if name not in self.names:
            raise Irregular(f"column {name} missing")
        if self._table is not None:
            return self._table.column(name)
        try:  # streamed in batches: the reader's buffers stay one batch, not one column, large
            chunks = [batch.column(0) for batch in self._parquet.iter_batches(batch_size=1 << 20, columns=[name], use_threads=True)]
            return pa.chunked_array(chunks, type=self._parquet.schema_arrow.field(name).type if not chunks else None)
        except (pa.ArrowException, OSError) as exc:
            raise Irregular(str(exc)) from None


def dictionary(column: pa.ChunkedArray) -> tuple[pd.Series, np.ndarray]:
    """``(values, indices)``: the distinct raw values as a pandas Series (what the pandas path
    would hold for them) and per row an index into them, with nulls at index ``len(values)``."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    column = pa.table({"c": column}).unify_dictionaries().column(0)
    if column.num_chunks == 0:
        return pd.Series([], dtype=object), np.zeros(0, dtype=np.int32)
    values = column.chunk(0).dictionary
    indices = np.concatenate(
        [pc.fill_null(chunk.indices, len(values)).to_numpy(zero_copy_only=False).astype(np.int32, copy=False) for chunk in column.chunks]
    )
    return values.to_pandas(), indices


def encode_categorical(column: pa.ChunkedArray) -> Encoded:
    """Canonical text per distinct value (``preprocess.category_text``), merged where two raw
    values read the same (1.0 and 1, a null and "nan")."""
    values, indices = dictionary(column)
    texts = category_text(values).to_numpy(dtype=object)
    texts = np.append(texts, "nan")  # the null slot
    distinct, inverse = np.unique(texts.astype(str), return_inverse=True)
    return Encoded(inverse.astype(np.int32)[indices], distinct)


def fit_vocabulary(encoded: Encoded, train: np.ndarray, min_count: int) -> tuple[list[str], np.ndarray]:
    """The vocabulary (values seen at least ``min_count`` times in the train rows, sorted) and
    the code of every distinct text (0 = other)."""
    counts = np.bincount(encoded.ids[train], minlength=len(encoded.texts))
    vocabulary = sorted(encoded.texts[counts >= max(min_count, 1)].tolist())
    lookup = pd.Index(vocabulary).get_indexer(pd.Index(encoded.texts)) + 1
    return vocabulary, lookup.astype(np.int32)


def to_float(column: pa.ChunkedArray, nan_is_missing: bool) -> np.ndarray:
    """Float64 values, nulls as NaN. ``Irregular`` for what the pandas path reads differently or
    refuses: text that does not cast, booleans, infinities, and NaN in a CSV (the text "nan")."""
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind) or pa.types.is_string(kind)):
        raise Irregular(f"type {kind}")
    try:
        values = pc.cast(column, pa.float64()).to_numpy()
    except (pa.ArrowException, ValueError) as exc:
        raise Irregular(str(exc)) from None
    if np.isinf(values).any():
        raise Irregular("infinite value")
    if not nan_is_missing and pa.types.is_floating(kind) and pc.any(pc.is_nan(column)).as_py():
        raise Irregular("literal nan")
    return values


def binary_labels(column: pa.ChunkedArray, mapping: Mapping[str, float]) -> np.ndarray:
    """0/1/NaN per row through ``mapping`` on each distinct value's stripped text."""
    values, indices = dictionary(column)
    text = values.astype(str).str.strip()
    present = values.notna() & (text != "")
    mapped = text.map(mapping)
    if (present & mapped.isna()).any():
        raise Irregular("value outside the label mapping")
    per_value = np.append(mapped.where(present).to_numpy(dtype=np.float32, na_value=np.nan), np.float32(np.nan))
    return per_value[indices]


def split_rows(column: pa.ChunkedArray) -> dict[str, np.ndarray]:
    values, indices = dictionary(column)
    text = pd.Series(np.append(values.astype(str).to_numpy(dtype=object), "nan")).str.strip()
    if not text.iloc[np.unique(indices)].isin(SPLITS).all():
        raise Irregular("split value outside train/val/test")
    return {name: np.flatnonzero((text.to_numpy() == name)[indices]) for name in SPLITS}


def _give_back_memory() -> None:
    """Return freed pages to the OS between columns: Arrow's pool and glibc's heap would keep the
    last column's buffers and temporaries, and the peak would grow by one column per column."""
    pa.default_memory_pool().release_unused()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def build(
    reader: Reader,
    spec: Mapping[str, Any],
    label_mappings: Mapping[str, Mapping[str, float]],
    parts: Mapping[str, np.ndarray] | None,
    info: dict[str, Any],
    where: str,
) -> Dataset:
    """The dataset of a table spec (``table.read_spec``'s dict) read by ``reader``; ``parts`` are
    the rows of each split (None: from the spec's split column)."""
    categorical, numeric, log1p = spec["categorical"], spec["numeric"], set(spec["log1p"])
    buckets = dict(spec.get("hash_buckets") or {})
    if parts is None:
        parts = split_rows(reader.column(spec["split"]["column"]))
    train = parts["train"]
    lists = dict(spec.get("lists") or {})
    width = len(categorical) + sum(e["max_len"] for e in lists.values())
    arrays = {name: (np.empty((len(rows), width), np.int32), np.empty((len(rows), len(numeric)), np.float32)) for name, rows in parts.items()}
    vocabularies: dict[str, list[str]] = {}
    for j, col in enumerate(categorical):
        encoded = encode_categorical(reader.column(col))
        if col in buckets:
            vocabularies[col], lookup = [], hashed_codes(encoded.texts, buckets[col])
        else:
            vocabularies[col], lookup = fit_vocabulary(encoded, train, int(spec.get("min_count") or 1))
        codes = lookup[encoded.ids]
        for name, rows in parts.items():
            arrays[name][0][:, j] = codes[rows]
        del encoded, codes
        _give_back_memory()
    fitted_lists: dict[str, dict[str, Any]] = {}
    start = len(categorical)
    for col, entry in lists.items():  # each list cell parsed once per distinct value (preprocess.list_items)
        values, indices = dictionary(reader.column(col))
        cells = pd.Series(np.append(values.to_numpy(dtype=object), None)[indices], dtype=object)
        vocabulary = [] if col in buckets else list_vocabulary(list_items(cells.iloc[train], entry["sep"], entry["max_len"])[2], int(spec.get("min_count") or 1))
        fitted_lists[col] = {"sep": entry["sep"], "max_len": int(entry["max_len"]), "values": vocabulary}
        codes = list_codes(cells, fitted_lists[col], buckets.get(col))
        for name, rows in parts.items():
            arrays[name][0][:, start : start + entry["max_len"]] = codes[rows]
        start += entry["max_len"]
        del cells, codes
        _give_back_memory()
    stats: dict[str, dict[str, Any]] = {}
    for j, col in enumerate(numeric):
        values = to_float(reader.column(col), nan_is_missing=reader.fmt == "parquet")
        if not values.flags.writeable:
            values = values.copy()  # a zero-copy view of Arrow's buffer: standardised in place below
        if col in log1p:
            log1p_checked(values, where, col, out=values)
        stats[col] = Preprocessor.numeric_stats(values[train], col in log1p)
        standardise(values, stats[col], in_place=True)
        for name, rows in parts.items():
            arrays[name][1][:, j] = values[rows]  # float64 -> float32 on assignment, as the pandas path
        del values
        _give_back_memory()
    labels = []
    for task in spec["tasks"]:
        column = reader.column(task["column"])
        if task["type"] == "regression":
            labels.append(to_float(column, nan_is_missing=reader.fmt == "parquet").astype(np.float32))
        else:
            labels.append(binary_labels(column, label_mappings[task["name"]]))
    label_array = joint_labels(np.stack(labels, axis=1), spec["tasks"], where)
    del labels
    pre = Preprocessor(vocabularies, stats, buckets, fitted_lists)
    splits = {name: Split.from_numpy(*arrays[name], label_array[rows]) for name, rows in parts.items()}
    del label_array
    _give_back_memory()
    tasks = tuple(Task(t["name"], t["type"], depends_on=t["depends_on"]) for t in spec["tasks"])
    schema = Schema(tuple(categorical), pre.vocab_sizes, tuple(numeric), tasks, numeric_quantiles(splits["train"].num), pre.list_features)
    dataset = Dataset(schema, splits["train"], splits["val"], splits["test"], pre, info)
    dataset.check_labels(where)
    return dataset


