"""Errors a user can cause. The CLI turns each into one line and an exit code, never a traceback."""
from __future__ import annotations


class StreamerError(Exception):
    """A problem the user can fix; its message is the one line they see."""

    exit_code: int = 2


class InputError(StreamerError):
    """A missing, unreadable, corrupt or unsupported input file or flag value."""


class WeightsError(StreamerError):
    """Model weights are missing, corrupt, or do not match the model."""


class DeviceError(StreamerError):
    """The requested device, engine or output is not available on this machine."""

    exit_code = 3
