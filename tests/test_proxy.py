"""Optuna's gRPC storage proxy: `ple-search storage-proxy` in front of SQLite and of PostgreSQL,
`--storage grpc://HOST:PORT` in the commands, and a proxy killed and restarted mid-run."""

import os
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from helpers import WORKER_SPACE, free_port, postgres_url
from ple_search.cli.main import main
from ple_search.study.storage import open_storage

pytest.importorskip("grpc")

SPACE = WORKER_SPACE


def start_proxy(storage: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "ple_search.cli.main", "storage-proxy", "--storage", storage, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"the proxy did not start: {proc.communicate()[0]}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> str:
    proc.send_signal(sig)
    return proc.communicate(timeout=30)[0]


def run_through_proxy(tmp_path, backend: str, study: str, kill_after: int | None = None) -> None:
    space = tmp_path / "space.yaml"
    raw = dict(SPACE)
    if kill_after is not None:  # trials of several seconds, so the outage lands mid-run
        raw = {**SPACE, "budget": {"max_epochs": 12, "patience": 12}, "dataset": {"name": "synthetic", "options": {"n": 6000, "d": 6}}}
    space.write_text(yaml.safe_dump(raw))
    port = free_port()
    proxy = start_proxy(backend, port)
    url = f"grpc://127.0.0.1:{port}"
    run = subprocess.Popen([sys.executable, "-m", "ple_search.cli.main", "run", "--study", study, "--space", str(space), "--trials", "5",
                            "--storage", url, "--quiet", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        if kill_after is not None:
            direct = open_storage(backend)
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                try:
                    done = [t for t in optuna.load_study(study_name=study, storage=direct).get_trials() if t.state.is_finished()]
                except KeyError:
                    done = []
                if len(done) >= kill_after:
                    break
                time.sleep(0.5)
            stop(proxy)  # a real outage: the proxy process is gone
            time.sleep(4)
            proxy = start_proxy(backend, port)
        output = run.communicate(timeout=300)[0]
    finally:
        run.kill()
        stop(proxy)
    assert run.returncode == 0, output
    if kill_after is not None:
        assert "unreachable" in output and "reachable again" in output
    trials = optuna.load_study(study_name=study, storage=open_storage(backend)).get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 5 and "RUNNING" not in states, states


@pytest.mark.slow
def test_a_study_runs_through_the_proxy_in_front_of_sqlite_and_survives_it_being_killed(tmp_path):
    run_through_proxy(tmp_path, f"sqlite:///{tmp_path / 'study.db'}", "px", kill_after=2)


@pytest.mark.slow
def test_a_study_runs_through_the_proxy_in_front_of_postgresql_and_survives_it_being_killed(tmp_path):
    url = postgres_url()
    study = f"px-{os.getpid()}-{int(time.time())}"
    port = free_port()
    proxy = start_proxy(url, port)
    try:
        assert main(["studies", "--storage", f"grpc://127.0.0.1:{port}"]) == 0
    finally:
        line = stop(proxy, signal.SIGINT)
    password = url.split(":")[2].split("@")[0]
    assert password not in line and "serving postgresql://ple:***@" in line
    run_through_proxy(tmp_path, url, study, kill_after=2)


def test_no_proxy_at_the_address_is_one_line_naming_the_command_that_starts_one(capsys):
    port = free_port()
    assert main(["studies", "--storage", f"grpc://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no gRPC storage proxy answers there" in err[0] and f"ple-search storage-proxy --storage URL --host 127.0.0.1 --port {port}" in err[0]


@pytest.mark.parametrize("argv, needle", [
    (["storage-proxy", "--storage", "grpc://127.0.0.1:1"], "the proxy serves a database or a journal file, not another proxy"),
    (["storage-proxy", "--storage", "sqlite:///x.db", "--port", "70000"], "argument --port: '70000' is not a port"),
    (["studies", "--storage", "grpc://nohost"], "expected grpc://HOST:PORT"),
])  # fmt: skip
def test_bad_proxy_input_is_one_line(argv, needle, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's refusals exit from the parser
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_a_port_in_use_is_one_line(tmp_path, capsys):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["storage-proxy", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--port {port}: cannot listen there" in err[0]


@pytest.mark.slow
def test_a_hung_worker_behind_the_proxy_has_its_trial_failed_by_heartbeat_and_retried(tmp_path):
    """A worker that stops (SIGSTOP: alive, so no process check can tell) stops sending heartbeats
    through the proxy; a second worker fails its trial after the grace period, retries it once and
    reaches the target."""
    backend = f"sqlite:///{tmp_path / 'study.db'}"
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**SPACE, "budget": {"max_epochs": 12, "patience": 12}, "dataset": {"name": "synthetic", "options": {"n": 6000, "d": 6}}}))
    port = free_port()
    proxy = start_proxy(backend, port)
    command = [sys.executable, "-m", "ple_search.cli.main", "run", "--study", "hb", "--space", str(space), "--trials", "3",
               "--storage", f"grpc://127.0.0.1:{port}", "--quiet", "--threads", "1", "--heartbeat-interval", "1", "--grace-period", "4"]  # fmt: skip
    hung = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        direct = open_storage(backend)
        deadline = time.monotonic() + 120
        while True:
            try:
                running = [t for t in optuna.load_study(study_name="hb", storage=direct).get_trials() if t.state.name == "RUNNING"]
            except KeyError:
                running = []
            if running:
                break
            assert time.monotonic() < deadline, "no trial started"
            time.sleep(0.2)
        hung.send_signal(signal.SIGSTOP)
        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr
    finally:
        hung.kill()
        hung.wait()
        stop(proxy)
    trials = optuna.load_study(study_name="hb", storage=open_storage(backend)).get_trials()
    stale = next(t for t in trials if t.number == running[0].number)
    assert stale.state.name == "FAIL"
    assert any(t.system_attrs.get("failed_trial") == stale.number or t.user_attrs.get("retry_of") == stale.number for t in trials)
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
