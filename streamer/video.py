"""Video file rendering (to be written)."""
from __future__ import annotations

import argparse
from pathlib import Path

from engines.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def add_video_options(p: argparse.ArgumentParser) -> None:
    """Options only video renders use (codec, quality, temporal mode)."""


def render_video(args: argparse.Namespace) -> int:
    raise InputError("video rendering is not available yet")
