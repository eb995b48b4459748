"""Serving cost: parameters, multiply-adds and latency of the built model, measured before any
training, stored on every trial and shown by `pareto`; ONNX export equals the eager model."""

import json

import numpy as np
import optuna
import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from helpers import tiny_space
from ple_search.cli.main import main
from ple_search.serve.cost import Serving, measure_costs
from ple_search.data.schema import Schema, Task
from ple_search.core.errors import ConfigError
from ple_search.train.module import PLEModule
from ple_search.serve.engines import engine, example_inputs, onnx_available
from ple_search.study.space import parse_space

SCHEMA = Schema(("c0", "c1"), (5, 7), ("n0", "n1", "n2"), (Task("a", "binary"), Task("b", "binary"), Task("y", "regression", 3.0, 2.0)))
CONFIGS = [
    {},
    {"levels": 1, "experts_per_task": 0, "shared_experts": 1},
    {"levels": 3, "gate_hidden": [4], "tower_hidden": [8, 4], "expert_hidden": [16, 8]},
    {"experts_per_task": 0, "shared_experts": 4},
    {"experts_per_task": 2, "shared_experts": 0},
]


@pytest.mark.parametrize("hparams", CONFIGS)
def test_flops_are_the_multiply_adds_torch_counts_per_sample(hparams):
    module = PLEModule(SCHEMA, hparams).eval()
    cat, num = example_inputs(module, 64)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(cat, num)
    costs = measure_costs(module, names=("params", "flops"))
    assert costs["flops"] == counter.get_total_flops() / 2 / 64  # a multiply-add is two FLOPs
    assert costs["params"] == sum(p.numel() for p in module.parameters())


def test_latency_is_a_median_with_its_spread_and_leaves_threads_and_mode_as_they_were():
    module = PLEModule(SCHEMA, {})
    threads = torch.get_num_threads()
    costs = measure_costs(module, Serving(batch_size=32, threads=1, repeats=7, warmup=1), names=("latency",))
    assert costs["latency_ms"] > 0 and costs["latency_spread_ms"] >= 0
    assert torch.get_num_threads() == threads and module.training


@pytest.mark.parametrize("serving, key", [
    ({"batch": 256}, "serving.batch"), ({"batch_size": 0}, "serving.batch_size"), ({"threads": 1.5}, "serving.threads"),
    ({"engine": "tensorrt"}, "serving.engine"), ([256], "'serving'"),
])  # fmt: skip
def test_bad_serving_settings_are_refused_naming_the_key(serving, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_space({"dataset": "synthetic", "serving": serving}, "space.yaml")


@pytest.mark.skipif(not onnx_available(), reason="the serve extra (onnx, onnxruntime) is not installed; CI installs it")
@pytest.mark.parametrize("batch", [1, 500])
def test_onnx_runtime_outputs_equal_the_eager_model(batch):
    module = PLEModule(SCHEMA, {"levels": 2, "gate_hidden": [4]}).eval()
    cat, num = example_inputs(module, batch, seed=3)
    eager = engine("eager", module)(cat.numpy(), num.numpy())
    for name in ("onnx", "torchscript"):
        np.testing.assert_allclose(engine(name, module)(cat.numpy(), num.numpy()), eager, atol=1e-5, rtol=0)


def test_every_trial_stores_its_cost_and_pareto_shows_it(tmp_path, capsys):
    space = tiny_space(
        params={"expert_hidden": {"type": "categorical", "choices": [[4], [32]]}, "lr": {"type": "float", "low": 0.001, "high": 0.01}},
        serving={"batch_size": 64, "threads": 1, "repeats": 5, "warmup": 1},
    )
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    storage = str(tmp_path / "s.journal")
    assert main(["run", "--study", "c", "--space", str(tmp_path / "space.yaml"), "--trials", "3", "--storage", storage, "--quiet", "--threads", "1"]) == 0
    trials = optuna.load_study(study_name="c", storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))).trials
    for trial in trials:
        cost = trial.user_attrs["cost"]
        assert cost["params"] == trial.user_attrs["n_params"] and cost["flops"] > 0 and cost["latency_ms"] > 0
    capsys.readouterr()
    assert main(["pareto", "--study", "c", "--storage", storage, "--format", "json", "--all"]) == 0
    rows = json.loads(capsys.readouterr().out)["trials"]
    assert {r["number"]: r["cost"] for r in rows} == {t.number: t.user_attrs["cost"] for t in trials}
    assert main(["pareto", "--study", "c", "--storage", storage, "--format", "csv", "--all"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split(",")
    assert header[-2:] == ["MFLOPs/sample", "latency ms"]


def test_without_serving_settings_a_trial_stores_params_and_flops_but_spends_no_time_on_latency(tmp_path):
    space = {"dataset": {"name": "synthetic", "options": {"n": 600, "d": 4}}, "budget": {"max_epochs": 1, "patience": 1}, "fixed": {"batch_size": 128}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    storage = str(tmp_path / "s.journal")
    assert main(["run", "--study", "c", "--space", str(tmp_path / "space.yaml"), "--trials", "1", "--storage", storage, "--quiet", "--threads", "1"]) == 0
    trial = optuna.load_study(study_name="c", storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))).trials[0]
    assert set(trial.user_attrs["cost"]) == {"params", "flops"}


def cost_space(tmp_path, **extra):
    space = tiny_space(**{
        "sampler": {"name": "tpe", "seed": 0}, "fixed": {"batch_size": 128, "levels": 1},
        "params": {"expert_hidden": {"type": "categorical", "choices": [[4], [64]]}, "lr": {"type": "float", "low": 0.001, "high": 0.01}},
        **extra,
    })  # fmt: skip
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    return str(tmp_path / "space.yaml"), str(tmp_path / "s.journal")


def load(storage, name="c"):
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage)))


