"""Write a click-log-like table for the scale benchmarks: Parquet plus its YAML dataset spec.

ROWS rows of 20 categorical columns (cardinality 3 to 200,000, geometrically spaced, values drawn
from a Zipf law, as string IDs), 10 numeric columns (normal, lognormal heavy tails, counts, some
missing) and two binary tasks: ``click`` (about 10% positive) and ``conversion``, labelled only
where ``click`` is 1. Deterministic for a seed; written in row groups of 1M rows so the generator
itself stays small in memory.

    python bench/bigtable.py ROWS [--out bench-data] [--seed 0]   # -> bench-data/bigtable-ROWS.{parquet,yaml}
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CATEGORICAL = 20
NUMERIC = 10
CARDINALITIES = np.unique(np.geomspace(3, 200_000, CATEGORICAL).round().astype(int)).tolist()
GROUP = 1_000_000
ZIPF_S = 1.1


def zipf_probabilities(cardinality: int) -> np.ndarray:
    p = 1.0 / np.arange(1, cardinality + 1) ** ZIPF_S
    return p / p.sum()


def write(rows: int, out: Path, seed: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"c{j:02d}" for j in range(CATEGORICAL)]
    numeric = [f"n{j:02d}" for j in range(NUMERIC)]
    probabilities = [zipf_probabilities(k) for k in CARDINALITIES]
    dictionaries = [pa.array([f"{name}_{v}" for v in rng.permutation(k)]) for name, k in zip(names, CARDINALITIES)]
    effects = [rng.normal(0, 0.6, k) for k in CARDINALITIES]  # per-value effect on the click logit
    weights = rng.normal(0, 0.4, NUMERIC)
    path = out / f"bigtable-{rows}.parquet"
    writer = None
    try:
        for start in range(0, rows, GROUP):
            n = min(GROUP, rows - start)
            columns, logit = {}, np.full(n, -2.5)
            for name, p, dictionary, effect in zip(names, probabilities, dictionaries, effects):
                codes = rng.choice(len(p), size=n, p=p).astype(np.int32)
                logit += effect[codes] / np.sqrt(CATEGORICAL / 4)
                columns[name] = pa.DictionaryArray.from_arrays(pa.array(codes), dictionary).cast(pa.string())  # plain strings, as logs hold them
            for j, name in enumerate(numeric):
                kind = j % 3
                values = rng.normal(0, 1, n) if kind == 0 else rng.lognormal(0, 1.5, n) if kind == 1 else rng.poisson(3, n).astype(float)
                logit += weights[j] * (np.log1p(values) if kind == 1 else values if kind == 0 else (values - 3) / 2)
                missing = rng.random(n) < (0.05 if j % 4 == 3 else 0.0)
                columns[name] = pa.array(values, mask=missing)
            click = rng.random(n) < 1 / (1 + np.exp(-logit))
            conversion = rng.random(n) < 1 / (1 + np.exp(-(0.8 * logit + 0.5)))
            columns["click"] = pa.array(click.astype(np.int8))
            columns["conversion"] = pa.array(conversion.astype(np.int8), mask=~click)
            table = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    spec = out / f"bigtable-{rows}.yaml"
    spec.write_text(
        f"file: {path.name}\n"
        f"categorical: [{', '.join(names)}]\n"
        f"numeric: [{', '.join(numeric)}]\n"
        f"log1p: [{', '.join(n for j, n in enumerate(numeric) if j % 3 == 1)}]\n"
        "tasks:\n  - {name: click, type: binary}\n  - {name: conversion, type: binary}\n"
        "split: {fractions: [0.8, 0.1, 0.1], seed: 0}\n"
    )
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=int)
    parser.add_argument("--out", default="bench-data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write(args.rows, Path(args.out), args.seed))


if __name__ == "__main__":
    main()
