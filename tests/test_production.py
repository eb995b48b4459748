"""From the front to production: export (each pick), train on seeds, load, predict, TorchScript."""

import json

import ple_search

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from helpers import user_table
from ple_search.cli.main import main
from ple_search.evaluate.export import Pick
from ple_search.serve.exported import load_config
from ple_search.serve.production import load_engine, predict
from ple_search.serve.engines import onnx_available


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prod")
    spec = user_table(folder)
    space = {
        "dataset": {"name": str(spec)},
        "sampler": {"name": "random", "seed": 1},
        "budget": {"max_epochs": 3, "patience": 2},
        "fixed": {"lr": 0.02, "batch_size": 64, "expert_hidden": [8], "tower_hidden": [4]},
        "params": {"levels": {"type": "int", "low": 1, "high": 2}, "experts_per_task": {"type": "int", "low": 0, "high": 2},
                   "shared_experts": {"type": "int", "low": 1, "high": 2}},
    }  # fmt: skip
    (folder / "space.yaml").write_text(yaml.safe_dump(space))
    storage = f"sqlite:///{folder}/s.db"
    assert main(["run", "--study", "shop", "--space", str(folder / "space.yaml"), "--trials", "5", "--storage", storage, "--quiet", "--threads", "1"]) == 0
    return folder, storage


def export(study, tmp_path, *how):
    folder, storage = study
    out = tmp_path / "best.yaml"
    assert main(["export", "--study", "shop", "--storage", storage, *how, "--out", str(out)]) == 0
    return load_config(out), optuna.load_study(study_name="shop", storage=storage)


def test_export_each_pick_mode(study, tmp_path, capsys):
    config, s = export(study, tmp_path, "--trial", "2")
    assert config["provenance"]["trial"] == 2 and config["hparams"] == s.trials[2].user_attrs["hparams"]
    assert config["training"]["max_epochs"] == s.trials[2].user_attrs["best_epoch"]
    assert config["schema"]["tasks"][0]["name"] == "click" and config["dataset"]["name"].endswith("events.yaml")
    pick = Pick(s)
    front = {t.number: t for t in pick.front}
    config, _ = export(study, tmp_path, "--pick", "best:buy")
    assert config["provenance"]["trial"] == max(front.values(), key=lambda t: t.values[1]).number
    config, _ = export(study, tmp_path, "--pick", "weights:click=1,buy=0")
    assert config["provenance"]["trial"] == max(front.values(), key=lambda t: t.values[0]).number
    config, _ = export(study, tmp_path, "--pick", "knee")
    assert config["provenance"]["trial"] in front
    assert "chose trial" in capsys.readouterr().err


def test_fusion_and_knee_arithmetic_on_a_known_front():
    study = optuna.create_study(directions=["maximize", "maximize"])
    study.set_user_attr("ple_search", {"objectives": ["a", "b"], "reference_point": [0.5, 0.5]})
    for values in ([0.9, 0.6], [0.7, 0.9], [0.85, 0.85]):
        study.add_trial(optuna.trial.create_trial(values=values, user_attrs={"hparams": {}}))
    pick = Pick(study)
    # P = (v - 0.5) / (best - 0.5): trial 2 has (0.875, 0.875), trial 0 (1, 0.25), trial 1 (0.5, 1)
    np.testing.assert_allclose(pick.fusion_scores({"a": 0.5, "b": 0.5}), [0.5, np.sqrt(0.5), 0.875])
    assert pick.choose(pick="weights:a=0.5,b=0.5")[0].number == 2
    assert pick.choose(pick="weights:a=1")[0].number == 0
    assert pick.choose(pick="knee")[0].number == 2
    with pytest.raises(ValueError, match="unknown task 'c'"):
        pick.choose(pick="weights:c=1")


def test_export_errors_one_and_zero_finished_trials(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="one", storage=storage, directions=["maximize", "maximize"])
    study.set_user_attr("ple_search", {"objectives": ["a", "b"], "reference_point": [0.5, 0.5]})
    assert main(["export", "--study", "one", "--storage", storage, "--pick", "knee"]) == 2
    assert "no finished trials to export" in capsys.readouterr().err
    study.add_trial(optuna.trial.create_trial(values=[0.8, 0.7], user_attrs={"hparams": {}}))
    for how in ("knee", "best:b", "weights:a=1,b=1"):
        assert Pick(study).choose(pick=how)[0].number == 0
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    assert main(["export", "--study", "one", "--storage", storage, "--trial", "1"]) == 2
    assert "trial 1 is FAIL" in capsys.readouterr().err


def test_config_yaml_round_trip_and_validation(study, tmp_path, capsys):
    config, _ = export(study, tmp_path, "--trial", "0")
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(config))
    assert load_config(again) == config
    config["hparams"]["levels"] = 0
    again.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(again)]) == 2
    assert "'levels' = 0 is invalid" in capsys.readouterr().err


