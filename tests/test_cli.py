"""End-to-end: `ple-search run`, `pareto` and `studies` on tiny synthetic studies."""

import json
import os
import signal
import subprocess
import sys

import optuna
import pytest
import yaml

from ple_search.study import trial as one_trial
from ple_search.cli.main import main

SPACE = {
    "dataset": {"name": "synthetic", "options": {"n": 2000, "d": 6, "p": 0.5}},
    "sampler": {"name": "random", "seed": 0},
    "budget": {"max_epochs": 2, "patience": 2},
    "params": {
        "lr": {"type": "float", "low": 0.005, "high": 0.05, "log": True},  # no two trials share a config
        "levels": {"type": "int", "low": 1, "high": 2},
        "experts_per_task": {"type": "int", "low": 0, "high": 2},
        "shared_experts": {"type": "int", "low": 1, "high": 2},
        "expert_hidden": {"type": "categorical", "choices": [[4], [8]]},
        "tower_hidden": {"type": "categorical", "choices": [[4]]},
        "batch_size": {"type": "categorical", "choices": [64]},
    },
}


@pytest.fixture
def space(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    return path


def run(tmp_path, space, *extra, trials=3):
    storage = f"sqlite:///{tmp_path}/s.db"
    return main(["run", "--study", "tiny", "--space", str(space), "--trials", str(trials), "--storage", storage, "--quiet", "--threads", "1", *extra]), storage


def states(storage, name="tiny"):
    study = optuna.load_study(study_name=name, storage=storage)
    return [t.state.name for t in study.get_trials()], study


def test_run_interrupt_resume_to_target_then_pareto_json_matches_storage(tmp_path, space, capsys, monkeypatch):
    real = one_trial.run_trial

    def interrupt_at_trial_2(trial, *args, **kwargs):
        if trial.number == 2:
            raise KeyboardInterrupt
        return real(trial, *args, **kwargs)

    monkeypatch.setattr(one_trial, "run_trial", interrupt_at_trial_2)
    rc, storage = run(tmp_path, space, trials=4)
    err = capsys.readouterr().err
    assert rc == 0 and "interrupted: 2/4 trials finished" in err and "resume with: ple-search run --study tiny" in err
    found, study = states(storage)
    assert found == ["COMPLETE", "COMPLETE", "FAIL"]
    assert study.trials[2].user_attrs["fail_reason"] == "interrupted"

    monkeypatch.setattr(one_trial, "run_trial", real)
    rc, _ = run(tmp_path, space, trials=4)
    assert rc == 0
    found, study = states(storage)
    assert found.count("COMPLETE") == 4 and "RUNNING" not in found
    rc, _ = run(tmp_path, space, trials=4)  # a rerun at the target adds nothing
    assert rc == 0 and states(storage)[0] == found

    capsys.readouterr()
    assert main(["pareto", "--study", "tiny", "--storage", storage, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sorted(r["number"] for r in data["trials"]) == sorted(t.number for t in study.best_trials)
    for row in data["trials"]:
        trial = study.trials[row["number"]]
        assert row["values"] == dict(zip(["y1", "y2"], trial.values)) and row["rank"] == 0
        assert set(row["test"]) == {"y1", "y2"} and row["n_params"] > 0 and row["architecture"]
    assert data["counts"]["complete"] == 4 and data["hypervolume"] > 0
    assert [o["direction"] for o in data["objectives"]] == ["minimize", "minimize"]
    meta = study.user_attrs["ple_search"]
    assert meta["schema"]["tasks"][0]["name"] == "y1" and meta["space"]["budget"]["max_epochs"] == 2
    assert study.trials[0].user_attrs["val_curve"] and study.trials[0].user_attrs["epochs_run"] == 2


def test_pareto_all_formats_plot_and_studies(tmp_path, space, capsys):
    rc, storage = run(tmp_path, space, trials=4)
    capsys.readouterr()
    assert main(["pareto", "--study", "tiny", "--storage", storage, "--all", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("trial,rank,val y1,val y2,test y1,test y2,architecture") and len(lines) == 5
    out_file = tmp_path / "front.md"
    plot_file = tmp_path / "front.png"
    assert main(["pareto", "--study", "tiny", "--storage", storage, "--format", "markdown", "--output", str(out_file), "--plot", str(plot_file)]) == 0
    assert out_file.read_text().count("\n| ") >= 1 and plot_file.stat().st_size > 1000
    assert main(["pareto", "--study", "tiny", "--storage", storage]) == 0
    assert "Pareto front" in capsys.readouterr().out
    assert main(["studies", "--storage", storage]) == 0
    assert "tiny" in capsys.readouterr().out


def test_live_display_and_a_failing_trial_does_not_stop_the_study(tmp_path, space, capsys):
    raw = yaml.safe_load(space.read_text())
    raw["fixed"] = {"loss_weighting": "gradnorm"}
    raw["params"]["shared_experts"] = {"type": "int", "low": 0, "high": 1}
    raw["params"]["experts_per_task"] = {"type": "int", "low": 1, "high": 2}
    raw["enqueue"] = [{"shared_experts": 0}]  # GradNorm needs a shared layer: this trial fails
    space.write_text(yaml.safe_dump(raw))
    storage = f"sqlite:///{tmp_path}/s.db"
    assert main(["run", "--study", "tiny", "--space", str(space), "--trials", "2", "--storage", storage]) == 0
    found, study = states(storage)
    assert found[0] == "FAIL" and "needs 'shared_experts' >= 1" in study.trials[0].user_attrs["fail_reason"]
    assert found.count("COMPLETE") == 2
    assert "2/2 finished" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["pareto", "--study", "ghost"], "no study named 'ghost'"),
    (["pareto", "--study", "x", "--storage", "not-a-url"], "storage 'not-a-url' is malformed"),
    (["studies", "--storage", "postgresql://alice:s3cret-pw@127.0.0.1:9/db"], "cannot open storage postgresql://alice:***@127.0.0.1:9/db"),
    (["run", "--study", "nospace", "--trials", "1"], "no search space for study 'nospace'"),
    (["run", "--study", "x", "--space", "missing.yaml", "--trials", "1"], "missing.yaml: search space file not found"),
])  # fmt: skip
def test_errors_are_one_line_without_traceback_or_password(tmp_path, argv, message, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert message in text and "Traceback" not in text and "s3cret-pw" not in text
    assert len(text.strip().splitlines()) == 1


def test_pareto_on_a_study_without_finished_trials(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="empty", storage=storage, directions=["maximize", "maximize"])
    study.set_user_attr("ple_search", {"objectives": ["a", "b"], "metrics": ["auc", "auc"], "reference_point": [0.5, 0.5], "schema": {"tasks": []}})
    assert main(["pareto", "--study", "empty", "--storage", storage]) == 2
    assert "has no finished trials yet" in capsys.readouterr().err


@pytest.mark.slow
def test_sigint_to_a_real_process_marks_running_trial_fail_and_rerun_completes(tmp_path, space):
    raw = yaml.safe_load(space.read_text())
    raw["budget"]["max_epochs"] = 30
    raw["budget"]["patience"] = 30
    raw["dataset"]["options"]["n"] = 4000
    space.write_text(yaml.safe_dump(raw))
    storage = f"sqlite:///{tmp_path}/s.db"
    cmd = [sys.executable, "-m", "ple_search.cli.main", "run", "--study", "tiny", "--space", str(space), "--trials", "3", "--storage", storage, "--quiet", "--threads", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stderr:
        if line.startswith("study tiny"):
            break
    import time

    deadline = time.monotonic() + 60
    while "RUNNING" not in states(storage)[0]:  # inside the first trial's 30 epochs
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, rest
    assert "resume with" in rest
    found, _ = states(storage)
    assert "RUNNING" not in found and "FAIL" in found
    raw["budget"]["max_epochs"] = 1
    space.write_text(yaml.safe_dump(raw))
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert states(storage)[0].count("COMPLETE") == 3
