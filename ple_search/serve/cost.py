"""Serving cost of a config, measured on the built ``PLEModule`` in eval mode before any training.

Each measure is one ``Measure`` subclass, registered in ``MEASURES``: its ``name`` (what a space's
``objectives: [{cost: NAME}]``, ``pareto --x/--y`` and the ``--max-NAME`` flag say), the cost ``key``
it stores (and ``limits:`` bounds), the report column it fills and ``measure(module, serving)``. The
report's columns, the limit keys and the CLI's ``--max-*`` flags are generated from it, so a new
measure is one class plus its test. Torch loads inside ``measure`` only: spaces, limits and reports
read this module without it.

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
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from ple_search.core.errors import ConfigError
from ple_search.serve.settings import Serving

if TYPE_CHECKING:  # the measures need torch; limits and settings do not (reports read them)
    from torch import nn

    from ple_search.train.module import PLEModule


@dataclass(frozen=True)
class Limits:
    """Serving limits (a space's ``limits:``, or ``pareto``/``export``'s ``--max-*`` flags): a
    config is feasible when every bounded cost is at most its limit."""

    limits: tuple[tuple[str, float], ...] = ()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, where: str = "limits", section: str = "limits") -> "Limits":
        limits = []
        keys = [m.key for m in MEASURES.values()]
        for key, value in (raw or {}).items():
            if key not in keys:
                raise ConfigError(f"{where}: key '{section}.{key}': unknown cost; allowed: {', '.join(keys)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value or value == float("inf"):
                raise ConfigError(f"{where}: key '{section}.{key}': must be a number > 0, got {value!r}")
            limits.append((key, float(value)))
        return cls(tuple(limits))

    def __bool__(self) -> bool:
        return bool(self.limits)

    def keys(self) -> list[str]:
        return [key for key, _ in self.limits]

    def excess(self, cost: Mapping[str, Any]) -> list[float]:
        """Per limit, cost - limit (<= 0 is within it): Optuna's constraint values (``Trial.set_constraint``)."""
        return [float(cost[key]) - limit for key, limit in self.limits]

    def violations(self, cost: Mapping[str, Any]) -> list[str]:
        """``"params 812,004 > 500,000"`` for each exceeded limit."""
        return [f"{key} {_shown(cost[key])} > {_shown(limit)}" for key, limit in self.limits if float(cost[key]) > limit]

    def describe(self) -> str:
        return ", ".join(f"{key} <= {_shown(limit)}" for key, limit in self.limits)

    def to_dict(self) -> dict[str, float]:
        return dict(self.limits)

    def allows(self, cost: Mapping[str, Any] | None) -> bool:
        """Within every limit; a trial without the measured cost is outside any limit on it."""
        return cost is not None and all(key in cost and float(cost[key]) <= limit for key, limit in self.limits)


def _shown(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() and abs(value) >= 1000 else f"{value:g}"


class Measure:
    """One serving cost measure. ``name``: the word a space, ``--x/--y`` and ``--max-NAME`` use;
    ``key``: the stored cost key (and ``limits:`` key); ``column``: its report column (None: the
    report shows it elsewhere); ``integer``: whether ``--max-NAME`` takes an integer; ``always``:
    taken on every trial (cheap), else only where a space optimises, bounds or serves it."""

    name: ClassVar[str]
    key: ClassVar[str]
    column: ClassVar[str | None] = None
    help: ClassVar[str] = ""
    integer: ClassVar[bool] = True
    always: ClassVar[bool] = True

    def measure(self, module: PLEModule, serving: Serving) -> dict[str, Any]:
        raise NotImplementedError

    def cell(self, cost: Mapping[str, Any]) -> str:
        """The report cell of a trial's stored cost; ``-`` where it was not measured."""
        return _shown(cost[self.key]) if self.key in cost else "-"


class Params(Measure):
    name, key = "params", "params"
    help = "only trials with at most N parameters"

    def measure(self, module: PLEModule, serving: Serving) -> dict[str, Any]:
        return {"params": sum(p.numel() for p in module.parameters() if p.requires_grad)}


class Flops(Measure):
    name, key, column = "flops", "flops", "MFLOPs/sample"
    help = "only trials with at most N multiply-adds per sample"

    def measure(self, module: PLEModule, serving: Serving) -> dict[str, Any]:
        return {"flops": dense_multiply_adds(module.model) + module.model.extra_multiply_adds()}

    def cell(self, cost: Mapping[str, Any]) -> str:
        return f"{cost['flops'] / 1e6:.4f}" if "flops" in cost else "-"


def dense_multiply_adds(model: nn.Module) -> int:
    """Multiply-adds per sample of the dense layers: every weight matrix (``[in, out]``, or
    ``[groups, in, out]`` for grouped layers) is used once per sample. Weights are the 2-D and
    3-D parameters named ``weight``; biases (1-D or ``[groups, 1, out]``) are adds."""
    total = 0
    for name, parameter in model.named_parameters():
        if name.rsplit(".", 1)[-1] == "weight" and parameter.dim() >= 2:
            total += parameter.numel()
    return total


class Latency(Measure):
    name, key, column = "latency", "latency_ms", "latency ms"
    help = "only trials whose measured latency is at most MS"
    integer, always = False, False

    def cell(self, cost: Mapping[str, Any]) -> str:
        return f"{cost['latency_ms']:.3f}±{cost['latency_spread_ms']:.3f}" if "latency_ms" in cost else "-"

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


MEASURES: dict[str, Measure] = {m.name: m for m in (Params(), Flops(), Latency())}
# What a space may optimise or bound: the measure's name in `objectives: [{cost: NAME}]`, and the
# stored cost key (and `limits:` key) it stands for.
COST_KEYS = {m.name: m.key for m in MEASURES.values()}


def measures_for(keys: set[str] | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The measures that produce the given cost keys, with those taken on every trial."""
    return tuple(m.name for m in MEASURES.values() if m.always or m.key in keys)


def measure_costs(module: PLEModule, serving: Serving | None = None, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The named cost measures of ``module`` (eval mode; restored to training mode after)."""
    serving = serving or Serving()
    was_training = module.training
    module.eval()
    try:
        costs: dict[str, Any] = {}
        for name in names or tuple(MEASURES):
            costs.update(MEASURES[name].measure(module, serving))
        return costs
    finally:
        module.train(was_training)
