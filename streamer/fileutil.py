"""Small file-system helpers shared by the image and video readers and writers."""
from __future__ import annotations

import os
from pathlib import Path

from engines.errors import InputError


def existing_file(path: str | Path, what: str, kind: str = "file") -> Path:
    """``path`` as a Path if it names a file; else one clear line: missing, or a folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if path.is_dir():
        raise InputError(f"{what} is a folder, not {kind}: {path}")
    return path


def new_file_mode() -> int:
    """The mode a new file gets under the current umask (mkstemp's temp files are private, 0600)."""
    try:
        with open("/proc/self/status") as f:  # race-free on Linux
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask
