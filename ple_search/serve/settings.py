"""Where serving cost is measured, torch-free (spaces and reports read it without loading torch).

``Serving`` is a space's ``serving:`` block: the batch size, threads and engine a latency is
measured with. ``ENGINES`` names the serving graphs that ``serve.engines`` builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ple_search.core.errors import ConfigError

ENGINES = ("torchscript", "onnx", "eager")  # serve.engines builds each; predict --engine takes these
SERVING_KEYS = ("batch_size", "threads", "repeats", "warmup", "engine")
# What a latency measurement can sensibly take: a serving batch beyond a million rows, or more than
# a thousand timed runs, is a typo that would stall or exhaust memory at every trial.
MAXIMA = {"batch_size": 1_000_000, "threads": 1024, "repeats": 1000, "warmup": 1000}


@dataclass(frozen=True)
class Serving:
    """Where latency is measured: the serving batch size and threads (``serving:`` in a space)."""

    batch_size: int = 256
    threads: int = 1
    repeats: int = 30
    warmup: int = 5
    engine: str = "torchscript"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, where: str = "serving") -> "Serving":
        raw = dict(raw or {})
        unknown = sorted(set(raw) - set(SERVING_KEYS))
        if unknown:
            raise ConfigError(f"{where}: key 'serving.{unknown[0]}': unknown; allowed: {', '.join(SERVING_KEYS)}")
        for key, low in (("batch_size", 1), ("threads", 1), ("repeats", 1), ("warmup", 0)):
            value = raw.get(key, getattr(cls, key))
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAXIMA[key]:
                raise ConfigError(f"{where}: key 'serving.{key}': must be an integer from {low} to {MAXIMA[key]:,}, got {value!r}")
        if raw.get("engine", cls.engine) not in ENGINES:
            raise ConfigError(f"{where}: key 'serving.engine': must be one of {', '.join(ENGINES)}, got {raw.get('engine')!r}")
        return cls(**raw)


def embedding_memory(vocab_sizes: Sequence[int], dims: Sequence[int]) -> str:
    """The categorical embedding tables' size for the given embedding widths, e.g. ``"1,234,567
    rows x 4-8 = 18.8-37.7 MB"`` (float32): the part of the model that grows with the
    vocabularies, which ``min_count`` and ``hash_buckets`` bound."""
    rows = int(sum(vocab_sizes))
    low, high = min(dims), max(dims)
    width = f"{low}" if low == high else f"{low}-{high}"
    size = f"{rows * low * 4 / 1e6:.1f}" if low == high else f"{rows * low * 4 / 1e6:.1f}-{rows * high * 4 / 1e6:.1f}"
    return f"{rows:,} rows x {width} = {size} MB"
