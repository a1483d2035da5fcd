"""`streamer live`: a camera (or file, stream, test pattern) stylized in real time.

Where things go: the command (flags, checks, wiring) in ``command``; the running session (engine
thread, output loop) in ``session``; a new kind of source in ``capture`` (the ``Source`` protocol);
a new place frames go in ``outputs`` (the ``Output`` protocol); keys and typed commands in
``hotkeys`` and ``stdin``; the overlay in ``hud``; the latest-frame-wins slot in ``slot``.
"""
from streamer.live.command import add_parser, run

__all__ = ["add_parser", "run"]
