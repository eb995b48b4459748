"""Search spaces as YAML: parse, validate before any trial, and sample PLE hyperparameter dicts.

```yaml
dataset: {name: census, options: {tasks: [income, marital]}}   # or synthetic, or a spec path
objectives: [income, marital]      # optional: tasks to optimise (default all), metric from the schema
sampler: {name: tpe, seed: 0}      # tpe | nsga2 | nsga3 | gp | random
budget: {max_epochs: 10, patience: 2}
fixed: {optimizer: adam}
params:
  levels: {type: int, low: 1, high: 3}
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  expert_hidden: {type: categorical, choices: [[16], [64, 32]]}
  dwa_temperature: {type: float, low: 0.5, high: 5, when: {loss_weighting: [dwa]}}
enqueue:                           # optional: configs tried first (e.g. the paper's)
  - {levels: 1, experts_per_task: 3, shared_experts: 2}
pruner: {type: mo-asha, min_epochs: 1, eta: 3, tie_break: hypervolume}   # optional: early stopping
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import optuna

from ple_search.core.errors import ConfigError
from ple_search.core.files import read_yaml
from ple_search.model.architectures import architecture_of
from ple_search.model.hparams import DEFAULTS, PLEConfig
from ple_search.serve.cost import COST_KEYS, MEASURES, Limits, measures_for
from ple_search.serve.settings import Serving
from ple_search.study.pruning import MOASHA, parse_pruner

TOP_KEYS = {"dataset", "objectives", "sampler", "budget", "fixed", "params", "enqueue", "pruner", "serving", "limits", "constraints"}
# `constraints:` is the old name of `limits:` (serving limits); `budget:` is the epoch budget only.
RENAMED_KEYS = {"constraints": "limits"}
PARAM_KEYS = {"type", "low", "high", "log", "step", "choices", "when"}
SAMPLERS = ("tpe", "nsga2", "nsga3", "gp", "random")
BUDGET_DEFAULTS = {"max_epochs": 10, "patience": 2}
BUDGET_OPTIONAL = ("trial_processes",)  # DDP processes per trial (``train.ranks``); absent = 1, as spaces stored before it


@dataclass
class Param:
    """One searched key: ``int``/``float`` range (``log``, ``step``) or ``categorical`` choices,
    sampled only when every ``when`` condition (key -> allowed values) holds."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] = field(default_factory=list)
    when: dict[str, list[Any]] = field(default_factory=dict)

    def candidates(self) -> list[Any]:
        """Values that stand for the whole range in validation: the bounds, or every choice."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        if self.type == "float":
            return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log, step=self.step)
        labels = [encode(c) for c in self.choices]
        return decode(trial.suggest_categorical(self.name, labels))


def encode(value: Any) -> Any:
    """Optuna stores only scalar choices: lists (layer widths) travel as JSON strings."""
    return json.dumps(value) if isinstance(value, (list, tuple)) else value


def decode(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) and value.startswith("[") else value


@dataclass
class SearchSpace:
    """A validated search space file."""

    path: str
    dataset: dict[str, Any]
    objectives: list[str] | None
    sampler: dict[str, Any]
    budget: dict[str, int]
    fixed: dict[str, Any]
    params: list[Param]
    enqueue: list[dict[str, Any]]
    raw: dict[str, Any]
    pruner: MOASHA | None = None
    serving: Serving | None = None  # where each trial's latency is measured; None = not measured
    cost_objectives: list[str] = field(default_factory=list)  # cost keys optimised (minimised), after the tasks
    limits: Limits | None = None  # hard serving limits; configs over them are never trained
    notes: list[str] = field(default_factory=list)  # one line each for the user (renamed keys)

    def cost_measures(self) -> tuple[str, ...]:
        """The cost measures every trial takes: latency only where something asks for it."""
        wanted = {*self.cost_objectives, *(self.limits.keys() if self.limits else [])}
        return tuple(MEASURES) if self.serving is not None else measures_for(wanted)

    def serving_settings(self) -> Serving:
        return self.serving or Serving()

    def extreme_config(self, largest: bool) -> dict[str, Any]:
        """The space's smallest (or largest) model: every range at its low (high) end, every
        list-of-widths choice the narrowest (widest); other keys fixed or first choice; then made
        buildable by its architecture (e.g. PLE with no expert at all gets one shared expert)."""
        values = dict(self.fixed)
        for param in self.params:
            if param.type == "categorical":
                sized = [c for c in param.choices if isinstance(c, (list, tuple))]
                pick = max if largest else min
                values[param.name] = pick(sized, key=lambda c: sum(c)) if len(sized) == len(param.choices) else param.choices[0]
            else:
                value = param.high if largest else param.low
                values[param.name] = int(value) if param.type == "int" else value
        return architecture_of(values).valid(values, DEFAULTS)

    def possible(self, key: str) -> list[Any]:
        """Every value ``key`` can take in this space (its choices or range ends, else the fixed
        value or the default)."""
        return _possible(self.fixed, {p.name: p for p in self.params}, key)

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """The full hyperparameter dict for ``trial``: fixed values plus sampled ones."""
        values = dict(self.fixed)
        for param in self.params:
            if all(values.get(key, DEFAULTS.get(key)) in allowed for key, allowed in param.when.items()):
                values[param.name] = param.suggest(trial)
        return values

    def make_sampler(self, name: str | None = None, seed: int | None = None) -> optuna.samplers.BaseSampler:
        """The sampler the file names, unless ``name``/``seed`` override it."""
        name = name or self.sampler["name"]
        seed = self.sampler.get("seed") if seed is None else seed
        # Samplers learn feasibility from the constraint values each trial sets (Trial.set_constraint).
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        if name == "nsga3":
            return optuna.samplers.NSGAIIISampler(seed=seed)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        raise ConfigError(f"{self.path}: sampler '{name}' is not one of {list(SAMPLERS)}")

    def enqueue_params(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """An ``enqueue`` entry as Optuna trial params (searched keys only, lists encoded)."""
        return {p.name: encode(config[p.name]) for p in self.params if p.name in config}


def _spec_path(name: str, space_path: str) -> str:
    """A dataset spec path made absolute: relative to the working directory (as before), else to
    the space file's folder; other names (census, synthetic) unchanged."""
    if not name.endswith((".yaml", ".yml")):
        return name
    here = Path(name).expanduser()
    beside = Path(space_path).parent / here
    if not here.is_file() and beside.is_file():
        here = beside
    return str(here.resolve())


