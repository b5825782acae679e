"""``.vace-files.json``: the size and sha256 of every downloaded file, per folder.

The downloader writes it (the hub's LFS sha256 where it has one, else hashed locally); ``check`` compares sizes, and
in a deep check the sha256, against it, so a damaged or swapped file shows up without knowing its format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipelines.lora_cache import sha256_file
from pipelines.manifest import RECORD_FILE

__all__ = ["read_records", "sha256_file", "write_records"]


def read_records(folder: Path) -> dict[str, dict]:
    """``{relative path: {"size", "sha256", ...}}`` from ``folder/.vace-files.json``; {} when absent."""
    path = folder / RECORD_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text()).get("files", {})


def write_records(folder: Path, files: dict[str, dict]) -> None:
    path = folder / RECORD_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": 1, "files": dict(sorted(files.items()))}, indent=1) + "\n")
    os.replace(tmp, path)
