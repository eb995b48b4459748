"""MO-ASHA: ranking and promotion on hand-made vectors, and pruning inside real studies."""

import json
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import yaml

from ple_search.cli.main import main
from ple_search.data.schema import Task
from ple_search.core.errors import ConfigError
from ple_search.train.engine import EpochRecorder
from ple_search.study.pruning import MOASHA, crowding_distance, mo_order, parse_pruner
from ple_search.study.storage import open_storage

MAX2 = ["maximize", "maximize"]


def test_order_by_front_then_crowding_two_objectives():
    values = np.array([
        [0.70, 0.70],  # 0: dominated by 1 -> second front
        [0.80, 0.80],  # 1: front, middle
        [0.95, 0.60],  # 2: front, extreme
        [0.60, 0.95],  # 3: front, extreme
        [0.85, 0.75],  # 4: front, crowded next to 1
    ])  # fmt: skip
    order = list(mo_order(values, MAX2, "crowding"))
    assert set(order[:4]) == {1, 2, 3, 4} and order[4] == 0
    assert set(order[:2]) == {2, 3}  # boundary points have infinite crowding distance
    assert order[2] == 1  # 1 is less crowded than 4


def test_hypervolume_tie_break_prefers_the_larger_exclusive_contribution():
    values = np.array([
        [0.9400, 0.99300],  # 0: best income by 0.0005 over 1: large contribution
        [0.9395, 0.99400],  # 1: middle
        [0.9300, 0.99401],  # 2: best marital by only 0.00001: an extreme point, tiny contribution
        [0.9000, 0.9000],  # 3: dominated
    ])  # fmt: skip
    assert list(mo_order(values, MAX2, "hypervolume", [0.5, 0.5])) == [0, 1, 2, 3]
    assert set(mo_order(values, MAX2, "crowding")[:2]) == {0, 2}  # crowding keeps both extremes first


def test_hypervolume_tie_break_tells_apart_points_beyond_the_reference():
    rmse = np.array([[1.5, 1.2], [1.2, 1.5], [1.3, 1.3]])  # all worse than the mean predictor's 1.0
    assert mo_order(rmse, ["minimize", "minimize"], "hypervolume", [1.0, 1.0])[0] == 2


def test_epsnet_tie_break_is_farthest_first_from_the_best_on_the_first_objective():
    values = np.array([[0.90, 0.10], [0.50, 0.50], [0.10, 0.90], [0.85, 0.16]])
    assert list(mo_order(values, MAX2, "epsnet")) == [0, 2, 1, 3]
    assert list(mo_order(values, ["minimize", "minimize"], "epsnet")) == [2, 0, 1, 3]


def test_limit_orders_only_the_fronts_needed():
    values = np.array([[3.0, 3.0], [2.0, 2.0], [1.0, 1.0]])
    assert list(mo_order(values, MAX2, "hypervolume", [0.0, 0.0], limit=1)) == [0]
    assert list(mo_order(values, MAX2, "hypervolume", [0.0, 0.0])) == [0, 1, 2]


