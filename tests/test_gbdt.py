"""The GBDT yardstick: rounds and config chosen on validation, stored by `baselines`, and the
gain against it reported per trial by `pareto`."""

import json

import numpy as np
import optuna
import pytest
import yaml

from helpers import make_dataset, tiny_space
from ple_search.cli.main import main
from ple_search.evaluate.gbdt import _best_round, _fit, _labelled, fit_gbdt

SMALL = {"learning_rate": (0.1, 0.3), "max_leaf_nodes": (7,), "l2_regularization": (0.0,)}


@pytest.mark.parametrize("types", [("binary", "binary"), ("regression", "binary")])
def test_rounds_and_config_are_the_best_on_validation_and_test_is_reported_apart(types):
    dataset = make_dataset(n=600, types=types)
    result = fit_gbdt(dataset, ["t0", "t1"], seeds=2, grid=SMALL, max_iter=60)
    for k, name in enumerate(["t0", "t1"]):
        task = dataset.schema.tasks[k]
        chosen = result[name]
        x, y, native = _labelled(dataset.train, k, dataset.schema.vocab_sizes)
        xv, yv, _ = _labelled(dataset.val, k, dataset.schema.vocab_sizes)
        candidates = []
        for lr in SMALL["learning_rate"]:
            params = {"learning_rate": lr, "max_leaf_nodes": 7, "l2_regularization": 0.0}
            candidates.append((*_best_round(_fit(task, params, x, y, native, 0, 60), task, xv, yv), lr))
        best = (max if task.type == "binary" else min)(candidates, key=lambda c: c[1])
        assert chosen["params"]["learning_rate"] == best[2] and chosen["params"]["max_iter"] == best[0]
        assert chosen["seeds"] == 2 and chosen["test_std"] >= 0 and np.isfinite(chosen["test_mean"])


def test_baselines_store_the_gbdt_and_pareto_reports_the_gain_against_it(tmp_path, capsys):
    space = tiny_space()
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    storage = str(tmp_path / "s.journal")
    assert main(["run", "--study", "g", "--space", str(tmp_path / "space.yaml"), "--trials", "2", "--storage", storage, "--quiet", "--threads", "1"]) == 0
    assert main(["baselines", "--study", "g", "--storage", storage, "--trials", "1", "--seeds", "1", "--threads", "1", "--no-gbdt"]) == 0
    study = optuna.load_study(study_name="g", storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage)))
    assert "gbdt" not in study.user_attrs  # --no-gbdt
    assert main(["baselines", "--study", "g", "--storage", storage, "--trials", "1", "--seeds", "2", "--threads", "1"]) == 0
    gbdt = optuna.load_study(study_name="g", storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))).user_attrs["gbdt"]
    assert set(gbdt) == {"y1", "y2"} and all(g["seeds"] == 2 and g["model"] == "HistGradientBoostingRegressor" for g in gbdt.values())
    assert "GBDT y1: test" in capsys.readouterr().err
    assert main(["pareto", "--study", "g", "--storage", storage, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for row in data["trials"]:
        assert row["gain_vs_gbdt"] == pytest.approx({t: gbdt[t]["test_mean"] - row["test"][t] for t in ("y1", "y2")})  # RMSE: trees - network
    assert data["beats_gbdt"] == sum(all(g >= 0 for g in r["gain_vs_gbdt"].values()) for r in data["trials"] if r["rank"] == 0)
    assert set(data["gbdt"]["y1"]) == {"test_mean", "test_std", "seeds", "model", "params"}
    assert main(["pareto", "--study", "g", "--storage", storage, "--format", "markdown"]) == 0
    text = capsys.readouterr().out
    assert "vs GBDT y1" in text and "Pareto trials beat GBDT on every task" in text
