"""Serving cost of a config, measured on the built ``PLEModule`` in eval mode before any training.

Each measure is one class with a ``name`` and ``measure(module, serving) -> dict``, registered
in ``MEASURES``; a new measure is one class plus its test.

* ``params``: trainable parameters, embeddings included (exact).
* ``flops``: multiply-adds per sample of one forward pass: every dense layer of every expert,
  gate and tower (a weight element is one multiply-add per sample, including the grouped and
  batched ones); embeddings are lookups, and elementwise work (activations, biases, the gates'
  mixing) is not counted, as FLOP counters do not count it (``torch.utils.flop_counter`` agrees).
* ``latency``: CPU milliseconds per batch of ``serving.batch_size`` rows with ``serving.threads``
  threads, on the serving graph that ``predict`` runs by default (TorchScript): the median of
  ``repeats`` timed runs after ``warmup`` untimed ones, with the spread (75th - 25th percentile).
  Timings on a shared machine are noisy: compare latencies measured in one run, and read the
  spread before trusting a difference.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from ple_search.core.errors import ConfigError

if TYPE_CHECKING:  # the measures need torch; budgets and settings do not (reports read them)
    from torch import nn

    from ple_search.train.module import PLEModule

SERVING_KEYS = ("batch_size", "threads", "repeats", "warmup", "engine")
# What a space may optimise or bound: the measure's name in `objectives: [{cost: NAME}]`, and the
# stored cost key (and `constraints:` key) it stands for.
COST_KEYS = {"params": "params", "flops": "flops", "latency": "latency_ms"}
BUDGET_KEYS = tuple(COST_KEYS.values())


def embedding_memory(vocab_sizes: Sequence[int], dims: Sequence[int]) -> str:
    """The categorical embedding tables' size for the given embedding widths, e.g. ``"1,234,567
    rows x 4-8 = 18.8-37.7 MB"`` (float32): the part of the model that grows with the
    vocabularies, which ``min_count`` and ``hash_buckets`` bound."""
    rows = int(sum(vocab_sizes))
    low, high = min(dims), max(dims)
    width = f"{low}" if low == high else f"{low}-{high}"
    size = f"{rows * low * 4 / 1e6:.1f}" if low == high else f"{rows * low * 4 / 1e6:.1f}-{rows * high * 4 / 1e6:.1f}"
    return f"{rows:,} rows x {width} = {size} MB"


def measures_for(keys: set[str] | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The measures that produce the given cost keys (params and flops are free, always taken)."""
    return ("params", "flops", "latency") if "latency_ms" in keys else ("params", "flops")


@dataclass(frozen=True)
class Budget:
    """Serving budgets (a space's ``constraints:``, or ``pareto``/``export``'s ``--max-*`` flags):
    a config is feasible when every bounded cost is at most its budget."""

    limits: tuple[tuple[str, float], ...] = ()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, where: str = "constraints") -> "Budget":
        limits = []
        for key, value in (raw or {}).items():
            if key not in BUDGET_KEYS:
                raise ConfigError(f"{where}: key 'constraints.{key}': unknown cost; allowed: {', '.join(BUDGET_KEYS)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value or value == float("inf"):
                raise ConfigError(f"{where}: key 'constraints.{key}': must be a number > 0, got {value!r}")
            limits.append((key, float(value)))
        return cls(tuple(limits))

    def __bool__(self) -> bool:
        return bool(self.limits)

    def keys(self) -> list[str]:
        return [key for key, _ in self.limits]

    def excess(self, cost: Mapping[str, Any]) -> list[float]:
        """Per limit, cost - budget (<= 0 is within budget): Optuna's constraint values."""
        return [float(cost[key]) - limit for key, limit in self.limits]

    def violations(self, cost: Mapping[str, Any]) -> list[str]:
        """``"params 812,004 > 500,000"`` for each exceeded limit."""
        return [f"{key} {_shown(cost[key])} > {_shown(limit)}" for key, limit in self.limits if float(cost[key]) > limit]

    def describe(self) -> str:
        return ", ".join(f"{key} <= {_shown(limit)}" for key, limit in self.limits)

    def to_dict(self) -> dict[str, float]:
        return dict(self.limits)

    def allows(self, cost: Mapping[str, Any] | None) -> bool:
        """Within every limit; a trial without the measured cost is outside any budget on it."""
        return cost is not None and all(key in cost and float(cost[key]) <= limit for key, limit in self.limits)


def _shown(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() and abs(value) >= 1000 else f"{value:g}"


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
        for key in ("batch_size", "threads", "repeats"):
            value = raw.get(key, getattr(cls, key))
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}: key 'serving.{key}': must be an integer >= 1, got {value!r}")
        warmup = raw.get("warmup", cls.warmup)
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ConfigError(f"{where}: key 'serving.warmup': must be an integer >= 0, got {warmup!r}")
        from ple_search.serve.engines import ENGINES

        if raw.get("engine", cls.engine) not in ENGINES:
            raise ConfigError(f"{where}: key 'serving.engine': must be one of {', '.join(ENGINES)}, got {raw.get('engine')!r}")
        return cls(**raw)


class Params:
    name: ClassVar[str] = "params"

    def measure(self, module: PLEModule, serving: Serving) -> dict[str, Any]:
        return {"params": sum(p.numel() for p in module.parameters() if p.requires_grad)}


class Flops:
    name: ClassVar[str] = "flops"

    def measure(self, module: PLEModule, serving: Serving) -> dict[str, Any]:
        return {"flops": dense_multiply_adds(module.model)}


def dense_multiply_adds(model: nn.Module) -> int:
    """Multiply-adds per sample of the dense layers: every weight matrix (``[in, out]``, or
    ``[groups, in, out]`` for grouped layers) is used once per sample. Weights are the 2-D and
    3-D parameters named ``weight``; biases (1-D or ``[groups, 1, out]``) are adds."""
    total = 0
    for name, parameter in model.named_parameters():
        if name.rsplit(".", 1)[-1] == "weight" and parameter.dim() >= 2:
            total += parameter.numel()
    return total


class Latency:
    name: ClassVar[str] = "latency"

    def measure(self, module: PLEModule, serving: Serving) -> dict[str, Any]:
        from ple_search.serve.engines import engine, example_inputs

        import torch

        cat, num = example_inputs(module, serving.batch_size)
        cat_np, num_np = cat.numpy(), num.numpy()
        previous = torch.get_num_threads()
        torch.set_num_threads(serving.threads)
        try:
            run = engine(serving.engine, module, threads=serving.threads)
            for _ in range(serving.warmup):
                run(cat_np, num_np)
            times = []
            for _ in range(serving.repeats):
                start = time.perf_counter()
                run(cat_np, num_np)
                times.append((time.perf_counter() - start) * 1000.0)
        finally:
            torch.set_num_threads(previous)
        quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        return {"latency_ms": round(statistics.median(times), 4), "latency_spread_ms": round(quartiles[2] - quartiles[0], 4)}


MEASURES: dict[str, Any] = {m.name: m for m in (Params(), Flops(), Latency())}


def measure_costs(module: PLEModule, serving: Serving | None = None, names: tuple[str, ...] = ("params", "flops", "latency")) -> dict[str, Any]:
    """The named cost measures of ``module`` (eval mode; restored to training mode after)."""
    serving = serving or Serving()
    was_training = module.training
    module.eval()
    try:
        costs: dict[str, Any] = {}
        for name in names:
            costs.update(MEASURES[name].measure(module, serving))
        return costs
    finally:
        module.train(was_training)
