"""Stand-ins shared by several test files."""
from __future__ import annotations


class InvertingStylizer:
    """Inverts colours instantly; raises ``stop`` (default KeyboardInterrupt, a user's Ctrl-C) on call ``stop_at``."""

    name = "fake"

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls = 0
        self.stop_at = stop_at
        self.stop: BaseException = KeyboardInterrupt()

    def stylize(self, frame, code, alpha=1.0, keep_color=False):
        self.calls += 1
        if self.stop_at is not None and self.calls >= self.stop_at:
            raise self.stop
        return 255 - frame