def run(space, storage, trials, *extra):
    return main(["run", "--study", "c", "--space", space, "--trials", str(trials), "--storage", storage, "--quiet", "--threads", "1", *extra])


def test_a_cost_objective_is_one_more_minimised_direction_with_a_reference_past_the_largest_model(tmp_path):
    space, storage = cost_space(tmp_path, objectives=["y1", "y2", {"cost": "params"}])
    assert run(space, storage, 3) == 0
    study = load(storage)
    meta = study.user_attrs["ple_search"]
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE", "MINIMIZE"] and meta["objectives"] == ["y1", "y2", "params"]
    largest = PLEModule(SCHEMA_OF(storage), {"levels": 1, "expert_hidden": [64], "batch_size": 128})
    assert meta["reference_point"][2] == pytest.approx(1.1 * sum(p.numel() for p in largest.parameters()))
    for trial in study.trials:
        assert trial.values[2] == trial.user_attrs["cost"]["params"]


def SCHEMA_OF(storage):
    return Schema.from_dict(load(storage).user_attrs["ple_search"]["schema"])


def test_a_config_over_a_hard_budget_is_pruned_before_training_and_never_on_the_front(tmp_path, capsys):
    space, storage = cost_space(tmp_path, limits={"params": 1500}, enqueue=[{"expert_hidden": [64]}, {"expert_hidden": [4]}])
    assert run(space, storage, 4) == 0
    study = load(storage)
    over = study.trials[0]
    assert over.state.name == "PRUNED" and over.user_attrs["over_budget"].startswith("over budget: params ") and "> 1,500" in over.user_attrs["over_budget"]
    assert "epochs_run" not in over.user_attrs  # no epoch was spent on it
    assert over.constraints["params"] > 0  # Trial.set_constraint: what the samplers learn from
    feasible = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert feasible and all(t.user_attrs["cost"]["params"] <= 1500 for t in feasible)
    capsys.readouterr()
    assert main(["pareto", "--study", "c", "--storage", storage, "--format", "json"]) == 0
    assert 0 not in {r["number"] for r in json.loads(capsys.readouterr().out)["trials"]}


@pytest.mark.parametrize("limits, message", [
    ({"memory": 10}, "limits.memory': unknown cost"), ({"params": 0}, "limits.params': must be a number > 0"),
    ({"params": 10}, "no config of the space can meet it: its smallest model has params"),
])  # fmt: skip
def test_bad_or_unreachable_limits_are_one_line_before_any_trial(tmp_path, capsys, limits, message):
    space, storage = cost_space(tmp_path, limits=limits)
    assert run(space, storage, 1) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_the_old_key_constraints_still_bounds_the_search_with_a_one_line_note(tmp_path, capsys):
    space, storage = cost_space(tmp_path, constraints={"params": 1500}, enqueue=[{"expert_hidden": [64]}])
    assert run(space, storage, 1) == 0
    err = capsys.readouterr().err
    assert "key 'constraints' is now called 'limits'" in err and err.count("is now called") == 1
    assert load(storage).trials[0].user_attrs["over_budget"].startswith("over budget: params ")


