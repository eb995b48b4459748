"""``run --ray``: workers placed by Ray on a real local cluster of two nodes (a head and a second
node on 127.0.0.1, one CPU each), a worker SIGKILLed and a node stopped mid-run, and the refusals."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from helpers import WORKER_SPACE, free_port, processes
from ple_search.cli.main import main
from ple_search.study.cluster import NODE_KEY, SLOT_KEY
from ple_search.study.storage import open_storage

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

SPACE = WORKER_SPACE


def ray_node(tmp_path, name: str, *args: str) -> subprocess.Popen:
    """A Ray node in the foreground (``--block``) in its own session, so the test stops it by its
    own process group and nothing else on the machine."""
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen(["ray", "start", "--block", "--num-cpus", "1", "--disable-usage-stats", *args],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def stop_node(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for_nodes(address: str, count: int) -> None:
    import ray

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            alive = [n for n in ray.nodes() if n["Alive"]]
            ray.shutdown()
            if len(alive) >= count:
                return
        except Exception:  # noqa: BLE001 - the head is still starting
            pass
        time.sleep(1)
    pytest.fail(f"the Ray cluster at {address} did not reach {count} nodes")


@pytest.fixture
def cluster(tmp_path):
    port = free_port()
    head = ray_node(tmp_path, "head", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--include-dashboard=false")
    address = f"127.0.0.1:{port}"
    nodes = {"head": head}
    try:
        time.sleep(3)
        nodes["second"] = ray_node(tmp_path, "second", "--address", address, "--node-ip-address", "127.0.0.1")
        wait_for_nodes(address, 2)
        yield address, nodes
    finally:
        for proc in reversed(list(nodes.values())):
            stop_node(proc)


def write_space(tmp_path, long: bool = False):
    raw = dict(SPACE)
    if long:  # trials of several seconds, so a fault lands mid-trial
        raw = {**SPACE, "budget": {"max_epochs": 30, "patience": 30}, "dataset": {"name": "synthetic", "options": {"n": 8000, "d": 6}}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "space.yaml"


def ray_run(tmp_path, address, study, trials, long=False):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    argv = [sys.executable, "-m", "ple_search.cli.main", "run", "--study", study, "--space", str(write_space(tmp_path, long)),
            "--trials", str(trials), "--storage", storage, "--ray", address, "--jobs", "2", "--quiet"]  # fmt: skip
    return storage, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def exactly(storage, study, target):
    loaded = optuna.load_study(study_name=study, storage=open_storage(storage))
    states = [t.state.name for t in loaded.get_trials()]
    assert states.count("COMPLETE") == target and "RUNNING" not in states, states
    return loaded


def running_trial(storage, study, deadline_s=180):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            loaded = optuna.load_study(study_name=study, storage=open_storage(storage))
            running = [t for t in loaded.get_trials() if t.state.name == "RUNNING" and "worker" in t.user_attrs]
            done = [t for t in loaded.get_trials() if t.state.is_finished()]
            if running and done:
                return loaded, running[0]
        except KeyError:
            pass
        time.sleep(0.5)
    pytest.fail("no trial started")


def test_a_study_reaches_exactly_n_with_workers_on_both_nodes(tmp_path, cluster):
    address, _ = cluster
    storage, proc = ray_run(tmp_path, address, "r1", 6)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    study = exactly(storage, "r1", 6)
    nodes = {study.user_attrs[NODE_KEY.format(i)] for i in range(2)}
    assert len(nodes) == 2  # one CPU per node, one CPU per worker: one worker on each
    assert "6/6 trials finished by 2 Ray workers" in output and "trial 5:" in output or "trial" in output
    assert "INFO" not in output  # no Ray banners


def test_a_sigkilled_worker_has_its_trial_retried_and_the_study_reaches_exactly_n(tmp_path, cluster):
    address, _ = cluster
    storage, proc = ray_run(tmp_path, address, "r2", 5, long=True)
    study, trial = running_trial(storage, "r2")
    pid = int(trial.user_attrs["worker"].rpartition(":")[2])
    os.kill(pid, signal.SIGKILL)
    output = proc.communicate(timeout=400)[0]
    assert proc.returncode == 0, output
    assert "died (" in output and "marked FAIL and retried once" in output
    final = exactly(storage, "r2", 5)
    killed = [t for t in final.get_trials() if t.user_attrs.get("worker") == trial.user_attrs["worker"]]
    failed = [t.number for t in killed if t.state.name == "FAIL"]  # the trial it was running when killed
    assert len(failed) == 1, output
    # retried once: by the driver, or (one machine here) by the other worker, which sees the pid gone
    assert any(t.user_attrs.get("retry_of") == failed[0] for t in final.get_trials())


def test_a_stopped_node_has_its_trial_retried_and_the_study_reaches_exactly_n(tmp_path, cluster):
    address, nodes = cluster
    storage, proc = ray_run(tmp_path, address, "r3", 5, long=True)
    study, _ = running_trial(storage, "r3")
    second = [i for i in range(2) if study.user_attrs.get(NODE_KEY.format(i))]
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    head_id = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("node:__internal_head__"))
    ray.shutdown()
    victims = [i for i in second if study.user_attrs[NODE_KEY.format(i)] != head_id]
    assert victims, "a worker runs on the second node"
    worker = study.user_attrs[SLOT_KEY.format(victims[0])]
    stop_node(nodes["second"])  # `ray stop` for that node alone: its own process group
    output = proc.communicate(timeout=400)[0]
    assert proc.returncode == 0, output
    assert f"worker {victims[0]} died (" in output
    final = exactly(storage, "r3", 5)
    assert all(t.state.name != "RUNNING" for t in final.get_trials() if t.user_attrs.get("worker") == worker)


def test_ctrl_c_on_the_driver_stops_every_worker_and_fails_their_trials(tmp_path, cluster):
    address, _ = cluster
    storage, proc = ray_run(tmp_path, address, "r4", 50, long=True)
    running_trial(storage, "r4")
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=200)[0]
    assert proc.returncode == 0 and "interrupted:" in output, output
    states = [t.state.name for t in optuna.load_study(study_name="r4", storage=open_storage(storage)).get_trials()]
    assert "RUNNING" not in states and "FAIL" in states


def test_ray_refuses_the_journal_file_in_one_line(tmp_path, capsys):
    assert main(["run", "--study", "j", "--space", str(write_space(tmp_path)), "--trials", "1", "--storage", str(tmp_path / "s.journal"),
                 "--ray", "127.0.0.1:1"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ray needs a storage every node reaches" in err[0]
    assert not (tmp_path / "s.journal").exists()


def test_an_unreachable_cluster_is_one_line_before_any_study_exists(tmp_path, capsys):
    assert main(["run", "--study", "u", "--space", str(write_space(tmp_path)), "--trials", "1", "--storage", f"sqlite:///{tmp_path / 'u.db'}",
                 "--ray", f"127.0.0.1:{free_port()}"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot join the Ray cluster" in err[0], err


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ple_search.cli.main", *argv], capture_output=True, text=True, timeout=400)


def test_confirm_on_ray_stores_what_confirm_here_stores(tmp_path, cluster):
    address, _ = cluster
    storage, proc = ray_run(tmp_path, address, "r5", 3)
    assert proc.wait(timeout=300) == 0
    confirmed = []
    for where in ([], ["--ray", address]):
        done = _cli("confirm", "--study", "r5", "--storage", storage, "--seeds", "2", "--threads", "1", *where)
        assert done.returncode == 0, done.stderr
        confirmed.append(optuna.load_study(study_name="r5", storage=open_storage(storage)).user_attrs["confirmed"]["trials"])
    assert "as " in done.stderr and "Ray tasks" in done.stderr
    here, there = confirmed
    assert set(here) == set(there) and here
    for number in here:  # seeded: the same numbers wherever each seed trained
        assert here[number]["val_mean"] == pytest.approx(there[number]["val_mean"], abs=1e-6)
        assert here[number]["test_mean"] == pytest.approx(there[number]["test_mean"], abs=1e-6)
        assert ("gates" in here[number]) == ("gates" in there[number])


def test_baselines_on_ray_search_on_the_workers_and_store_every_task(tmp_path, cluster):
    address, _ = cluster
    storage, proc = ray_run(tmp_path, address, "r6", 2)
    assert proc.wait(timeout=300) == 0
    done = _cli("baselines", "--study", "r6", "--storage", storage, "--trials", "3", "--seeds", "2", "--no-gbdt", "--ray", address, "--jobs", "2")
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="r6", storage=open_storage(storage))
    baselines = study.user_attrs["baselines"]
    assert set(baselines) == {"y1", "y2"} and all(b["seeds"] == 2 for b in baselines.values())
    for task, result in baselines.items():
        single = exactly(storage, result["study"], 3)
        slots = {single.user_attrs.get(SLOT_KEY.format(i)) for i in range(2)}
        assert {t.user_attrs["worker"] for t in single.get_trials()} <= slots  # trained by the Ray workers


def test_baselines_on_ray_refuse_the_journal_file_in_one_line(tmp_path, capsys):
    assert main(["baselines", "--study", "j", "--storage", str(tmp_path / "s.journal"), "--ray", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ray needs a storage every node reaches" in err[0]


def test_ray_workers_train_two_process_trials(tmp_path, cluster):
    address, _ = cluster
    raw = {**SPACE, "budget": {**SPACE["budget"], "trial_processes": 2}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    done = _cli("run", "--study", "r7", "--space", str(tmp_path / "space.yaml"), "--trials", "3", "--storage", storage, "--ray", address, "--jobs", "2", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "2 processes x 1 torch threads" in done.stderr
    exactly(storage, "r7", 3)


def test_each_ray_worker_sees_only_the_gpus_ray_gave_it(tmp_path):
    """Ray's GPU placement on a node that declares two (no CUDA here: the trials train on CPU, and
    each worker's CUDA_VISIBLE_DEVICES, stored with its trials, is what Ray assigned it)."""
    port = free_port()
    head = subprocess.Popen(
        ["ray", "start", "--block", "--head", "--port", str(port), "--num-cpus", "2", "--num-gpus", "2", "--node-ip-address", "127.0.0.1",
         "--include-dashboard=false", "--disable-usage-stats"],
        stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        address = f"127.0.0.1:{port}"
        wait_for_nodes(address, 1)
        storage = f"sqlite:///{tmp_path / 'study.db'}"
        done = _cli("run", "--study", "g", "--space", str(write_space(tmp_path, long=True)), "--trials", "4", "--storage", storage,
                    "--ray", address, "--jobs", "2", "--gpus-per-worker", "1", "--max-epochs", "3", "--quiet")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "1 GPUs each" in done.stderr
        study = exactly(storage, "g", 4)
        by_worker = {}
        for trial in study.get_trials():
            by_worker.setdefault(trial.user_attrs["worker"], set()).add(trial.user_attrs["device"])
        assert all(len(devices) == 1 for devices in by_worker.values())  # one GPU per worker, never another
        if len(by_worker) == 2:  # both workers ran trials: each on its own GPU
            assert set.union(*by_worker.values()) == {"0", "1"}
    finally:
        stop_node(head)


def _seed_task_pid(deadline_s: float = 120) -> int:
    """The pid of a Ray worker process running a seed task now (Ray titles it ``ray::_seed_entry``)."""
    deadline = time.monotonic() + deadline_s
    while not (found := processes(b"ray::_seed_entry")):
        assert time.monotonic() < deadline, "no seed task started"
        time.sleep(0.2)
    return found[0]


def test_a_confirm_seed_whose_ray_worker_is_killed_runs_again_and_gives_the_same_numbers(tmp_path, cluster):
    address, _ = cluster
    storage, proc = ray_run(tmp_path, address, "r8", 1, long=True)
    assert proc.wait(timeout=300) == 0
    argv = [sys.executable, "-m", "ple_search.cli.main", "confirm", "--study", "r8", "--storage", storage, "--seeds", "2", "--ray", address]
    confirm = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pid = _seed_task_pid()
    time.sleep(2)  # in the middle of its epochs
    os.kill(pid, signal.SIGKILL)
    output = confirm.communicate(timeout=400)[0]
    assert confirm.returncode == 0, output
    there = optuna.load_study(study_name="r8", storage=open_storage(storage)).user_attrs["confirmed"]["trials"]["0"]
    done = _cli("confirm", "--study", "r8", "--storage", storage, "--seeds", "2", "--threads", "1")
    assert done.returncode == 0, done.stderr
    here = optuna.load_study(study_name="r8", storage=open_storage(storage)).user_attrs["confirmed"]["trials"]["0"]
    assert here["val_mean"] == pytest.approx(there["val_mean"], abs=1e-6)
