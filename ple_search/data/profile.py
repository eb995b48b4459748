"""What a table holds, read once with Arrow in batches (CSV or Parquet): per column its type,
missing share, distinct values (counted exactly up to ``DISTINCT_CAP``) and, for numbers, the
moments and integer share that ``ple-search init`` decides from. Torch-free."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ple_search.core.errors import DataError

DISTINCT_CAP = 200_000  # beyond this, "at least this many": the decisions only need to know it is large
BATCH_ROWS = 65_536


@dataclass
class ColumnProfile:
    """One column's statistics over the whole table."""

    name: str
    kind: str  # "string", "bool", "integer", "float", "time" or "other" (the Arrow type's family)
    rows: int = 0
    nulls: int = 0
    distinct: set = field(default_factory=set)
    capped: bool = False  # more distinct values than DISTINCT_CAP
    count: int = 0  # non-null numbers
    total: float = 0.0
    squares: float = 0.0
    cubes: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    integral: int = 0  # numbers equal to an integer

    @property
    def present(self) -> int:
        return self.rows - self.nulls

    @property
    def distinct_count(self) -> int:
        return len(self.distinct)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        if not self.count:
            return math.nan
        return math.sqrt(max(self.squares / self.count - self.mean**2, 0.0))

    @property
    def skew(self) -> float:
        """Sample skewness from the raw moments (0 for a constant)."""
        if not self.count or not self.std:
            return 0.0
        m, s = self.mean, self.std
        return (self.cubes / self.count - 3 * m * self.squares / self.count + 2 * m**3) / s**3

    @property
    def integer_share(self) -> float:
        return self.integral / self.count if self.count else 0.0

    def add(self, array: Any) -> None:
        import pyarrow.compute as pc

        self.rows += len(array)
        self.nulls += array.null_count
        if not self.capped:
            self.distinct.update(pc.unique(array.drop_null()).to_pylist())
            if len(self.distinct) > DISTINCT_CAP:
                self.capped = True
        if self.kind in ("integer", "float"):
            values = np.asarray(array.drop_null().to_numpy(zero_copy_only=False), dtype=np.float64)
            values = values[np.isfinite(values)]
            if values.size:
                self.count += values.size
                self.total += float(values.sum())
                self.squares += float((values**2).sum())
                self.cubes += float((values**3).sum())
                self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
                self.integral += int((values == np.floor(values)).sum())


def _kind(arrow_type: Any) -> str:
    import pyarrow as pa

    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type):
        return "integer"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "float"
    if pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type):
        return "time"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_dictionary(arrow_type):
        return "string"
    return "other"


def table_format(path: Path) -> str:
    return "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"


def _batches(path: Path) -> Iterator[Any]:
    """The table's record batches, streamed; a file that is not a readable table is one line."""
    import pyarrow as pa

    if not path.is_file():
        raise DataError(f"--table {path}: no such file")
    try:
        if table_format(path) == "parquet":
            import pyarrow.parquet as pq

            yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
        else:
            import pyarrow.csv as pcsv

            yield from pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 22))
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise DataError(f"--table {path}: not a readable {table_format(path).upper()} table ({reason})") from None


def profile_table(path: Path, keep: tuple[str, ...] = ()) -> tuple[dict[str, ColumnProfile], dict[str, list[Any]]]:
    """Every column's profile, and the full values of the ``keep`` columns (tasks: their rows
    are compared with each other), from one streamed read."""
    profiles: dict[str, ColumnProfile] = {}
    kept: dict[str, list[Any]] = {name: [] for name in keep}
    for batch in _batches(path):
        for name, array in zip(batch.schema.names, batch.columns):
            if name not in profiles:
                profiles[name] = ColumnProfile(name, _kind(array.type))
            profiles[name].add(array)
            if name in kept:
                kept[name].extend(array.to_pylist())
    if not profiles or not next(iter(profiles.values())).rows:
        raise DataError(f"--table {path}: the table has no rows")
    return profiles, kept
