"""Install anywhere: a regular (non-editable) install runs the shipped search spaces from any
directory, and a user's own ``search_spaces/NAME.yaml`` in the working directory still wins."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ple_search.study.space import find_space

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_regular_install_in_a_fresh_venv_runs_the_shipped_space_from_any_directory(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "results", "tests", "bench", "build", "*.egg-info", "__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"  # its pip and setuptools are the machine's (a venv's own setuptools may predate wheels)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    shutil.rmtree(source)  # nothing may be read from a source tree any more
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import ple_search; print(ple_search.__file__)"], cwd=elsewhere, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(venv)), where.stdout  # the installed copy, not an editable one

    run = subprocess.run(
        [str(venv / "bin" / "ple-search"), "run", "--study", "synthetic", "--trials", "1", "--max-epochs", "1",
         "--storage", "s.journal", "--quiet", "--threads", "1"],
        cwd=elsewhere, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "1/1 trials finished" in run.stderr and "site-packages/ple_search/search_spaces/synthetic.yaml" in run.stderr


def test_a_search_space_in_the_working_directory_wins_over_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = find_space("census")
    assert shipped is not None and shipped.name == "census.yaml" and shipped.is_file()
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "census.yaml").write_text("dataset: census\n")
    assert find_space("census") == tmp_path / "search_spaces" / "census.yaml"
    assert find_space("no-such-study") is None
