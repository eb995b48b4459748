"""PLEConfig is the one source of every hyperparameter's default and validation."""

import dataclasses

import pytest

from ple_search.model import ple as model_module
from ple_search.model.hparams import DEFAULTS, PLEConfig, resolve_hparams
from ple_search.data.schema import Schema, Task
from ple_search.core.errors import ConfigError
from ple_search.model.ple import PLE
from ple_search.train.module import PLEModule
from ple_search.study.space import parse_space


def test_the_model_and_the_module_take_their_defaults_from_ple_config():
    defaults = PLEConfig()
    model = PLE(10, 2)
    assert len(model.levels) == defaults.levels
    assert model.levels[0].experts_per_task == defaults.experts_per_task and model.levels[0].shared_experts == defaults.shared_experts
    module = PLEModule(Schema(numeric=("x",), tasks=(Task("a", "binary"),)))
    assert module.resolved == DEFAULTS == defaults.to_dict()
    assert list(DEFAULTS) == [f.name for f in dataclasses.fields(PLEConfig)]


def test_resolving_fills_defaults_normalises_types_and_names_the_bad_key():
    assert resolve_hparams({"lr": 1, "expert_hidden": 32})["lr"] == 1.0
    assert resolve_hparams({"expert_hidden": 32})["expert_hidden"] == [32]
    with pytest.raises(ConfigError, match="unknown hyperparameter 'depth': allowed keys are architecture, levels, "):
        resolve_hparams({"depth": 3})
    with pytest.raises(ConfigError, match="'levels' = 0 is invalid: must be an integer >= 1"):
        resolve_hparams({"levels": 0})
    with pytest.raises(ConfigError, match="'loss_weighting' = 'magic' is invalid"):
        resolve_hparams({"loss_weighting": "magic"})


def test_validating_a_space_builds_no_model(monkeypatch):
    def no_models(*args, **kwargs):
        raise AssertionError("a model was built to validate a config")

    monkeypatch.setattr(model_module.PLE, "__init__", no_models)
    space = parse_space({
        "dataset": "synthetic",
        "fixed": {"dropout": 0.1},
        "params": {"levels": {"type": "int", "low": 1, "high": 3}, "expert_hidden": {"type": "categorical", "choices": [[8], [16, 8]]}},
        "enqueue": [{"levels": 1, "expert_hidden": [8]}],
    })  # fmt: skip
    assert [p.name for p in space.params] == ["levels", "expert_hidden"]
    with pytest.raises(ConfigError, match="key 'dropout'"):
        parse_space({"dataset": "synthetic", "fixed": {"dropout": 1.5}})
