"""Faults and reruns lose nothing: torn journals, damaged and foreign storage files, reruns and
joining processes that would replay configs, resumes with another space or dataset, durable writes."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from ple_search.core import files
from ple_search.cli.main import main
from ple_search.study.storage import open_storage

SPACE = {
    "dataset": {"name": "synthetic", "options": {"n": 1200, "d": 6}},
    "sampler": {"name": "tpe", "seed": 0},
    "budget": {"max_epochs": 1, "patience": 1},
    "fixed": {"batch_size": 128, "tower_hidden": [4]},
    "params": {
        "levels": {"type": "int", "low": 1, "high": 2},
        "expert_hidden": {"type": "categorical", "choices": [[4], [8]]},
        "lr": {"type": "float", "low": 0.001, "high": 0.05, "log": True},
    },
}


@pytest.fixture
def space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return path


def run(space, storage, trials, *extra):
    return main(["run", "--study", "s", "--space", str(space), "--trials", str(trials), "--storage", str(storage), "--quiet", "--threads", "1", *extra])


def trials_of(storage, name="s"):
    return optuna.load_study(study_name=name, storage=open_storage(str(storage))).get_trials()


def cli(*argv):
    """``ple-search ARGV`` in its own process (a crashed run's process is gone, as here)."""
    return subprocess.run([sys.executable, "-m", "ple_search.cli.main", *map(str, argv)], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_torn_final_journal_record_is_set_aside_and_the_study_goes_on(tmp_path, space):
    journal = tmp_path / "study.journal"
    common = ("--study", "s", "--space", space, "--storage", journal, "--quiet", "--threads", "1")
    assert cli("run", "--trials", 2, *common).returncode == 0
    data = journal.read_bytes()
    journal.write_bytes(data[: len(data) - 25])  # what a crash in the middle of a write leaves

    done = cli("run", "--trials", 4, *common)
    assert done.returncode == 0, done.stderr
    sides = list(tmp_path.glob("study.journal.torn-*"))
    assert len(sides) == 1 and sides[0].read_bytes() == data[data.rfind(b"\n", 0, len(data) - 1) + 1 : len(data) - 25]
    assert "set aside a torn final record (" in done.stderr and str(sides[0]) in done.stderr
    states = [t.state.name for t in trials_of(journal)]
    assert states.count("COMPLETE") == 4 and "RUNNING" not in states  # the torn trial was failed and rerun
    for argv in (["pareto", "--study", "s", "--storage", journal], ["studies", "--storage", journal]):
        shown = cli(*argv)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr


def test_a_damaged_record_inside_the_journal_is_one_error_naming_file_and_line(tmp_path, space, capsys):
    journal = tmp_path / "study.journal"
    assert run(space, journal, 1) == 0
    lines = journal.read_bytes().split(b"\n")
    lines[2] = lines[2][:30]
    journal.write_bytes(b"\n".join(lines))
    capsys.readouterr()
    assert main(["studies", "--storage", str(journal)]) == 2
    err = capsys.readouterr().err
    assert f"{journal}: line 3 is not a journal record" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content", [b"hello world\nsecond line\n", b"SQLite format 3\x00\x10\x00binary", b"[1, 2, 3]\n"])
def test_a_file_that_is_not_a_journal_is_refused_and_left_untouched(tmp_path, content, capsys):
    path = tmp_path / "notes.journal"
    path.write_bytes(content)
    assert main(["studies", "--storage", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not an Optuna journal file" in err and len(err.strip().splitlines()) == 1
    assert path.read_bytes() == content and not list(tmp_path.glob("*.torn-*"))


def test_a_rerun_to_a_higher_target_proposes_new_configs(tmp_path, space):
    storage = tmp_path / "s.journal"
    assert run(space, storage, 3) == 0
    assert run(space, storage, 6) == 0
    params = [t.params for t in trials_of(storage)]
    assert len(params) == 6
    assert all(new not in params[:3] for new in params[3:])


def test_a_fresh_study_repeats_exactly_for_a_seed(tmp_path, space):
    assert run(space, tmp_path / "a.journal", 3) == 0
    assert run(space, tmp_path / "b.journal", 3) == 0
    assert [t.params for t in trials_of(tmp_path / "a.journal")] == [t.params for t in trials_of(tmp_path / "b.journal")]


@pytest.mark.slow
def test_two_processes_joining_one_study_with_one_seed_propose_different_configs(tmp_path, space):
    raw = yaml.safe_load(space.read_text())
    raw["budget"] = {"max_epochs": 40, "patience": 40}  # trials of several seconds: both processes run some
    raw["dataset"]["options"]["n"] = 6000
    space.write_text(yaml.safe_dump(raw))
    storage = f"sqlite:///{tmp_path}/s.db"
    command = [sys.executable, "-m", "ple_search.cli.main", "run", "--study", "s", "--space", str(space),
               "--trials", "6", "--storage", storage, "--quiet", "--threads", "1"]  # fmt: skip
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not [t for t in _trials_or_none(storage) if t.state.name == "COMPLETE"]:
        assert time.monotonic() < deadline and first.poll() is None, "the first process finished no trial"
        time.sleep(0.2)
    second = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # same seed, joins
    outputs = [p.communicate(timeout=300)[1] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    trials = [t for t in trials_of(storage) if t.state.name == "COMPLETE"]
    assert len(trials) == 6 and len({t.user_attrs["worker"] for t in trials}) == 2
    params = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(set(params)) == len(params)


def _trials_or_none(storage):
    try:
        return trials_of(storage)
    except KeyError:  # not created yet
        return []


def test_a_config_already_complete_is_not_trained_again(tmp_path, space):
    storage = tmp_path / "s.journal"
    assert run(space, storage, 2) == 0
    study = optuna.load_study(study_name="s", storage=open_storage(str(storage)))
    study.enqueue_trial(study.trials[0].params)  # the sampler proposes a config it already has
    assert run(space, storage, 3) == 0
    first, again = trials_of(storage)[0], trials_of(storage)[2]
    assert again.params == first.params and again.user_attrs["duplicate_of"] == 0
    assert again.values == first.values and again.user_attrs["train_seconds"] == 0.0
    assert again.user_attrs["test"] == first.user_attrs["test"]


def test_resuming_with_another_dataset_is_refused(tmp_path, space, capsys):
    storage = tmp_path / "s.journal"
    assert run(space, storage, 1) == 0
    raw = yaml.safe_load(space.read_text())
    raw["dataset"]["options"]["p"] = 0.9
    space.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert run(space, storage, 2) == 2
    err = capsys.readouterr().err
    assert "study 's' was created on dataset" in err and "'p': 0.9" in err and len(err.strip().splitlines()) == 1
    assert len(trials_of(storage)) == 1


def test_resuming_with_changed_params_is_refused_then_allowed_with_the_changes_named(tmp_path, space, capsys):
    storage = tmp_path / "s.journal"
    assert run(space, storage, 1) == 0
    raw = yaml.safe_load(space.read_text())
    raw["params"]["levels"]["high"] = 3
    raw["params"]["dropout"] = {"type": "float", "low": 0.0, "high": 0.3}
    space.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert run(space, storage, 2) == 2
    err = capsys.readouterr().err
    assert "searched with another space (params.dropout added" in err and "params.levels" in err and "--allow-space-change" in err
    assert len(trials_of(storage)) == 1

    assert run(space, storage, 2, "--allow-space-change") == 0
    err = capsys.readouterr().err
    assert "continuing with a changed space: params.dropout added" in err
    meta = optuna.load_study(study_name="s", storage=open_storage(str(storage))).user_attrs["ple_search"]
    assert meta["space"]["params"]["levels"]["high"] == 3 and len(meta["space_changes"]) == 1
    assert run(space, storage, 3) == 0  # the stored space is now this one


def test_atomic_writes_fsync_the_file_and_its_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    target = tmp_path / "out" / "report.md"
    files.atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert any(Path(p).name.startswith(".report.md.") for p in synced)  # the data before the rename
    assert synced[-1] == str(target.parent)  # the rename itself


def test_atomic_writes_get_a_normal_files_mode(tmp_path):
    files.atomic_write_text(tmp_path / "report.md", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o666 & ~mask


def test_writing_over_a_folder_is_refused_before_anything_is_written(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(Exception, match="is a folder; name a file to write"):
        files.atomic_write_text(folder, "x")
    assert list(folder.iterdir()) == []