def test_minimise_three_objectives_and_exact_ties():
    values = np.array([[1.0, 1.0, 1.0], [0.5, 2.0, 1.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
    order = list(mo_order(values, ["minimize"] * 3, "crowding"))
    assert order[-1] == 3 and order.index(0) < order.index(2)  # the exact tie keeps the earlier row
    assert np.isinf(crowding_distance(values[:2])).all()


@pytest.mark.parametrize("tie_break", ["crowding", "epsnet", "hypervolume"])
def test_promotion_quota_is_one_over_eta_and_at_least_one(tie_break):
    pruner = MOASHA(min_epochs=1, eta=3, tie_break=tie_break)
    ref = [0.0, 0.0]
    others = np.array([[0.9, 0.9], [0.8, 0.8], [0.7, 0.7], [0.6, 0.6], [0.5, 0.5]])
    assert pruner.keep([0.85, 0.85], others, MAX2, ref)  # second of six, quota 2
    assert not pruner.keep([0.75, 0.75], others, MAX2, ref)  # third of six
    assert pruner.keep([0.1, 0.1], np.empty((0, 2)), MAX2, ref)  # alone: the best continues
    assert not pruner.keep([0.1, 0.1], np.array([[0.2, 0.2]]), MAX2, ref)  # two, quota 1
    mixed, mixed_ref = ["minimize", "maximize"], [1.0, 0.0]
    assert pruner.keep([0.4, 0.1], np.array([[0.3, 0.2]]), mixed, mixed_ref) is False
    assert pruner.keep([0.2, 0.3], np.array([[0.3, 0.2]]), mixed, mixed_ref)


def test_rungs_are_min_epochs_times_powers_of_eta_below_the_epoch_budget():
    assert [e for e in range(1, 30) if MOASHA(1, 3).is_rung(e, 100)] == [1, 3, 9, 27]
    assert [e for e in range(1, 20) if MOASHA(2, 2).is_rung(e, 100)] == [2, 4, 8, 16]
    assert [e for e in range(1, 9) if MOASHA(2, 2).is_rung(e, 8)] == [2, 4]  # never on the last epoch


def test_a_run_that_early_stopping_ends_is_never_pruned():
    asked = []
    recorder = EpochRecorder([Task("y", "binary")], patience=1, stop_check=lambda epochs, best: asked.append(epochs) or True)
    trainer = SimpleNamespace(sanity_checking=False, should_stop=False, max_epochs=8, world_size=1)
    recorder.on_validation_end(trainer, SimpleNamespace(last_metrics={"val": {"y": 0.8}}, state_dict=dict))
    assert recorder.pruned_at == 1 and trainer.should_stop  # improving epoch at a rung: the check decides
    recorder.pruned_at, trainer.should_stop = None, False
    recorder.on_validation_end(trainer, SimpleNamespace(last_metrics={"val": {"y": 0.7}}, state_dict=dict))
    assert trainer.should_stop and recorder.pruned_at is None and asked == [1]  # patience ends it: not asked


@pytest.mark.parametrize("raw, match", [
    ({"type": "hyperband"}, "must be none or"),
    ({"type": "mo-asha", "eta": 1}, "pruner.eta': must be an integer >= 2"),
    ({"type": "mo-asha", "min_epochs": 0}, "pruner.min_epochs"),
    ({"type": "mo-asha", "rate": 2}, "pruner.rate': unknown"),
    ({"type": "mo-asha", "tie_break": "random"}, "pruner.tie_break': must be one of crowding, epsnet, hypervolume"),
])  # fmt: skip
def test_pruner_config_errors(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_pruner("space.yaml", raw)
    assert parse_pruner("space.yaml", "none") is None and parse_pruner("s", None) is None


SPACE = {
    "dataset": {"name": "synthetic", "options": {"n": 1500, "d": 6}},
    "sampler": {"name": "random", "seed": 0},
    "budget": {"max_epochs": 4, "patience": 4},
    "fixed": {"batch_size": 64, "tower_hidden": [4]},
    "params": {"lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
               "expert_hidden": {"type": "categorical", "choices": [[4], [8]]}},
    "pruner": {"type": "mo-asha", "min_epochs": 1, "eta": 2},
}  # fmt: skip


def run_pruned(tmp_path, *extra, trials=8, space=SPACE):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    storage = str(tmp_path / "s.journal")
    argv = ["run", "--study", "pr", "--space", str(path), "--trials", str(trials), "--storage", storage, "--quiet", "--threads", "1", *extra]
    assert main(argv) == 0
    return storage, optuna.load_study(study_name="pr", storage=open_storage(storage))


def test_a_pruned_study_finishes_its_target_and_reports_pruned_trials(tmp_path, capsys):
    storage, study = run_pruned(tmp_path)
    states = [t.state.name for t in study.trials]
    assert states.count("PRUNED") >= 1 and states.count("COMPLETE") >= 1 and "RUNNING" not in states
    assert states.count("PRUNED") + states.count("COMPLETE") == 8
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    for t in pruned:
        assert t.user_attrs["pruned_at"] < 4 and str(t.user_attrs["pruned_at"]) in t.user_attrs["rungs"]
    assert "PRUNED after" in capsys.readouterr().err
    assert main(["pareto", "--study", "pr", "--storage", storage, "--all", "--format", "json", "--plot", str(tmp_path / "p.png")]) == 0
    rows = json.loads(capsys.readouterr().out)["trials"]
    assert {r["number"] for r in rows if r["rank"] is None} == {t.number for t in pruned}
    assert all(r["pruned_at"] for r in rows if r["rank"] is None) and (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.slow
def test_pruning_works_with_two_workers(tmp_path):
    slower = {**SPACE, "dataset": {"name": "synthetic", "options": {"n": 6000, "d": 6}}}  # trials of a second or so: both workers get some
    _, study = run_pruned(tmp_path, "--jobs", "2", space=slower)
    states = [t.state.name for t in study.trials]
    assert states.count("PRUNED") + states.count("COMPLETE") == 8 and "RUNNING" not in states
    assert len({t.user_attrs.get("worker") for t in study.trials}) == 2


def test_a_single_objective_study_prunes_too(tmp_path):
    """Single-task baselines inherit the study's pruner: one objective is plain ordering."""
    _, study = run_pruned(tmp_path, space={**SPACE, "objectives": ["y1"]})
    states = [t.state.name for t in study.trials]
    assert "FAIL" not in states and states.count("PRUNED") >= 1 and states.count("PRUNED") + states.count("COMPLETE") == 8