@pytest.mark.slow
def test_train_load_predict_torchscript_and_reproducibility(study, tmp_path, capsys):
    folder, _ = study
    config_path = tmp_path / "best.yaml"
    export(study, tmp_path, "--pick", "knee")
    runs = []
    for name in ("a", "b"):
        assert main(["train", "--config", str(config_path), "--seeds", "2", "--out", str(tmp_path / name), "--accelerator", "cpu"]) == 0
        runs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert runs[0]["runs"] == {k: {**v, "train_seconds": runs[0]["runs"][k]["train_seconds"]} for k, v in runs[1]["runs"].items()}
    assert set(runs[0]["mean"]["test"]) == {"click", "buy"} and "+-" in capsys.readouterr().err
    out = tmp_path / "a"
    serving = {"model.onnx"} if onnx_available() else set()
    assert {p.name for p in out.iterdir()} == {"seed-0", "seed-1", "metrics.json", "config.yaml", "preprocessor.json", "model.pt", "gates.json", "gates.png", *serving}

    module, preprocessor = ple_search.load_trained(out)
    assert ple_search.build_module(ple_search.load_config(out / "config.yaml")).schema == module.schema
    raw = pd.read_csv(folder / "events.csv", dtype=str, keep_default_na=False)
    test_rows = raw[raw.split == "test"]
    probs = predict(module, preprocessor, test_rows)
    labels = (test_rows.click == "yes").astype(int)
    best = runs[0]["runs"][str(runs[0]["best_seed"])]
    assert abs(roc_auc_score(labels, probs["click"]) - best["test"]["click"]) < 1e-6  # same as the trained module

    cat, num = preprocessor.transform(test_rows)
    scripted = torch.jit.load(str(out / "model.pt"))
    with torch.no_grad():
        eager = module.predict_outputs(torch.from_numpy(cat), torch.from_numpy(num))
        torch.testing.assert_close(scripted(torch.from_numpy(cat), torch.from_numpy(num)), eager)

    new_rows = test_rows.head(5).copy()
    new_rows["country"] = ["zz", "de", "??", "fr", "new"]  # unseen categories map to "other"
    csv = tmp_path / "new.csv"
    new_rows.drop(columns=["click", "buy", "split"]).to_csv(csv, index=False)
    assert main(["predict", "--model", str(out), "--input", str(csv), "--output", str(tmp_path / "p.csv"), "--weights", "click=0.7,buy=0.3"]) == 0
    scored = pd.read_csv(tmp_path / "p.csv")
    assert list(scored.columns) == ["click", "buy", "score"] and scored[["click", "buy"]].stack().between(0, 1).all()
    np.testing.assert_allclose(scored.score, scored.click**0.7 * scored.buy**0.3, rtol=1e-5)

    new_rows.drop(columns=["age"]).to_csv(csv, index=False)
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "--input", str(csv)]) == 2
    assert "required column 'age' is missing" in capsys.readouterr().err

    checkpoint = out / runs[0]["checkpoint"]
    state = torch.load(checkpoint, weights_only=True)
    state["ple_search_version"] = "0.0.1"
    torch.save(state, checkpoint)
    assert main(["predict", "--model", str(out), "--input", str(csv)]) == 2
    assert "checkpoint written by ple-search 0.0.1" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not onnx_available(), reason="the serve extra (onnx, onnxruntime) is not installed; CI installs it")
def test_every_predict_engine_gives_the_eager_outputs(study, tmp_path, capsys):
    folder, _ = study
    export(study, tmp_path, "--pick", "knee")
    out = tmp_path / "model"
    assert main(["train", "--config", str(tmp_path / "best.yaml"), "--seeds", "1", "--out", str(out)]) == 0
    module, preprocessor = ple_search.load_trained(out)
    raw = pd.read_csv(folder / "events.csv", dtype=str, keep_default_na=False)
    rows = raw[raw.split == "test"].drop(columns=["click", "buy", "split"])
    eager = predict(module, preprocessor, rows)
    for engine in ("torchscript", "onnx"):
        for batch in (rows, rows.head(1)):  # the test split, and a batch of one (dynamic batch axis)
            served = predict(module, preprocessor, batch, run=load_engine(out, engine, module))
            np.testing.assert_allclose(served.to_numpy(), eager.loc[batch.index].to_numpy(), atol=1e-5, rtol=0)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "--input", str(tmp_path / "rows.csv"), "--engine", "onnx"]) == 0
    printed = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    np.testing.assert_allclose(printed.to_numpy(), eager.to_numpy(), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_a_numeric_encoding_predicts_raw_rows_exactly_as_trained(study, tmp_path):
    folder, _ = study
    export(study, tmp_path, "--pick", "knee")
    config = yaml.safe_load((tmp_path / "best.yaml").read_text())
    config["hparams"].update(numeric_encoding="piecewise", numeric_bins=8)
    (tmp_path / "piecewise.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "model"
    assert main(["train", "--config", str(tmp_path / "piecewise.yaml"), "--seeds", "1", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    module, preprocessor = ple_search.load_trained(out)
    assert module.encoder.numeric is not None and module.schema.numeric_quantiles  # edges travel with the model
    raw = pd.read_csv(folder / "events.csv", dtype=str, keep_default_na=False)
    rows = raw[raw.split == "test"]
    probs = predict(module, preprocessor, rows, run=load_engine(out, "torchscript", module))
    assert abs(roc_auc_score((rows.click == "yes").astype(int), probs["click"]) - metrics["runs"]["0"]["test"]["click"]) < 1e-6


def test_a_hashed_id_column_predicts_raw_rows_exactly_as_trained(study, tmp_path):
    folder, _ = study
    export(study, tmp_path, "--pick", "knee")
    spec = folder / "events-hashed.yaml"
    spec.write_text((folder / "events.yaml").read_text() + "hash_buckets: {country: 3}\n")
    config = yaml.safe_load((tmp_path / "best.yaml").read_text())
    config["dataset"] = {"name": str(spec)}
    (tmp_path / "hashed.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "model"
    assert main(["train", "--config", str(tmp_path / "hashed.yaml"), "--seeds", "1", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    module, preprocessor = ple_search.load_trained(out)
    assert preprocessor.hash_buckets == {"country": 3} and module.schema.vocab_sizes == (4,)
    raw = pd.read_csv(folder / "events.csv", dtype=str, keep_default_na=False)
    rows = raw[raw.split == "test"]
    probs = predict(module, preprocessor, rows)
    assert abs(roc_auc_score((rows.click == "yes").astype(int), probs["click"]) - metrics["runs"]["0"]["test"]["click"]) < 1e-6
