"""Small file-system helpers shared by the image and video writers."""
from __future__ import annotations

import os


def new_file_mode() -> int:
    """The mode a new file gets under the current umask (mkstemp's temp files are private, 0600)."""
    try:
        with open("/proc/self/status") as f:  # race-free on Linux
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask
