"""MTL gain, seesaw and negative-transfer labels; single-task baselines; confirming the front."""

import json

import optuna
import pytest
import yaml

from ple_search.cli.main import main
from ple_search.study.storage import open_storage
from ple_search.evaluate.transfer import GAIN, NEGATIVE, SEESAW, gains, mtl_gain, transfer_label


def test_gain_arithmetic_for_both_directions_and_labels():
    assert mtl_gain(0.95, 0.94, "maximize") == pytest.approx(0.01)  # AUC: higher is better
    assert mtl_gain(0.50, 0.55, "minimize") == pytest.approx(0.05)  # RMSE: lower is better
    assert mtl_gain(0.60, 0.55, "minimize") == pytest.approx(-0.05)
    assert transfer_label([0.01, 0.0]) == GAIN
    assert transfer_label([0.01, -0.002]) == SEESAW
    assert transfer_label([-0.01, -0.002]) == NEGATIVE
    directions = {"auc_task": "maximize", "rmse_task": "minimize"}
    g = gains({"auc_task": 0.9, "rmse_task": 1.2}, {"auc_task": 0.92, "rmse_task": 1.0}, directions)
    assert g == pytest.approx({"auc_task": -0.02, "rmse_task": -0.2}) and transfer_label(list(g.values())) == NEGATIVE


SPACE = {
    "dataset": {"name": "synthetic", "options": {"n": 1500, "d": 6}},
    "sampler": {"name": "random", "seed": 0},
    "budget": {"max_epochs": 2, "patience": 2},
    "fixed": {"lr": 0.02, "batch_size": 64, "tower_hidden": [4], "expert_hidden": [8]},
    "params": {"experts_per_task": {"type": "int", "low": 0, "high": 2},
               "loss_weighting": {"type": "categorical", "choices": ["equal", "dwa"]},
               "dwa_temperature": {"type": "float", "low": 1, "high": 3, "when": {"loss_weighting": "dwa"}}},
    "enqueue": [{"experts_per_task": 1, "loss_weighting": "dwa", "dwa_temperature": 2.0}],
}  # fmt: skip


@pytest.fixture
def study(tmp_path, capsys):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    storage = str(tmp_path / "s.journal")
    assert main(["run", "--study", "tr", "--space", str(tmp_path / "space.yaml"), "--trials", "4", "--storage", storage, "--quiet", "--threads", "1"]) == 0
    capsys.readouterr()
    return storage


def pareto_json(storage, *extra):
    return ["pareto", "--study", "tr", "--storage", storage, "--format", "json", *extra]


def test_pareto_without_baselines_says_how_to_add_them(study, capsys):
    assert main(["pareto", "--study", "tr", "--storage", study, "--format", "markdown"]) == 0
    assert "ple-search baselines --study tr" in capsys.readouterr().out
    assert main(pareto_json(study)) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["baselines"] is None and all("gain" not in r for r in data["trials"])


@pytest.mark.slow
def test_baselines_are_stored_and_pareto_labels_every_front_trial(study, capsys):
    assert main(["baselines", "--study", "tr", "--storage", study, "--trials", "2", "--seeds", "2", "--threads", "1"]) == 0
    storage = open_storage(study)
    main_study = optuna.load_study(study_name="tr", storage=storage)
    baselines = main_study.user_attrs["baselines"]
    assert set(baselines) == {"y1", "y2"} and all(b["seeds"] == 2 and b["test_mean"] > 0 for b in baselines.values())
    single = optuna.load_study(study_name="tr:single:y1", storage=storage)
    assert len(single.directions) == 1 and [(t["name"], t["type"]) for t in single.user_attrs["ple_search"]["schema"]["tasks"]] == [("y1", "regression")]
    assert all("loss_weighting" not in t.params for t in single.trials)
    capsys.readouterr()
    assert main(pareto_json(study)) == 0
    data = json.loads(capsys.readouterr().out)
    for row in data["trials"]:
        expected = {t: baselines[t]["test_mean"] - row["test"][t] for t in ("y1", "y2")}  # RMSE: single - MTL
        assert row["gain"] == pytest.approx(expected)
        assert row["transfer"] == transfer_label(list(expected.values()))
    assert data["beats_single_task"] == sum(r["transfer"] == GAIN for r in data["trials"])
    assert main(["pareto", "--study", "tr", "--storage", study, "--format", "markdown"]) == 0
    assert "Pareto trials beat single-task on every task" in capsys.readouterr().out


@pytest.mark.slow
def test_confirm_stores_a_front_that_pareto_reads(study, capsys):
    assert main(["confirm", "--study", "tr", "--storage", study, "--top", "2", "--seeds", "2", "--threads", "1"]) == 0
    stored = optuna.load_study(study_name="tr", storage=open_storage(study)).user_attrs["confirmed"]["trials"]
    assert 1 <= len(stored) <= 2 and any(c["on_front"] for c in stored.values())
    capsys.readouterr()
    assert main(pareto_json(study, "--confirmed")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["view"] == "confirmed" and {str(r["number"]) for r in data["trials"]} == set(stored)
    for row in data["trials"]:
        c = stored[str(row["number"])]
        assert row["values"] == pytest.approx(c["val_mean"]) and row["test_std"] == pytest.approx(c["test_std"])
        assert (row["rank"] == 0) == c["on_front"]
    assert main(["pareto", "--study", "tr", "--storage", study, "--confirmed"]) == 0
    assert "stay non-dominated" in capsys.readouterr().out
    assert main(["pareto", "--study", "tr", "--storage", study]) == 0  # the search view is untouched


def test_the_census_space_yields_a_single_task_space_without_any_balancing_key():
    from ple_search.evaluate.baselines import single_task_space
    from ple_search.study.space import find_space
    from ple_search.train.weighting import HPARAM_KEYS

    raw = yaml.safe_load(find_space("census").read_text())
    raw["params"]["dropout"]["when"] = {"loss_weighting": ["pcgrad"]}  # searched only under a balancing method
    space = single_task_space(raw, "income", "census single-task")
    names = {p.name for p in space.params} | set(space.fixed)
    assert not names & set(HPARAM_KEYS) and "dropout" not in names and "numeric_encoding" in names
    assert all(not set(config) & set(HPARAM_KEYS) for config in space.enqueue)
