"""Trials on several processes (``budget.trial_processes``, ``train.ranks``): shards, the same
model as one process trains, whole-split validation, one stored trial, and real faults (a rank
SIGKILLed, Ctrl-C, rank 0 killed)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from helpers import make_dataset, processes, tiny_space, user_table
from ple_search.cli.main import main
from ple_search.core.errors import ConfigError
from ple_search.data.batches import TensorBatches
from ple_search.data.dataset import Split
from ple_search.serve.exported import load_config
from ple_search.study.record import FAIL_REASON, RETRY_OF
from ple_search.study.space import parse_space
from ple_search.train.engine import TrialSettings, evaluate, train_config


def _split(n: int) -> Split:
    return Split(torch.arange(n, dtype=torch.int32)[:, None], torch.zeros(n, 1), torch.arange(n, dtype=torch.float32)[:, None])


def test_shuffled_shards_of_a_pass_are_equal_disjoint_and_the_permutation_between_them():
    split = _split(103)
    passes = [[torch.cat([y for _, _, y in TensorBatches(split, 8, shuffle=True, seed=3, rank=r, world=3)]) for r in range(3)]]
    shards = passes[0]
    assert [len(s) for s in shards] == [34, 34, 34]  # 103 // 3 rows each, one row dropped
    rows = torch.cat(shards).flatten().long()
    assert len(set(rows.tolist())) == 102
    single = torch.cat([y for _, _, y in TensorBatches(split, 24, shuffle=True, seed=3)]).flatten()
    interleaved = torch.stack([s.flatten() for s in shards], 1).flatten()  # rank r holds rows r, r+3, ... of the pass
    assert torch.equal(interleaved, single[:102])
    assert [len(TensorBatches(split, 8, shuffle=True, rank=r, world=3)) for r in range(3)] == [5, 5, 5]


def test_in_order_blocks_in_rank_order_are_the_split_then_padding():
    split = _split(10)
    blocks = [torch.cat([y for _, _, y in TensorBatches(split, 2, rank=r, world=4)]).flatten() for r in range(4)]
    assert [len(b) for b in blocks] == [3, 3, 3, 3]  # equal blocks: no rank waits for another in a collective
    assert torch.cat(blocks)[:10].tolist() == list(range(10))


def test_a_two_process_trial_trains_the_model_one_process_trains():
    data = make_dataset(1201, seed=1)  # 720 train rows, 241 validation rows (an odd split: padded blocks)
    results = []
    for world in (1, 2):
        settings = TrialSettings(list(data.schema.tasks), 2, 2, processes=world)
        module, recorder, _ = train_config({"batch_size": 64, "lr": 0.01}, data, settings, 0)
        results.append((recorder.curve, evaluate(module, data.test), evaluate(module, data.val), recorder.best_epoch))
    (one_curve, one_test, _, _), (two_curve, two_test, two_val, best) = results
    for a, b in zip(one_curve, two_curve):  # DDP averages two half batches: the one-process gradient
        assert a == pytest.approx(b, abs=2e-3)
    assert one_test == pytest.approx(two_test, abs=2e-3)
    # the best epoch's metrics are the whole validation split's, gathered from both ranks' blocks
    assert two_curve[best] == pytest.approx(two_val, abs=1e-9)


def test_budget_trial_processes_must_be_a_positive_integer():
    raw = tiny_space(budget={"max_epochs": 1, "patience": 1, "trial_processes": 0})
    with pytest.raises(ConfigError, match=r"budget.trial_processes.*integer >= 1"):
        parse_space(raw, "space.yaml")
    assert parse_space(tiny_space(budget={"max_epochs": 1, "patience": 1, "trial_processes": 2}), "s").budget["trial_processes"] == 2


def test_an_exported_config_keeps_trial_processes_and_refuses_a_bad_one(tmp_path):
    table = user_table(tmp_path)
    space = tiny_space(budget={"max_epochs": 1, "patience": 1, "trial_processes": 2}, dataset={"name": str(table)})
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    storage = str(tmp_path / "s.journal")
    assert main(["run", "--study", "p", "--space", str(tmp_path / "space.yaml"), "--trials", "1", "--storage", storage, "--quiet"]) == 0
    study = optuna.load_study(study_name="p", storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage)))
    assert [t.state.name for t in study.trials] == ["COMPLETE"]  # one trial stored, by rank 0 alone
    assert main(["export", "--study", "p", "--storage", storage, "--trial", "0", "--out", str(tmp_path / "best.yaml")]) == 0
    config = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert config["training"]["trial_processes"] == 2
    assert main(["train", "--config", str(tmp_path / "best.yaml"), "--seeds", "1", "--out", str(tmp_path / "model")]) == 0  # on two processes
    assert (tmp_path / "model" / "metrics.json").exists()
    config["training"]["trial_processes"] = "two"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"training.trial_processes = 'two' must be an integer >= 1"):
        load_config(tmp_path / "bad.yaml")


def test_more_processes_than_cores_is_one_line_before_any_study_exists(tmp_path, capsys):
    space = tiny_space(budget={"max_epochs": 1, "patience": 1, "trial_processes": (os.cpu_count() or 1) + 1})
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    storage = tmp_path / "s.journal"
    assert main(["run", "--study", "p", "--space", str(tmp_path / "space.yaml"), "--trials", "1", "--storage", str(storage)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "budget.trial_processes" in err[0] and "cores" in err[0], err
    assert not storage.exists()


def _gone(pid: int, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def _long_run(tmp_path, trials: int = 2):
    """A CLI run of two-process trials long enough (40 epochs) to be hit in the middle; returns
    the process, its storage and, once a trial trains, the pid of its rank 1."""
    space = tiny_space(
        40, budget={"max_epochs": 40, "patience": 40, "trial_processes": 2},
        dataset={"name": "synthetic", "options": {"n": 6000, "d": 5}}, fixed={"batch_size": 64},
    )  # fmt: skip
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    storage = f"sqlite:///{tmp_path}/s.db"
    command = [sys.executable, "-m", "ple_search.cli.main", "run", "--study", "k", "--space", str(tmp_path / "space.yaml"),
               "--trials", str(trials), "--storage", storage, "--quiet"]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while not (ranks := processes(b"ple_search.train.rank_process", parent=proc.pid)):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "no rank started"
        time.sleep(0.1)
    time.sleep(5)  # in the middle of its epochs
    return proc, storage, ranks[0]


def _trials(storage: str):
    return optuna.load_study(study_name="k", storage=storage).trials


@pytest.mark.slow
def test_a_killed_rank_fails_its_trial_and_its_config_runs_once_more(tmp_path):
    proc, storage, rank = _long_run(tmp_path)
    os.kill(rank, signal.SIGKILL)
    rest = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, rest
    trials = _trials(storage)
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].user_attrs[FAIL_REASON] == "rank 1 of 2 was killed by SIGKILL"
    retry = [t for t in trials if t.user_attrs.get(RETRY_OF) == failed[0].number]
    assert len(retry) == 1 and retry[0].params == failed[0].params and retry[0].state.name == "COMPLETE"
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 2  # exactly the target
    assert "rank 1 of 2 was killed by SIGKILL" in rest


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_and_fails_the_running_trial(tmp_path):
    proc, storage, rank = _long_run(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: every process of the group
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, rest
    assert "resume with" in rest
    assert _gone(rank)
    states = [(t.state.name, t.user_attrs.get(FAIL_REASON)) for t in _trials(storage)]
    assert ("FAIL", "interrupted") in states and not any(s == "RUNNING" for s, _ in states)


@pytest.mark.slow
def test_a_killed_rank_0_takes_its_ranks_with_it(tmp_path):
    proc, _, rank = _long_run(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert _gone(rank)


def test_a_dataset_without_a_cache_entry_is_written_once_and_a_new_one_gets_its_own():
    from ple_search.train.ranks import shared_entry

    first = make_dataset(200, seed=1)
    path = shared_entry(first)
    assert shared_entry(first) == path  # once per dataset
    other = first.select_tasks(["t1"])  # its own labels: never the first one's entry
    assert shared_entry(other) != path
    del first
    again = make_dataset(200, seed=2)  # may reuse the freed id: still a fresh entry
    assert shared_entry(again) != path
