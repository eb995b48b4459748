"""Reading YAML safely and writing files atomically, with errors that name the file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

from ple_search.errors import ConfigError, PLESearchError


def read_yaml(path: Path, what: str, error: type[PLESearchError] = ConfigError) -> Any:
    """The document at ``path`` via ``yaml.safe_load``; a missing or unreadable file is ``error``."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise error(f"{path}: cannot read {what}: {exc}") from None


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary file in the same folder, then ``os.replace``: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))