def _fail(path: str, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{path}: key '{key}': {problem}")


def _check_value(path: str, key: str, value: Any) -> None:
    try:
        PLEConfig.from_dict({key: value})
    except ConfigError as exc:
        raise _fail(path, key, str(exc)) from None


def _parse_param(path: str, name: str, spec: Any) -> Param:
    if not isinstance(spec, dict):
        raise _fail(path, f"params.{name}", "must be a mapping with 'type' (int, float or categorical)")
    unknown = sorted(set(spec) - PARAM_KEYS)
    if unknown:
        raise _fail(path, f"params.{name}", f"unknown field '{unknown[0]}'; allowed: {sorted(PARAM_KEYS)}")
    kind = spec.get("type")
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise _fail(path, f"params.{name}.when", "must map a key to the value(s) it must have")
    when = {k: v if isinstance(v, list) else [v] for k, v in when.items()}
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _fail(path, f"params.{name}", "categorical needs a non-empty list of 'choices'")
        for choice in choices:
            if not _storable(choice):
                raise _fail(path, f"params.{name}.choices", f"choice {choice!r} must be a number, string, bool, null or a list of those")
        return Param(name, kind, choices=choices, when=when)
    if kind not in ("int", "float"):
        raise _fail(path, f"params.{name}", f"type {kind!r} must be int, float or categorical")
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise _fail(path, f"params.{name}", "needs numeric 'low' and 'high'")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high)):
        raise _fail(path, f"params.{name}", "int range needs integer 'low' and 'high'")
    if low > high:
        raise _fail(path, f"params.{name}", f"low ({low}) > high ({high})")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise _fail(path, f"params.{name}", f"log scale needs low > 0 (got {low})")
    if log and spec.get("step") is not None:
        raise _fail(path, f"params.{name}", "'step' cannot be combined with 'log'")
    step = spec.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0:
            raise _fail(path, f"params.{name}.step", f"must be a number > 0, got {step!r}")
        if kind == "int" and not float(step).is_integer():
            raise _fail(path, f"params.{name}.step", f"an int range needs an integer step, got {step!r}")
        if step > high - low and high > low:
            raise _fail(path, f"params.{name}.step", f"step {step} is larger than the range {low}..{high}")
    return Param(name, kind, low=low, high=high, log=log, step=step, when=when)


