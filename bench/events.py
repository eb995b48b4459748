"""A small recommender log to try `ple-search init` on: row IDs, user IDs from a long tail of
400,000, item IDs, a device, prices, a constant column, timestamps over a month, clicks, and
purchases (only ever after a click). The tests generate their table with this too.

    python bench/events.py events.parquet [--rows 120000] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def events(rows: int = 120_000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    price = np.round(rng.lognormal(3, 1.2, rows), 2)
    items = rng.integers(0, 3000, rows)
    z = 0.4 * np.log1p(price) - 1.2 + 0.8 * (items % 7 == 0) + rng.normal(0, 1, rows)
    click = (z > 0).astype(int)
    return pd.DataFrame({
        "event_id": np.arange(rows), "user_id": rng.integers(0, 400_000, rows), "item_id": items,
        "device": rng.choice(["ios", "android", "web"], rows), "price": price, "country": "de",
        "ts": pd.Timestamp("2026-11-01") + pd.to_timedelta(rng.integers(0, 30 * 86400, rows), unit="s"),
        "click": click, "purchase": ((z + rng.normal(0, 1, rows) > 1.0) & (click == 1)).astype(int),
    })  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=120_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    frame = events(args.rows, args.seed)
    frame.to_parquet(args.out) if args.out.suffix in (".parquet", ".pq") else frame.to_csv(args.out, index=False)
    print(f"wrote {len(frame):,} rows to {args.out}")


if __name__ == "__main__":
    main()