def test_a_space_with_both_limits_and_constraints_is_refused(tmp_path, capsys):
    space, storage = cost_space(tmp_path, constraints={"params": 1500}, limits={"params": 1500})
    assert run(space, storage, 1) == 2
    assert "key 'constraints': is the old name of 'limits'" in capsys.readouterr().err


def test_pareto_and_export_view_and_pick_under_serving_limits(tmp_path, capsys):
    space, storage = cost_space(tmp_path, enqueue=[{"expert_hidden": [64]}, {"expert_hidden": [4]}])
    assert run(space, storage, 4) == 0
    study = load(storage)
    small = max(t.user_attrs["cost"]["params"] for t in study.trials if t.params["expert_hidden"] == "[4]")
    capsys.readouterr()
    assert main(["pareto", "--study", "c", "--storage", storage, "--format", "json", "--all", "--max-params", str(small)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert all(r["cost"]["params"] <= small for r in data["trials"] if r["rank"] is not None)
    assert data["budget"] == {"limits": {"params": float(small)}, "excluded": sum(t.user_attrs["cost"]["params"] > small for t in study.trials)}
    out = tmp_path / "pick.yaml"
    assert main(["export", "--study", "c", "--storage", storage, "--pick", "best:y1", "--max-params", str(small), "--out", str(out)]) == 0
    chosen = yaml.safe_load(out.read_text())["provenance"]["trial"]
    assert study.trials[chosen].user_attrs["cost"]["params"] <= small
    assert "within the serving limits params <= " in capsys.readouterr().err
    assert main(["pareto", "--study", "c", "--storage", storage, "--max-params", "1"]) == 2
    assert "no finished trial of study 'c' is within the serving limits (params <= 1)" in capsys.readouterr().err


def test_a_cost_view_plots_any_two_axes_and_refuses_others_before_printing(tmp_path, capsys):
    space, storage = cost_space(tmp_path, serving={"batch_size": 32, "repeats": 3, "warmup": 1})
    assert run(space, storage, 2) == 0
    png = tmp_path / "view.png"
    capsys.readouterr()
    assert main(["pareto", "--study", "c", "--storage", storage, "--plot", str(png), "--x", "latency", "--y", "y1"]) == 0
    assert png.stat().st_size > 1000
    for extra, message in ((["--x", "latency"], "--x and --y go together"), (["--plot", str(png), "--x", "speed", "--y", "y1"], "--x/--y 'speed': use an objective or a serving cost: y1, y2, params")):
        capsys.readouterr()
        assert main(["pareto", "--study", "c", "--storage", storage, *extra]) == 2
        captured = capsys.readouterr()
        assert message in captured.err and captured.out == ""


@pytest.mark.slow
def test_baselines_and_confirm_work_on_a_study_with_a_cost_objective(tmp_path, capsys):
    space, storage = cost_space(tmp_path, objectives=["y1", "y2", {"cost": "params"}])
    assert run(space, storage, 3) == 0
    assert main(["baselines", "--study", "c", "--storage", storage, "--trials", "1", "--seeds", "1", "--threads", "1"]) == 0
    assert main(["confirm", "--study", "c", "--storage", storage, "--top", "1", "--seeds", "1", "--threads", "1"]) == 0
    study = load(storage)
    assert set(study.user_attrs["baselines"]) == {"y1", "y2"}  # tasks only: a cost has no single-task model
    (number, confirmed), = study.user_attrs["confirmed"]["trials"].items()
    assert confirmed["val_mean"]["params"] == study.trials[int(number)].user_attrs["cost"]["params"] and confirmed["val_std"]["params"] == 0
    capsys.readouterr()
    assert main(["pareto", "--study", "c", "--storage", storage, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["trials"]
    assert all(set(r["gain"]) == {"y1", "y2"} and r["transfer"] for r in rows)