def _storable(value: Any) -> bool:
    """Whether Optuna can store ``value`` as a categorical choice (lists travel as JSON)."""
    if isinstance(value, (list, tuple)):
        return all(v is None or isinstance(v, (bool, int, float, str)) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _possible(space_fixed: dict[str, Any], params: dict[str, Param], key: str) -> list[Any]:
    if key in params:
        return params[key].candidates()
    return [space_fixed.get(key, DEFAULTS[key])]


def _conditions_first(path: str, params: dict[str, Param]) -> list[Param]:
    """Params in file order, except that a conditional one follows the keys it depends on."""
    ordered: list[Param] = []
    pending = list(params.values())
    while pending:
        ready = [p for p in pending if all(k not in params or params[k] in ordered for k in p.when)]
        if not ready:
            raise _fail(path, f"params.{pending[0].name}.when", "conditions form a cycle")
        ordered.append(ready[0])
        pending.remove(ready[0])
    return ordered


def parse_space(raw: Any, path: str = "<space>") -> SearchSpace:
    """Validate a loaded YAML document; every problem is a ``ConfigError`` naming file and key,
    raised before any trial (nothing is left for Optuna to reject while sampling)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a search space must be a mapping with keys {sorted(TOP_KEYS)}")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise _fail(path, unknown[0], f"unknown key; allowed: {sorted(TOP_KEYS)}")
    objectives, cost_objectives = _parse_objectives(path, raw.get("objectives"))
    fixed = _mapping(path, "fixed", raw.get("fixed"))
    params_raw = _mapping(path, "params", raw.get("params"))
    for key in [*fixed, *params_raw]:
        if key not in DEFAULTS:
            raise _fail(path, key, f"unknown hyperparameter; allowed: {', '.join(DEFAULTS)}")
    both = sorted(set(fixed) & set(params_raw))
    if both:
        raise _fail(path, both[0], "is both fixed and searched; keep one")
    params = {name: _parse_param(path, name, spec) for name, spec in params_raw.items()}
    for name, value in fixed.items():
        _check_value(path, name, value)
    for param in params.values():
        _check_conditions(path, param, fixed, params)
        for value in param.candidates():
            _check_value(path, param.name, int(value) if param.type == "int" else value)
    if max(_possible(fixed, params, "experts_per_task")) + max(_possible(fixed, params, "shared_experts")) == 0:
        raise _fail(path, "experts_per_task", "impossible space: 'experts_per_task' and 'shared_experts' are always 0")
    enqueue = raw.get("enqueue") or []
    if not isinstance(enqueue, list):
        raise _fail(path, "enqueue", "must be a list of configs (mappings of searched hyperparameters)")
    space = SearchSpace(
        path, _parse_dataset(path, raw.get("dataset")), objectives, _parse_sampler(path, raw.get("sampler")),
        _parse_budget(path, raw.get("budget")), fixed, _conditions_first(path, params), enqueue, raw,
        parse_pruner(path, raw.get("pruner")), _parse_serving(path, raw.get("serving")), cost_objectives,
        _parse_limits(path, raw), notes=_renamed(path, raw),
    )  # fmt: skip
    for i, config in enumerate(enqueue):
        _check_enqueued(space, i, config)
    return space


def _parse_objectives(path: str, raw: Any) -> tuple[list[str] | None, list[str]]:
    """Task names (None: every task) and cost keys (``{cost: latency}`` -> ``latency_ms``)."""
    if raw is None:
        return None, []
    problem = "must be a non-empty list of task names and {cost: NAME} entries (NAME: " + ", ".join(COST_KEYS) + ")"
    if not isinstance(raw, list) or not raw:
        raise _fail(path, "objectives", problem)
    tasks, costs = [], []
    for entry in raw:
        if isinstance(entry, str):
            tasks.append(entry)
        elif isinstance(entry, dict) and set(entry) == {"cost"} and entry["cost"] in COST_KEYS:
            costs.append(COST_KEYS[entry["cost"]])
        else:
            raise _fail(path, "objectives", f"{problem}, got {entry!r}")
    if len(set(costs)) != len(costs):
        raise _fail(path, "objectives", "a cost is listed twice")
    return tasks or None, costs


def _renamed(path: str, raw: Mapping[str, Any]) -> list[str]:
    both = [old for old, new in RENAMED_KEYS.items() if old in raw and new in raw]
    if both:
        raise _fail(path, both[0], f"is the old name of '{RENAMED_KEYS[both[0]]}'; keep only '{RENAMED_KEYS[both[0]]}'")
    return [f"note: {path}: key '{old}' is now called '{new}' (serving limits); it still works" for old, new in RENAMED_KEYS.items() if old in raw]


def _parse_limits(path: str, raw: Mapping[str, Any]) -> Limits | None:
    """The space's serving limits (``limits:``, formerly ``constraints:``)."""
    section = "constraints" if "constraints" in raw else "limits"
    if raw.get(section) is None:
        return None
    limits = Limits.from_dict(_mapping(path, section, raw[section]), path, section)
    return limits or None


def _parse_serving(path: str, raw: Any) -> Any:
    if raw is None:
        return None
    return Serving.from_dict(_mapping(path, "serving", raw), path)


def _mapping(path: str, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, key, f"must be a mapping (key: value lines), got {type(value).__name__} {value!r}")
    return dict(value)


def _parse_dataset(path: str, dataset: Any) -> dict[str, Any]:
    if isinstance(dataset, str):
        dataset = {"name": dataset}
    if not isinstance(dataset, dict) or not isinstance(dataset.get("name"), str):
        raise _fail(path, "dataset", "needs 'name' (census, synthetic or a dataset spec path)")
    options = _mapping(path, "dataset.options", dataset.get("options"))
    return {"name": _spec_path(dataset["name"], path), "options": options}


def _parse_sampler(path: str, sampler: Any) -> dict[str, Any]:
    sampler = {"name": sampler} if isinstance(sampler, str) else _mapping(path, "sampler", sampler) or {"name": "tpe"}
    unknown = sorted(set(sampler) - {"name", "seed"})
    if unknown:
        raise _fail(path, f"sampler.{unknown[0]}", "unknown; allowed: name, seed")
    if sampler.get("name", "tpe") not in SAMPLERS:
        raise _fail(path, "sampler", f"name {sampler.get('name')!r} must be one of {list(SAMPLERS)}")
    seed = sampler.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise _fail(path, "sampler.seed", f"must be an integer >= 0, got {seed!r}")
    return {"name": "tpe", **sampler}


def _parse_budget(path: str, budget: Any) -> dict[str, int]:
    budget = {**BUDGET_DEFAULTS, **_mapping(path, "budget", budget)}
    for key, value in budget.items():
        if key not in BUDGET_DEFAULTS and key not in BUDGET_OPTIONAL:
            raise _fail(path, f"budget.{key}", f"unknown; allowed: {sorted([*BUDGET_DEFAULTS, *BUDGET_OPTIONAL])}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _fail(path, f"budget.{key}", f"must be an integer >= 1, got {value!r}")
    return budget


def _check_conditions(path: str, param: Param, fixed: dict[str, Any], params: dict[str, Param]) -> None:
    """Every ``when`` key is searched or fixed, and each allowed value is one it can take (else
    the param would never be sampled)."""
    for key, allowed in param.when.items():
        where = f"params.{param.name}.when.{key}"
        if key in params:
            other = params[key]
            if other.type == "categorical":
                reachable = [v for v in allowed if encode(v) in [encode(c) for c in other.choices]]
                takes = f"choices {other.choices}"
            else:
                reachable = [v for v in allowed if isinstance(v, (int, float)) and not isinstance(v, bool) and other.low <= v <= other.high]
                takes = f"values {other.low}..{other.high}"
        elif key in fixed:
            reachable = [v for v in allowed if encode(v) == encode(fixed[key])]
            takes = f"only its fixed value {fixed[key]!r}"
        else:
            raise _fail(path, f"params.{param.name}.when", f"condition on '{key}', which is neither searched nor fixed")
        unreachable = [v for v in allowed if v not in reachable]
        if unreachable:
            raise _fail(path, where, f"value {unreachable[0]!r} can never occur: '{key}' takes {takes}")


def _check_enqueued(space: SearchSpace, index: int, config: Any) -> None:
    key = f"enqueue[{index}]"
    if not isinstance(config, dict):
        raise _fail(space.path, key, "must be a mapping of searched hyperparameters")
    params = {p.name: p for p in space.params}
    for name, value in config.items():
        if name not in params:
            raise _fail(space.path, f"{key}.{name}", "is not a searched hyperparameter of this space")
        p = params[name]
        inside = (encode(value) in [encode(c) for c in p.choices]) if p.type == "categorical" else p.low <= value <= p.high
        if not inside:
            raise _fail(space.path, f"{key}.{name}", f"value {value!r} lies outside the searched range")
    try:
        PLEConfig.from_dict({**space.fixed, **config})
    except ConfigError as exc:
        raise _fail(space.path, key, str(exc)) from None


def find_space(study: str) -> Path | None:
    """The space file for ``--study NAME``: ``search_spaces/NAME.yaml`` in the working directory
    (a user's own file wins), else the one shipped with the package (census, synthetic), else None."""
    local = Path.cwd() / "search_spaces" / f"{study}.yaml"
    if local.is_file():
        return local
    from importlib.resources import as_file, files

    shipped = files("ple_search.search_spaces").joinpath(f"{study}.yaml")
    if shipped.is_file():
        with as_file(shipped) as path:  # a real file for every install kind (wheel, editable)
            return Path(path)
    return None


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search space file (``yaml.safe_load``)."""
    path = Path(path)
    return parse_space(read_yaml(path, "search space"), str(path))
