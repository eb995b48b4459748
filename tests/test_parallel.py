"""Scale-out and faults: workers on one machine, several processes on PostgreSQL, SIGKILL, SIGINT,
unreachable storages, and passwords kept out of every output."""

import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
import yaml
from sqlalchemy.exc import OperationalError

from helpers import postgres_url
from ple_search.cli.main import main
from ple_search.core.errors import StorageError
from ple_search.study.storage import open_storage, with_retry

SPACE = {
    "dataset": {"name": "synthetic", "options": {"n": 1500, "d": 6}},
    "sampler": {"name": "random", "seed": 0},
    "budget": {"max_epochs": 2, "patience": 2},
    "fixed": {"lr": 0.02, "batch_size": 64, "tower_hidden": [4]},
    "params": {
        "levels": {"type": "int", "low": 1, "high": 2},
        "expert_hidden": {"type": "categorical", "choices": [[4], [8]]},
        "dropout": {"type": "float", "low": 0.0, "high": 0.2},  # no two trials share a config
    },
}


@pytest.fixture
def space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return path


@pytest.fixture
def postgres():
    return postgres_url()


def command(space, storage, study, trials, *extra):
    return [sys.executable, "-m", "ple_search.cli.main", "run", "--study", study, "--space", str(space),
            "--trials", str(trials), "--storage", storage, "--quiet", "--threads", "1", *extra]  # fmt: skip


def check_exact(storage, study, target):
    trials = optuna.load_study(study_name=study, storage=open_storage(storage)).get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == target and "RUNNING" not in states, states
    assert len({t.number for t in trials}) == len(trials)
    return trials


def long_trials(space):
    """Make each trial last several seconds, so a signal lands mid-trial; returns the raw space."""
    raw = yaml.safe_load(space.read_text())
    raw["budget"] = {"max_epochs": 30, "patience": 30}
    raw["dataset"]["options"]["n"] = 8000
    space.write_text(yaml.safe_dump(raw))
    return raw


def children_of(pid):
    return [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]


def _leads_session(pid):
    try:
        return os.getsid(pid) == pid
    except ProcessLookupError:
        return False


def workers_of(pid, count, timeout=60):
    """The pids of ``count`` workers of parent ``pid``: the children of its children (the fork
    server's) that lead their own session (the process that prepares the run does not), and
    every process below ``pid``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        below = children_of(pid)
        workers = [w for c in below for w in children_of(c) if _leads_session(w)]
        if len(workers) >= count:
            return workers, below + workers
        time.sleep(0.2)
    raise AssertionError(f"process {pid} did not start {count} workers")


def wait_for_running(storage, study, pid, timeout=60):
    """The number of a RUNNING trial of process ``pid``, once it has trained an epoch or so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for t in optuna.load_study(study_name=study, storage=open_storage(storage)).get_trials(states=(optuna.trial.TrialState.RUNNING,)):
                if t.user_attrs.get("worker", "").endswith(f":{pid}"):
                    time.sleep(0.5)
                    return t.number
        except KeyError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"process {pid} never ran a trial")


