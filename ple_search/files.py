"""Reading YAML safely and writing files atomically, with errors that name the file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

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


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and ``os.replace``: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
