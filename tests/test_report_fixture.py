"""`pareto` on a stored study gives byte-identical output across refactors: the fixture journal
(tests/fixtures/study.journal: 6 finished and 6 MO-ASHA-pruned trials, single-task baselines and
a confirmed front) and every expected rendering were written by ple-search before the study
record and the Pareto math moved to their own modules."""

import shutil
from pathlib import Path

import pytest

from ple_search.cli.main import main

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("expected, fmt, extra", [
    ("pareto-json.json", "json", []), ("pareto-json-all.json", "json", ["--all"]),
    ("pareto-json-confirmed.json", "json", ["--confirmed"]), ("pareto-csv-all.csv", "csv", ["--all"]),
    ("pareto-markdown.md", "markdown", []), ("pareto-markdown-confirmed.md", "markdown", ["--confirmed"]),
])  # fmt: skip
def test_pareto_of_the_stored_study_is_byte_identical_to_the_recorded_output(tmp_path, capsys, expected, fmt, extra):
    journal = tmp_path / "study.journal"
    shutil.copy(FIXTURES / "study.journal", journal)
    assert main(["pareto", "--study", "fx", "--storage", str(journal), "--format", fmt, *extra]) == 0
    assert capsys.readouterr().out == (FIXTURES / expected).read_bytes().decode()  # bytes: the CSV ends lines in \r\n
