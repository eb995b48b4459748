"""Users' own tables: a CSV or Parquet file described by a small YAML dataset spec.

```yaml
file: events.csv              # relative to this spec file
categorical: [country, device]
numeric: [age, price]
lists: {recent_items: {sep: "|", max_len: 50}}  # optional: list-valued categorical columns (text)
log1p: [price]                # optional: heavy-tailed numeric columns
min_count: 5                  # optional: rarer categories share the "other" code
hash_buckets: {user_id: 100000}  # optional: these columns hash into N codes instead of a vocabulary
tasks:
  - {name: click, type: binary, labels: {"yes": 1, "no": 0}}   # labels: optional mapping
  - {name: watch_time, column: seconds, type: regression}      # column defaults to name
  - {name: buy, type: binary, depends_on: click}              # a cascade: buy only after a click
split: {column: split}        # values train/val/test, or: {fractions: [0.8, 0.1, 0.1], seed: 0}
                              # or by time: {by: ts, fractions: [0.8, 0.1, 0.1]} (earliest rows train)
```
Every bad input is one ``DataError`` naming the file, the column and, where it applies, the row.
Tables are read and encoded column by column with Arrow (``columnar.py``); the pandas path here
is the reference it must equal, and runs when the Arrow path meets anything irregular.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from ple_search.data import cache, columnar
from ple_search.data.dataset import SPLITS, Dataset, from_frames, joint_labels
from ple_search.data.preprocess import to_numeric
from ple_search.data.schema import TASK_TYPES, Task
from ple_search.core.errors import DataError
from ple_search.core.files import read_yaml

SPEC_KEYS = {"file", "format", "categorical", "numeric", "lists", "log1p", "min_count", "hash_buckets", "tasks", "split"}
MAX_LIST_LEN = 1024
TASK_KEYS = {"name", "column", "type", "labels", "depends_on"}
FORMATS = ("csv", "parquet")


def read_spec(path: Path) -> dict[str, Any]:
    """The validated spec as a dict (``file`` resolved against the spec's folder)."""
    spec = read_yaml(path, "dataset spec", DataError)
    if not isinstance(spec, dict):
        raise DataError(f"{path}: a dataset spec must be a mapping with keys {sorted(SPEC_KEYS)}")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise DataError(f"{path}: unknown key '{unknown[0]}'; allowed: {sorted(SPEC_KEYS)}")
    for key in ("file", "tasks"):
        if not spec.get(key):
            raise DataError(f"{path}: key '{key}' is required")
    for key in ("categorical", "numeric", "log1p"):
        spec[key] = list(spec.get(key) or [])
        if not all(isinstance(c, str) for c in spec[key]):
            raise DataError(f"{path}: '{key}' must be a list of column names")
    spec["lists"] = _lists_spec(path, spec.get("lists"), spec)
    if not spec["categorical"] and not spec["numeric"] and not spec["lists"]:
        raise DataError(f"{path}: no features: list columns under 'categorical', 'numeric' and/or 'lists'")
    for key in ("categorical", "numeric"):
        twice = sorted({c for c in spec[key] if spec[key].count(c) > 1})
        if twice:
            raise DataError(f"{path}: column '{twice[0]}' is listed twice under '{key}'")
    both = sorted(set(spec["categorical"]) & set(spec["numeric"]))
    if both:
        raise DataError(f"{path}: column '{both[0]}' is listed under both 'categorical' and 'numeric'; keep it under one")
    stray = [c for c in spec["log1p"] if c not in spec["numeric"]]
    if stray:
        raise DataError(f"{path}: log1p column '{stray[0]}' is not listed under 'numeric'")
    buckets = spec.get("hash_buckets") or {}
    if not isinstance(buckets, dict):
        raise DataError(f"{path}: 'hash_buckets' must map categorical column names to bucket counts, e.g. {{user_id: 100000}}")
    for column, n in buckets.items():
        if column not in spec["categorical"] and column not in spec["lists"]:
            raise DataError(f"{path}: hash_buckets column '{column}' is not listed under 'categorical' or 'lists'")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 2**30:
            raise DataError(f"{path}: hash_buckets for '{column}' is {n!r}; give a whole number of buckets from 1 to {2**30}")
    spec["hash_buckets"] = {str(c): int(n) for c, n in buckets.items()}
    spec["file"] = (path.parent / spec["file"]).resolve()
    fmt = spec.get("format") or ("parquet" if spec["file"].suffix in (".parquet", ".pq") else "csv")
    if fmt not in FORMATS:
        raise DataError(f"{path}: format '{fmt}' is not one of {list(FORMATS)}")
    spec["format"] = fmt
    spec["tasks"] = [_task_spec(path, t) for t in spec["tasks"]]
    names = [t["name"] for t in spec["tasks"]]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: task names must be unique, got {names}")
    for k, task in enumerate(spec["tasks"]):
        parent = task["depends_on"]
        if parent is None:
            continue
        earlier = {t["name"]: t for t in spec["tasks"][:k]}
        if parent not in earlier:
            where = "is listed after it" if parent in names else "is not a task"
            raise DataError(f"{path}: task '{task['name']}' depends_on '{parent}', which {where}; list the parent task first, among {names[:k] or names}")
        if task["type"] != "binary" or earlier[parent]["type"] != "binary":
            raise DataError(f"{path}: task '{task['name']}' depends_on '{parent}': both must be binary tasks (a conversion given a click)")
    spec["split"] = _split_spec(path, spec.get("split") or {"fractions": [0.8, 0.1, 0.1], "seed": 0})
    return spec


def _lists_spec(path: Path, lists: Any, spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{column: {sep, max_len}}``: list-valued categorical columns, items joined by ``sep`` in
    one text cell (an empty cell is an empty list), each row's first ``max_len`` items kept."""
    if lists is None:
        return {}
    example = 'e.g. lists: {recent_items: {sep: "|", max_len: 50}}'
    if not isinstance(lists, dict):
        raise DataError(f"{path}: 'lists' must map column names to {{sep, max_len}}, {example}")
    out = {}
    for column, entry in lists.items():
        if column in spec["categorical"] or column in spec["numeric"]:
            raise DataError(f"{path}: list column '{column}' is also under '{'categorical' if column in spec['categorical'] else 'numeric'}'; keep it under one")
        if not isinstance(entry, dict) or set(entry) - {"sep", "max_len"}:
            raise DataError(f"{path}: lists.{column} must be a mapping with 'sep' and 'max_len', {example}")
        sep, max_len = entry.get("sep", "|"), entry.get("max_len")
        if not isinstance(sep, str) or not sep:
            raise DataError(f"{path}: lists.{column}.sep must be a non-empty text (the separator between items), got {sep!r}")
        if isinstance(max_len, bool) or not isinstance(max_len, int) or not 1 <= max_len <= MAX_LIST_LEN:
            raise DataError(f"{path}: lists.{column}.max_len must be a whole number from 1 to {MAX_LIST_LEN} (items kept per row), got {max_len!r}")
        out[str(column)] = {"sep": sep, "max_len": max_len}
    return out


def _task_spec(path: Path, task: Any) -> dict[str, Any]:
    if not isinstance(task, dict) or "name" not in task:
        raise DataError(f"{path}: each task needs at least 'name' and 'type', got {task!r}")
    unknown = sorted(set(task) - TASK_KEYS)
    if unknown:
        raise DataError(f"{path}: task '{task['name']}' has unknown key '{unknown[0]}'; allowed: {sorted(TASK_KEYS)}")
    if task.get("type") not in TASK_TYPES:
        raise DataError(f"{path}: task '{task['name']}' type {task.get('type')!r} must be one of {list(TASK_TYPES)}")
    labels = task.get("labels")
    if labels is not None and (not isinstance(labels, dict) or not set(labels.values()) <= {0, 1}):
        raise DataError(f"{path}: task '{task['name']}' labels must map raw values to 0 or 1, got {labels!r}")
    parent = task.get("depends_on")
    if parent is not None and not isinstance(parent, str):
        raise DataError(f"{path}: task '{task['name']}' depends_on must name another task, got {parent!r}")
    return {"name": str(task["name"]), "column": str(task.get("column", task["name"])), "type": task["type"], "labels": labels, "depends_on": parent}


# YAML 1.1 (PyYAML) reads these unquoted words as booleans: `labels: {yes: 1, no: 0}` arrives as
# {True: 1, False: 0}. A boolean key therefore stands for every spelling YAML turns into it.
_YAML_BOOL_WORDS = {
    True: ("true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"),
    False: ("false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"),
}


def label_mapping(labels: Mapping[Any, Any]) -> dict[str, float]:
    """Raw label text -> 0/1, with unquoted yes/no/on/off/true/false keys accepted as written."""
    mapping: dict[str, float] = {}
    for key, value in labels.items():
        spellings = _YAML_BOOL_WORDS[key] if isinstance(key, bool) else (str(key),)
        for text in spellings:
            mapping.setdefault(text, float(value))
    for key, value in labels.items():  # a quoted key wins over a boolean's spellings
        if not isinstance(key, bool):
            mapping[str(key)] = float(value)
    return mapping


def _split_spec(path: Path, split: Any) -> dict[str, Any]:
    if isinstance(split, dict) and "column" in split:
        return {"column": str(split["column"])}
    if isinstance(split, dict) and ("by" in split or "time" in split):  # `time:` is the older spelling of `by:`
        wrong = f"{path}: split.fractions must be [train, val, test] of positive numbers summing to 1"
        return {"time": str(split.get("by", split.get("time"))), "fractions": _fractions(split.get("fractions", [0.8, 0.1, 0.1]), wrong)}
    wrong = f"{path}: split must be {{column: NAME}}, {{by: TIME_COLUMN}} or {{fractions: [train, val, test]}} of positive numbers summing to 1"
    return {"fractions": _fractions(split.get("fractions") if isinstance(split, dict) else None, wrong), "seed": int(split.get("seed", 0))}


def _fractions(fractions: Any, wrong: str) -> list[float]:
    """Three positive numbers summing to 1, or the ``DataError`` ``wrong``."""
    if (
        not isinstance(fractions, list) or len(fractions) != 3
        or any(not isinstance(f, (int, float)) or f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6
    ):  # fmt: skip
        raise DataError(wrong)
    return [float(f) for f in fractions]


def read_table(file: Path, fmt: str) -> pd.DataFrame:
    """The raw table, every cell as read; unreadable, empty, ragged or duplicate-header files are
    one-line ``DataError``s naming the file (and the line or column where that is known)."""
    if not file.is_file():
        raise DataError(f"{file}: {'is a folder, not a data file' if file.is_dir() else 'file not found'}")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(file).names
            _no_duplicates(file, names)
            frame = pd.read_parquet(file)
        else:
            header = pd.read_csv(file, header=None, nrows=1, dtype=str, keep_default_na=False)
            names = header.iloc[0].tolist()
            _no_duplicates(file, names)
            frame = pd.read_csv(file, dtype=str, keep_default_na=False, na_values=[""])
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{file}: the file is empty") from None
    except pd.errors.ParserError as exc:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if found:
            expected, line, saw = found.groups()
            raise DataError(f"{file}: line {line} has {saw} fields where the header has {expected}") from None
        raise DataError(f"{file}: cannot parse the file ({_one_line(exc)})") from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{file}: cannot read the file ({type(exc).__name__}: {_one_line(exc)})") from None
    if frame.empty:
        raise DataError(f"{file}: the file has no data rows")
    return frame


def _no_duplicates(file: Path, names: list[Any]) -> None:
    duplicates = sorted({str(n) for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{file}: duplicate column name '{duplicates[0]}'")


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _labels(frame: pd.DataFrame, file: Path, task: dict[str, Any]) -> np.ndarray:
    raw = frame[task["column"]]
    where = f"{file}: task '{task['name']}' column '{task['column']}'"
    if task["type"] == "regression":
        return to_numeric(raw, where, task["column"]).astype(np.float32)
    present = raw.notna() & (raw.astype(str).str.strip() != "")
    text = raw.astype(str).str.strip()
    mapping = _label_mapping(task)
    values = text.map(mapping)
    bad = present & values.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        seen = sorted(text[present].unique().tolist())[:6]
        raise DataError(
            f"{where}: value {raw.iloc[row]!r} at row {row + 1} is not a binary label; binary tasks take 0/1 "
            f"(or true/false), or a 'labels' mapping in the spec (values seen: {seen})"
        )
    return values.where(present).to_numpy(dtype=np.float32, na_value=np.nan)


def _label_mapping(task: Mapping[str, Any]) -> dict[str, float]:
    if task["labels"] is not None:
        return label_mapping(task["labels"])
    return {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "true": 1.0, "false": 0.0, "True": 1.0, "False": 0.0}


def _fraction_rows(rows: int, split: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Rows of each split for ``{fractions, seed}``: a seeded permutation cut by the fractions."""
    return _cut(np.random.default_rng(split["seed"]).permutation(rows), split["fractions"])


def _cut(order: np.ndarray, fractions: list[float]) -> dict[str, np.ndarray]:
    """``order`` (row numbers) cut into the splits by ``fractions``, as int32 where the rows fit:
    half the memory of the row lists, same rows."""
    rows = len(order)
    if rows < 2**31:
        order = order.astype(np.int32)
    cuts = np.cumsum([int(round(f * rows)) for f in fractions[:2]])
    return dict(zip(SPLITS, np.split(order, cuts)))


def time_order(values: pd.Series, file: Path, column: str) -> np.ndarray:
    """Row numbers from earliest to latest of a time column: timestamps, dates as text, or numbers
    (e.g. Unix seconds); a missing or unreadable time is a ``DataError`` naming the row."""
    numbers = None
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        numbers = values
    elif not pd.api.types.is_datetime64_any_dtype(values.dtype):  # CSV text: numbers (Unix seconds) as numbers
        parsed = pd.to_numeric(values, errors="coerce")
        if parsed.notna().all():
            numbers = parsed
    if numbers is not None:
        keys = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        stamps = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
        keys = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64).astype(np.float64)
        keys[stamps.isna().to_numpy()] = np.nan
    bad = np.isnan(keys)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{file}: time column '{column}' has no readable time {values.iloc[row]!r} at row {row + 1}; give timestamps, dates or numbers")
    return np.argsort(keys, kind="stable")


def _time_rows(order: np.ndarray, split: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Rows of each split for ``{time, fractions}``: the earliest rows train, then validation, the
    latest test, each in file order (a model is validated and tested on a future it never saw)."""
    return {name: np.sort(part) for name, part in _cut(order, split["fractions"]).items()}


def _read_time_column(file: Path, fmt: str, column: str) -> pd.Series:
    """One column as typed values (Parquet's timestamps and numbers as they are; CSV as text)."""
    if fmt == "parquet":
        return pd.read_parquet(file, columns=[column])[column]
    return pd.read_csv(file, usecols=[column], dtype=str, keep_default_na=False)[column]


def load_table(spec_path: str | Path, use_cache: bool = True) -> Dataset:
    """Load a user's table as described by the YAML spec at ``spec_path``."""
    spec_path = Path(spec_path)
    spec = read_spec(spec_path)
    file = spec["file"]
    if not file.is_file():
        raise DataError(f"{spec_path}: data file {file} not found")
    settings = {k: v for k, v in spec.items() if k != "file"}

    def build() -> Dataset:
        info = {"source": "table", "options": {"spec": str(spec_path.resolve())}, "split": str(spec["split"])}
        try:
            return _build_columnar(spec, file, info)
        except columnar.Irregular:
            return _build_pandas(spec, file, info)

    return cache.cached("table", [spec_path, file], settings, build, use_cache=use_cache)


def _assign_splits(frame: pd.DataFrame, file: Path, split: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if "column" in split:
        values = frame[split["column"]].astype(str).str.strip()
        bad = ~values.isin(SPLITS)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{file}: split column '{split['column']}' has value {values.iloc[row]!r} at row {row + 1}; allowed: {list(SPLITS)}")
        return {name: np.flatnonzero((values == name).to_numpy()) for name in SPLITS}
    if "time" in split:
        return _time_rows(time_order(frame[split["time"]], file, split["time"]), split)
    return _fraction_rows(len(frame), split)


def _needed(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    needed = [(c, "categorical feature") for c in spec["categorical"]] + [(c, "numeric feature") for c in spec["numeric"]]
    needed += [(c, "list feature") for c in spec["lists"]]
    needed += [(t["column"], f"label of task '{t['name']}'") for t in spec["tasks"]]
    if "column" in spec["split"]:
        needed.append((spec["split"]["column"], "split column"))
    if "time" in spec["split"]:
        needed.append((spec["split"]["time"], "time column of the split"))
    return needed


def _check_columns(spec: Mapping[str, Any], file: Path, columns: list[Any]) -> None:
    for column, role in _needed(spec):
        if column not in columns:
            raise DataError(f"{file}: column '{column}' ({role}) not found; columns are {list(columns)}")
    features = set(spec["categorical"]) | set(spec["numeric"]) | set(spec["lists"])
    clash = [t["column"] for t in spec["tasks"] if t["column"] in features]
    if clash:
        raise DataError(f"{file}: column '{clash[0]}' is both a feature and a task label")


def _build_columnar(spec: Mapping[str, Any], file: Path, info: dict[str, Any]) -> Dataset:
    """The Arrow path (``columnar.py``); ``columnar.Irregular`` sends the caller to the pandas one."""
    binary = [t["column"] for t in spec["tasks"] if t["type"] == "binary"]
    regression = [t["column"] for t in spec["tasks"] if t["type"] == "regression"]
    split = [spec["split"]["column"]] if "column" in spec["split"] else []
    reader = columnar.Reader(file, spec["format"], [*spec["categorical"], *spec["lists"], *binary, *split], [*spec["numeric"], *regression])
    _check_columns(spec, file, reader.names)
    if reader.rows == 0:
        raise columnar.Irregular("no rows")
    if "time" in spec["split"]:
        column = spec["split"]["time"]
        parts = _time_rows(time_order(_read_time_column(file, spec["format"], column), file, column), spec["split"])
    else:
        parts = None if split else _fraction_rows(reader.rows, spec["split"])
    mappings = {t["name"]: _label_mapping(t) for t in spec["tasks"] if t["type"] == "binary"}
    try:
        return columnar.build(reader, spec, mappings, parts, info, str(file))
    except DataError:
        raise
    except (columnar.pa.ArrowException, ValueError, TypeError) as exc:  # a column type Arrow cannot encode as asked
        raise columnar.Irregular(str(exc)) from None


def _build_pandas(spec: Mapping[str, Any], file: Path, info: dict[str, Any]) -> Dataset:
    """The reference path: the whole table as pandas strings (CSV) or typed columns (Parquet)."""
    frame = read_table(file, spec["format"])
    _check_columns(spec, file, list(frame.columns))
    labels = joint_labels(np.stack([_labels(frame, file, t) for t in spec["tasks"]], axis=1), spec["tasks"], str(file))
    parts = _assign_splits(frame, file, spec["split"])
    frames = {name: frame.iloc[idx] for name, idx in parts.items()}
    return from_frames(
        frames, {name: labels[idx] for name, idx in parts.items()}, spec["categorical"], spec["numeric"],
        tasks=[Task(t["name"], t["type"], depends_on=t["depends_on"]) for t in spec["tasks"]], log1p=spec["log1p"],
        min_count=int(spec.get("min_count") or 1), hash_buckets=spec["hash_buckets"], lists=spec["lists"], info=info, where=str(file),
    )  # fmt: skip
