"""UCI Census-Income (KDD), the public benchmark of the MMoE and PLE papers.

Tasks: ``income`` (``50000+.``), ``marital`` (``Never married``) and ``education`` (bachelor's or
higher). Marital status, education, the income label and the survey ``instance_weight`` are never
features, whichever tasks are selected, so single- and multi-task models see the same inputs.
Split: with both files, train = ``census-income.data`` and the test file is halved into
validation and test (fixed seed); with one file only, a stratified 70/15/15 split of it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from ple_search.data import cache
from ple_search.data.dataset import Dataset, from_frames
from ple_search.data.schema import Task
from ple_search.core.errors import DataError

COLUMNS = [
    "age", "class_of_worker", "industry_code", "occupation_code", "education", "wage_per_hour",
    "enrolled_in_edu_last_wk", "marital_status", "major_industry", "major_occupation", "race",
    "hispanic_origin", "sex", "labor_union", "unemployment_reason", "employment_status",
    "capital_gains", "capital_losses", "dividends", "tax_filer_status", "previous_region",
    "previous_state", "household_family_status", "household_summary", "instance_weight",
    "migration_msa", "migration_region", "migration_within_region", "same_house_1yr",
    "migration_sunbelt", "employer_size", "parents_present", "father_birth_country",
    "mother_birth_country", "birth_country", "citizenship", "self_employed", "veterans_questionnaire",
    "veterans_benefits", "weeks_worked", "year", "income",
]  # fmt: skip
NUMERIC = ["age", "wage_per_hour", "capital_gains", "capital_losses", "dividends", "employer_size", "weeks_worked"]
LOG1P = ["wage_per_hour", "capital_gains", "capital_losses", "dividends"]
NEVER_FEATURES = {"education", "marital_status", "income", "instance_weight"}
CATEGORICAL = [c for c in COLUMNS if c not in NEVER_FEATURES and c not in NUMERIC]
BACHELOR_OR_HIGHER = {
    "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
}
TASKS = {
    "income": lambda f: f["income"] == "50000+.",
    "marital": lambda f: f["marital_status"] == "Never married",
    "education": lambda f: f["education"].isin(BACHELOR_OR_HIGHER),
}
TRAIN_FILE, TEST_FILE = "census-income.data", "census-income.test"
URL = "https://archive.ics.uci.edu/static/public/117/census+income+kdd.zip"
EXPECTED_ROWS = {TRAIN_FILE: 199_523, TEST_FILE: 99_762}
TEST_MD5 = {True: "a8c39dce642efb4d17f28ebe74a3c271", False: "b82952d217858365c8e597827e3e5468"}  # by: gzipped?
SEED = 2020


def default_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    """Where the files are looked for: ``data_dir`` if given, else ``$PLE_SEARCH_DATA/census``
    and the user cache dir ``~/.cache/ple-search/census``."""
    if data_dir is not None:
        return [Path(data_dir)]
    dirs = []
    if os.environ.get("PLE_SEARCH_DATA"):
        dirs.append(Path(os.environ["PLE_SEARCH_DATA"]) / "census")
    dirs.append(Path.home() / ".cache" / "ple-search" / "census")
    return dirs


def find_files(directory: Path) -> dict[str, Path]:
    """``{TRAIN_FILE: path, TEST_FILE: path}`` for whichever exist, plain or ``.gz``."""
    found = {}
    for name in (TRAIN_FILE, TEST_FILE):
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                found[name] = candidate
                break
    return found


def read_raw(path: Path) -> pd.DataFrame:
    """One census file as strings. ``NA`` and ``?`` are categories, so NA parsing is off."""
    try:
        frame = pd.read_csv(
            path, header=None, sep=",", skipinitialspace=True, dtype=str,
            keep_default_na=False, na_filter=False, compression="infer",
        )  # fmt: skip
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read census file {path}: {exc}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"census file {path} is empty") from None
    if frame.shape[1] != len(COLUMNS):
        raise DataError(f"census file {path} has {frame.shape[1]} columns, expected {len(COLUMNS)} (UCI census-income KDD format)")
    frame.columns = COLUMNS
    return frame


def _labels(frame: pd.DataFrame, tasks: Sequence[str]) -> np.ndarray:
    return np.stack([TASKS[t](frame).to_numpy(dtype=np.float32) for t in tasks], axis=1)


def _split_frames(files: dict[str, Path], tasks: Sequence[str]) -> tuple[dict[str, pd.DataFrame], str]:
    if len(files) == 2:
        test = read_raw(files[TEST_FILE])
        val_idx, test_idx = train_test_split(np.arange(len(test)), test_size=0.5, random_state=SEED)
        frames = {"train": read_raw(files[TRAIN_FILE]), "val": test.iloc[val_idx], "test": test.iloc[test_idx]}
        return frames, f"official: train = {TRAIN_FILE}, {TEST_FILE} halved into val/test (seed {SEED})"
    (name, path), = files.items()
    frame = read_raw(path)
    strata = _labels(frame, tasks) @ (2 ** np.arange(len(tasks)))
    train_idx, rest = train_test_split(np.arange(len(frame)), test_size=0.3, random_state=SEED, stratify=strata)
    val_idx, test_idx = train_test_split(rest, test_size=0.5, random_state=SEED, stratify=strata[rest])
    frames = {"train": frame.iloc[train_idx], "val": frame.iloc[val_idx], "test": frame.iloc[test_idx]}
    return frames, f"single-file fallback: stratified 70/15/15 split of {name} (seed {SEED})"


def load_census(
    tasks: Sequence[str] = ("income", "marital"),
    *,
    data_dir: str | os.PathLike | None = None,
    min_count: int = 1,
    download: bool = True,
    use_cache: bool = True,
) -> Dataset:
    """Load the census benchmark with the given tasks (any of income, marital, education)."""
    tasks = list(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise DataError(f"census: unknown task {unknown[0] if unknown else '(none given)'!r}; available: {list(TASKS)}")
    dirs = default_dirs(data_dir)
    files: dict[str, Path] = {}
    for directory in dirs:
        files = find_files(directory)
        if files:
            break
    if not files:
        if not download:
            raise DataError(_missing_message(dirs[-1]))
        files = fetch(dirs[-1])
    settings = {"tasks": tasks, "min_count": min_count}

    def build() -> Dataset:
        frames, split = _split_frames(files, tasks)
        labels = {name: _labels(f, tasks) for name, f in frames.items()}
        info = {"source": "census", "options": {"tasks": tasks, "data_dir": str(files[next(iter(files))].parent)}, "split": split}
        return from_frames(
            frames, labels, CATEGORICAL, NUMERIC, tasks=[Task(t, "binary") for t in tasks],
            log1p=LOG1P, min_count=min_count, info=info, where=f"census ({', '.join(str(p) for p in files.values())})",
        )  # fmt: skip

    return cache.cached("census", sorted(files.values()), settings, build, use_cache=use_cache)


def _missing_message(directory: Path) -> str:
    return (
        f"census: files not found; put {TRAIN_FILE} and {TEST_FILE} (plain or .gz, from {URL}) "
        f"into {directory}, or pass --data-dir DIR"
    )


def fetch(directory: Path, url: str = URL) -> dict[str, Path]:
    """Download the UCI archive, verify both files, and move them into ``directory`` atomically."""
    from rich.progress import Progress

    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        archive = Path(tmp) / "census.zip"
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(archive, "wb") as out, Progress() as bar:
                task = bar.add_task("downloading census-income", total=int(response.headers.get("Content-Length") or 0) or None)
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(task, advance=len(chunk))
        except OSError as exc:
            raise DataError(f"{_missing_message(directory)} (download failed: {exc})") from None
        extracted = _unpack(archive, Path(tmp))
        for name, path in extracted.items():
            os.replace(path, directory / name)
    return find_files(directory)


def _open_text(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _unpack(archive: Path, tmp: Path) -> dict[str, Path]:
    """Extract and verify both files from the UCI zip (which wraps ``census.tar.gz``)."""
    extracted = {}
    try:
        with zipfile.ZipFile(archive) as z:
            z.extract("census.tar.gz", tmp)
        with tarfile.open(tmp / "census.tar.gz") as tar:
            for name in (TRAIN_FILE, TEST_FILE):
                member = next(m for m in tar.getmembers() if Path(m.name).name in (name, f"{name}.gz"))
                target = tmp / Path(member.name).name
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                extracted[name] = target
        for name, rows in EXPECTED_ROWS.items():
            with _open_text(extracted[name]) as handle:
                count = sum(1 for line in handle if line.strip())
            if count != rows:
                raise DataError(f"census: downloaded {name} has {count} rows, expected {rows}; not moved into place")
    except (zipfile.BadZipFile, tarfile.TarError, KeyError, StopIteration, OSError, EOFError) as exc:
        raise DataError(f"census: downloaded archive is not the UCI census-income archive ({exc!r})") from None
    test = extracted[TEST_FILE]
    digest = hashlib.md5(test.read_bytes()).hexdigest()
    if digest != TEST_MD5[test.suffix == ".gz"]:
        raise DataError(f"census: downloaded {test.name} has md5 {digest}, expected {TEST_MD5[test.suffix == '.gz']}")
    return {path.name: path for path in extracted.values()}