@pytest.mark.slow
def test_jobs_2_on_the_default_journal_reach_exactly_the_target(tmp_path, space, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(space.read_text())
    raw["budget"] = {"max_epochs": 6, "patience": 6}  # trials of about a second: both workers get some
    raw["dataset"]["options"]["n"] = 5000
    space.write_text(yaml.safe_dump(raw))
    assert main(["run", "--study", "par", "--space", str(space), "--trials", "6", "--jobs", "2", "--quiet"]) == 0
    trials = check_exact("results/ple-search.journal", "par", 6)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials
    err = capsys.readouterr().err
    assert "[worker 0]" in err and "[worker 1]" in err and "6/6 trials finished by 2 workers" in err
    assert main(["studies"]) == 0 and "par" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.postgres
def test_two_processes_on_postgres_reach_exactly_the_target_and_hide_the_password(space, postgres):
    study = f"pg-{uuid.uuid4().hex[:8]}"
    procs = [subprocess.Popen(command(space, postgres, study, 6), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    check_exact(postgres, study, 6)
    password = postgres.split(":")[2].split("@")[0]
    assert all(password not in out for out in outputs) and "***" in outputs[0]
    meta = optuna.load_study(study_name=study, storage=open_storage(postgres)).user_attrs
    assert password not in yaml.safe_dump(meta)


@pytest.mark.slow
@pytest.mark.postgres
def test_sigkilled_worker_on_postgres_is_recovered_and_retried(space, postgres):
    long_trials(space)
    study = f"kill-{uuid.uuid4().hex[:8]}"
    extra = ("--heartbeat-interval", "1", "--grace-period", "3")
    victim = subprocess.Popen(command(space, postgres, study, 4, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = wait_for_running(postgres, study, victim.pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    survivor = subprocess.run(command(space, postgres, study, 4, *extra), capture_output=True, text=True, timeout=300)
    assert survivor.returncode == 0, survivor.stderr
    trials = check_exact(postgres, study, 4)
    assert trials[killed].state.name == "FAIL"
    retried = [t for t in trials if t.user_attrs.get("retry_of") == killed or t.system_attrs.get("failed_trial") == killed]
    assert retried and retried[0].state.name == "COMPLETE" and retried[0].params == trials[killed].params


@pytest.mark.slow
def test_sigkilled_worker_of_jobs_2_is_recovered_by_the_parent(tmp_path, space):
    long_trials(space)
    storage = str(tmp_path / "s.journal")
    parent = subprocess.Popen(command(space, storage, "jk", 4, "--jobs", "2"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = workers_of(parent.pid, 1)[0][0]
    killed = wait_for_running(storage, "jk", victim)
    os.kill(victim, signal.SIGKILL)
    _, err = parent.communicate(timeout=300)
    assert parent.returncode == 0, err
    assert f"(pid {victim}) died (SIGKILL)" in err
    trials = check_exact(storage, "jk", 4)
    assert trials[killed].state.name == "FAIL"
    assert any(t.user_attrs.get("retry_of") == killed and t.state.name == "COMPLETE" for t in trials)


@pytest.mark.slow
def test_a_sigkilled_jobs_parent_takes_its_workers_with_it_and_their_trials_fail(tmp_path, space):
    raw = long_trials(space)
    raw["budget"] = {"max_epochs": 300, "patience": 300}  # a trial outlasts the test's waits
    space.write_text(yaml.safe_dump(raw))
    storage = str(tmp_path / "s.journal")
    parent = subprocess.Popen(command(space, storage, "pk", 4, "--jobs", "2"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers, below = workers_of(parent.pid, 2)
    running = wait_for_running(storage, "pk", workers[0])
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in below):
        time.sleep(0.2)
    assert not [pid for pid in below if os.path.exists(f"/proc/{pid}")]  # fork server and workers gone
    trial = optuna.load_study(study_name="pk", storage=open_storage(storage)).trials[running]
    assert trial.state.name == "FAIL" and trial.user_attrs["fail_reason"] == "interrupted"


@pytest.mark.slow
def test_sigint_to_jobs_2_leaves_nothing_running_no_orphans_and_rerun_completes(tmp_path, space):
    raw = long_trials(space)
    storage = str(tmp_path / "s.journal")
    parent = subprocess.Popen(command(space, storage, "int", 4, "--jobs", "2"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers, children = workers_of(parent.pid, 2)
    wait_for_running(storage, "int", workers[0])
    parent.send_signal(signal.SIGINT)
    _, err = parent.communicate(timeout=120)
    assert parent.returncode == 0 and "resume with: ple-search run" in err, err
    time.sleep(0.5)
    assert not [pid for pid in children if os.path.exists(f"/proc/{pid}") and "zombie" not in open(f"/proc/{pid}/status").read().lower()]
    states = [t.state.name for t in optuna.load_study(study_name="int", storage=open_storage(storage)).get_trials()]
    assert "RUNNING" not in states and "FAIL" in states
    raw["budget"] = {"max_epochs": 1, "patience": 1}
    space.write_text(yaml.safe_dump(raw))
    assert subprocess.run(command(space, storage, "int", 4, "--jobs", "2"), capture_output=True).returncode == 0
    check_exact(storage, "int", 4)


def test_unreachable_storage_is_retried_with_backoff_then_a_clear_error(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("SELECT", {}, Exception("connection refused"))
        return "ok"

    assert with_retry(flaky, 60, "testing", "postgresql://u:pw@h/db") == "ok" and len(calls) == 3

    def down():
        raise OperationalError("SELECT", {}, Exception("could not connect to postgresql://u:pw@h/db"))

    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    with pytest.raises(StorageError, match="unreachable for 60s while testing") as info:
        with_retry(down, 60, "testing", "postgresql://u:pw@h/db")
    assert ":pw@" not in str(info.value) and "rerun the same command to resume" in str(info.value)


def test_unreachable_storage_at_start_is_one_clear_line(capsys, space):
    url = "postgresql://alice:hunter2pw@127.0.0.1:9/db"
    assert main(["run", "--study", "x", "--space", str(space), "--trials", "1", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot open storage postgresql://alice:***@127.0.0.1:9/db") and "hunter2pw" not in err


@pytest.fixture
def pg_cluster(postgres):
    """``VERSION NAME`` of the local cluster behind PLE_SEARCH_TEST_POSTGRES, to stop and start it."""
    cluster = os.environ.get("PLE_SEARCH_TEST_PG_CLUSTER")
    if not cluster:
        if os.environ.get("CI"):
            pytest.fail("CI must provide PLE_SEARCH_TEST_PG_CLUSTER (.ci/run sets it)")
        pytest.skip("set PLE_SEARCH_TEST_PG_CLUSTER='15 main' to let the test stop and restart the server")
    return cluster.split()


def _pg(cluster, action):
    subprocess.run(["pg_ctlcluster", *cluster, action, *(["-m", "fast"] if action == "stop" else [])], check=True, timeout=60)
    if action == "start":
        for _ in range(60):
            if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"]).returncode == 0:
                return
            time.sleep(0.5)
        raise AssertionError("PostgreSQL did not come back")


@pytest.mark.slow
@pytest.mark.postgres
def test_a_postgres_restart_mid_study_is_waited_out_and_no_finished_trial_is_lost(space, postgres, pg_cluster):
    raw = yaml.safe_load(space.read_text())
    raw["budget"] = {"max_epochs": 6, "patience": 6}
    raw["dataset"]["options"]["n"] = 6000
    space.write_text(yaml.safe_dump(raw))
    study = f"outage-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(command(space, postgres, study, 6, "--storage-retry", "120"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, "the run never finished two trials"
            try:
                done = {t.number: t.values for t in optuna.load_study(study_name=study, storage=postgres).get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
            except KeyError:
                done = {}
            if len(done) >= 2:
                break
            time.sleep(0.3)
        _pg(pg_cluster, "stop")  # a real outage: every connection is cut, new ones are refused
        time.sleep(8)
        assert proc.poll() is None, "the run gave up during the outage"
    finally:
        _pg(pg_cluster, "start")
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 0, err
    assert "unreachable" in err and "reachable again" in err and "Traceback" not in err
    trials = check_exact(postgres, study, 6)
    for number, values in done.items():
        assert trials[number].state.name == "COMPLETE" and trials[number].values == values


def test_workers_get_one_device_each_round_robin():
    from ple_search.study.parallel import worker_env

    assert [worker_env(i, ["0", "1"])["CUDA_VISIBLE_DEVICES"] for i in range(5)] == ["0", "1", "0", "1", "0"]
    assert worker_env(0, None).get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")


@pytest.mark.slow
def test_jobs_with_devices_run_each_worker_on_its_own_device(tmp_path, space, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(space.read_text())
    raw["budget"] = {"max_epochs": 6, "patience": 6}
    raw["dataset"]["options"]["n"] = 5000
    space.write_text(yaml.safe_dump(raw))
    storage = str(tmp_path / "d.journal")
    assert main(["run", "--study", "dev", "--space", str(space), "--trials", "6", "--jobs", "2", "--devices", "3,5", "--storage", storage, "--quiet"]) == 0
    trials = check_exact(storage, "dev", 6)
    by_worker = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs["worker"], set()).add(t.user_attrs["device"])
    assert sorted(map(sorted, by_worker.values())) == [["3"], ["5"]]  # one device per worker, both used


def test_bad_device_lists_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--study", "x", "--trials", "1", "--devices", "0,gpu1"])
    assert exit_info.value.code == 2 and "give GPU indices separated by commas" in capsys.readouterr().err


def _report_and_exit(args):
    """A worker entry for the test below: what the worker finds on arrival, then exit code 3."""
    import json

    print(json.dumps({
        "args": args, "engine_preloaded": "pytorch_lightning" in sys.modules, "mark": os.environ.get("PLE_SEARCH_TEST_MARK"),
        "device": os.environ.get("CUDA_VISIBLE_DEVICES"), "cwd": os.getcwd(), "own_session": os.getsid(0) == os.getpid(),
    }), file=sys.stderr)  # fmt: skip
    print("to stdout", flush=True)
    return 3


def test_workers_start_with_the_engine_imported_and_the_parents_env_folder_and_their_device(tmp_path, monkeypatch):
    import json

    from ple_search.study.parallel import Workers

    mark = uuid.uuid4().hex  # set after any fork server of this test session started
    monkeypatch.setenv("PLE_SEARCH_TEST_MARK", mark)
    monkeypatch.chdir(tmp_path)
    lines = []
    workers = Workers(_report_and_exit, [["a"], ["b"]], lambda i, line: lines.append((i, line)), devices=["4", "7"])
    workers.start()
    for proc in workers.procs:
        proc.join(60)
    time.sleep(0.5)  # the pumps read the last lines
    assert [p.exitcode for p in workers.procs] == [3, 3]
    seen = {i: json.loads(line) for i, line in lines}
    assert len(lines) == 2, lines  # stderr comes back line by line, stdout is discarded
    for i, device in ((0, "4"), (1, "7")):
        assert seen[i] == {"args": [["a"], ["b"]][i], "engine_preloaded": True, "mark": mark, "device": device, "cwd": str(tmp_path), "own_session": True}


def test_the_fork_servers_imports_never_touch_cuda_so_forked_workers_can_use_their_gpu():
    """CUDA does not survive a fork: had the preload initialised it, no worker could use a GPU."""
    probe = """
import importlib, json, torch
from ple_search.study.parallel import PRELOAD
calls = []
for name in ("is_available", "device_count", "init", "current_device", "get_device_properties", "set_device"):
    original = getattr(torch.cuda, name)
    setattr(torch.cuda, name, lambda *a, _name=name, _original=original, **k: (calls.append(_name), _original(*a, **k))[1])
for module in PRELOAD:
    importlib.import_module(module)
print(json.dumps({"calls": calls, "initialized": torch.cuda.is_initialized()}))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == '{"calls": [], "initialized": false}'


def _fail_one(request):
    """A worker entry for the test below: worker 1 fails with a message, worker 0 succeeds."""
    if request.worker == 1:
        print("error: the data file is gone", file=sys.stderr)
        return 2
    return 0


def test_a_worker_that_exits_with_an_error_is_counted_and_its_last_line_reaches_the_parent():
    from rich.console import Console

    from ple_search.study.parallel import run_workers
    from ple_search.study.run import RunRequest

    lines = []
    study = optuna.create_study(directions=["maximize", "maximize"])
    request = RunRequest("x", 2, jobs=2)
    errors, interrupted = run_workers(
        _fail_one, [request.for_worker(i, 1) for i in range(2)], study, console=Console(file=open(os.devnull, "w")),
        on_line=lambda i, line: lines.append((i, line)), tick=lambda: None,
    )  # fmt: skip
    assert (errors, interrupted) == (1, False)
    deadline = time.monotonic() + 5
    while not lines and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lines == [(1, "error: the data file is gone")]
