"""Search-space files are validated before any trial, with the file and key in every message."""

import optuna
import pytest
import yaml

from ple_search.core.errors import ConfigError
from ple_search.study.space import load_space, parse_space

BASE = {
    "dataset": {"name": "synthetic", "options": {"n": 200, "d": 4}},
    "params": {
        "levels": {"type": "int", "low": 1, "high": 2},
        "expert_hidden": {"type": "categorical", "choices": [[8], [16, 8]]},
        "loss_weighting": {"type": "categorical", "choices": ["equal", "dwa"]},
        "dwa_temperature": {"type": "float", "low": 0.5, "high": 4.0, "log": True, "when": {"loss_weighting": "dwa"}},
    },
}


def with_changes(**changes):
    raw = yaml.safe_load(yaml.safe_dump(BASE, sort_keys=False))
    for dotted, value in changes.items():
        node, *path = dotted.split("__")
        target = raw
        for key in [node, *path][:-1]:
            target = target.setdefault(key, {})
        target[[node, *path][-1]] = value
    return raw


@pytest.mark.parametrize("changes, key, problem", [
    ({"params__levls": {"type": "int", "low": 1, "high": 2}}, "levls", "unknown hyperparameter"),
    ({"colour": 1}, "colour", "unknown key"),
    ({"params__levels": {"type": "int", "low": 3, "high": 1}}, "params.levels", "low \\(3\\) > high \\(1\\)"),
    ({"params__lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "params.lr", "log scale needs low > 0"),
    ({"params__tower_hidden": {"type": "categorical", "choices": []}}, "params.tower_hidden", "non-empty list"),
    ({"fixed": {"levels": 1}}, "levels", "both fixed and searched"),
    ({"fixed": {"experts_per_task": 0, "shared_experts": 0}}, "experts_per_task", "impossible space"),
    ({"params__experts_per_task": {"type": "int", "low": 0, "high": 0}, "fixed": {"shared_experts": 0}}, "experts_per_task", "impossible space"),
    ({"params__levels": {"type": "int", "low": 0, "high": 2}}, "levels", "must be an integer >= 1"),
    ({"params__activation": {"type": "categorical", "choices": ["relu", "swish9"]}}, "activation", "must be one of"),
    ({"params__lr": {"type": "uniform", "low": 0.1, "high": 1}}, "params.lr", "must be int, float or categorical"),
    ({"params__dropout": {"type": "float", "low": 0, "high": 0.5, "when": {"lr": 0.1}}}, "params.dropout.when", "neither searched nor fixed"),
    ({"params__levels": {"type": "int", "low": 1, "high": 2, "when": {"expert_hidden": [[8]]}},
      "params__expert_hidden": {"type": "categorical", "choices": [[8]], "when": {"levels": 1}}}, "params.expert_hidden.when", "cycle"),
    ({"budget": {"max_epochs": 0}}, "budget.max_epochs", "integer >= 1"),
    ({"sampler": "cmaes"}, "sampler", "must be one of"),
    ({"enqueue": [{"levels": 5}]}, "enqueue\\[0\\].levels", "outside the searched range"),
    ({"enqueue": [{"lr": 0.1}]}, "enqueue\\[0\\].lr", "not a searched hyperparameter"),
])  # fmt: skip
def test_invalid_space_names_file_key_and_problem(tmp_path, changes, key, problem):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(with_changes(**changes)))  # sorted keys: conditions must not depend on order
    with pytest.raises(ConfigError, match=f"{path}: .*'{key}.*{problem}"):
        load_space(path)


def test_bundled_spaces_are_valid_and_census_holds_the_papers_configs():
    census = load_space("ple_search/search_spaces/census.yaml")
    load_space("ple_search/search_spaces/synthetic.yaml")
    load_space("ple_search/search_spaces/example.yaml")
    enqueued = census.enqueue
    assert {"levels": 1, "experts_per_task": 3, "shared_experts": 2, "expert_hidden": [16], "tower_hidden": [8]}.items() <= enqueued[0].items()
    assert any(c["experts_per_task"] == 0 and c["shared_experts"] > 1 for c in enqueued)  # MMoE
    assert any(c["experts_per_task"] == 0 and c["shared_experts"] == 1 for c in enqueued)  # shared-bottom


def test_sampling_decodes_lists_and_respects_conditions():
    space = parse_space(BASE, "mem.yaml")
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        hp = space.sample(trial)
        assert hp["expert_hidden"] in ([8], [16, 8])
        assert ("dwa_temperature" in hp) == (hp["loss_weighting"] == "dwa")
        seen.add(hp["loss_weighting"])
        study.tell(trial, [0.0, 0.0])
    assert seen == {"equal", "dwa"}


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="search space file not found"):
        load_space(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("params: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: search space is not valid YAML at line 2, column 1: "):
        load_space(tmp_path / "bad.yaml")
