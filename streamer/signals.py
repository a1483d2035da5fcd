"""SIGTERM and SIGHUP stop streamer exactly like Ctrl-C: the same clean-up, a finalised output, one message.

A service manager, ``kill``, ``timeout`` or a closed terminal sends SIGTERM/SIGHUP; Python's default
for them is to die on the spot, which leaves a hidden ``.part`` file and no output. Instead the
handler raises :class:`Interrupted` (a KeyboardInterrupt) in the main thread, so every path that
already finishes a playable file after Ctrl-C does the same. The exit code is the shell's 128 +
signal number: 130 after Ctrl-C (SIGINT), 143 after SIGTERM, 129 after SIGHUP, so a caller can tell
which stop it was. Only the first stop signal raises; later ones are ignored while the output is
being finalised (SIGKILL still ends the process at once). A signal the process was started ignoring
(``nohup`` ignores SIGHUP) stays ignored.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

#: the signals that stop like Ctrl-C (SIGHUP does not exist on Windows)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """A stop signal other than Ctrl-C, raised where a KeyboardInterrupt would be."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: the stop signal the innermost stop_signals_interrupt() took, kept after it ends for the caller's exit code
_received: list[int] = []


def signal_number(exc: BaseException | None) -> int:
    """The signal behind an interrupt: SIGTERM/SIGHUP for :class:`Interrupted`, else SIGINT (Ctrl-C). A library
    may catch the handler's :class:`Interrupted` and raise a plain KeyboardInterrupt in its place (Ray's
    ``ray.get`` does, from its C++ wait): a stop signal taken is remembered, so that one still names it."""
    if isinstance(exc, Interrupted):
        return exc.signum
    return _received[0] if _received else int(signal.SIGINT)


def note_stop_signal(signum: int) -> None:
    """A stop signal an event loop's own handler took (``serve`` stops its server in order): from now on it is
    as if ours had taken it, so later stop signals are ignored while the outputs are finalised."""
    if not _received:
        _received.append(int(signum))


def exit_code(signum: int) -> int:
    """128 + the signal number, as a shell reports it: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + int(signum)


def stopped_by(signum: int) -> str:
    """'' for Ctrl-C, ' by SIGTERM' for the others: the words after "interrupted" in the message."""
    return "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"


@contextlib.contextmanager
def stop_signals_interrupt(stay_after_stop: bool = False) -> Iterator[None]:
    """While inside, SIGTERM/SIGHUP raise :class:`Interrupted` in the main thread (elsewhere: a no-op).
    ``stay_after_stop`` (the process's own block, :func:`streamer.cli.console_main`): once a stop signal was
    taken, more of them stay ignored after the block (SIG_IGN: Python's exit puts every Python handler back to
    the default), for the process is on its way out; the default would kill it meanwhile and its exit status
    would be the signal's, not 143."""
    if threading.current_thread() is not threading.main_thread() or not STOP_SIGNALS:
        yield
        return
    _received.clear()

    def interrupt(signum, frame):
        if _received:  # already stopping: let the output be finalised
            return
        _received.append(signum)
        raise Interrupted(signum)

    # a signal already ignored (``nohup`` ignores SIGHUP) stays ignored
    previous = {s: signal.signal(s, interrupt) for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_IGN if stay_after_stop and _received else handler)


class StopRequest:
    """What :func:`stop_after_step` or :func:`finishing` saw: the first stop signal's number, or None."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def interrupt(self) -> KeyboardInterrupt | None:
        """The interrupt the signal stands for (to raise, or to report as the run's stop), or None."""
        if self.signum is None:
            return None
        return KeyboardInterrupt() if self.signum == signal.SIGINT else Interrupted(self.signum)


@contextlib.contextmanager
def finishing() -> Iterator[StopRequest]:
    """Around finishing an output that is whole (closing a video's container, joining chunks, closing a
    recording): a stop signal then would throw the whole output away, so the first one only sets
    ``request.signum`` (the caller reports it as the run's stop once the file is done), later SIGTERM/SIGHUP
    are ignored, and a second Ctrl-C raises at once (the user insists). Outside the main thread: a no-op."""
    def later(signum: int) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt()

    with _first_stop_recorded(later, tell_command=True) as request:
        yield request


@contextlib.contextmanager
def stop_after_step() -> Iterator[StopRequest]:
    """For a loop whose step should not be cut (a training step, then its checkpoint): the first Ctrl-C, SIGTERM
    or SIGHUP only sets ``request.signum`` (the loop ends after the step and keeps its work); a second one raises
    at once (KeyboardInterrupt for Ctrl-C, else :class:`Interrupted`). Outside the main thread: a no-op."""
    def later(signum: int) -> None:
        raise KeyboardInterrupt() if signum == signal.SIGINT else Interrupted(signum)

    with _first_stop_recorded(later, tell_command=False) as request:
        yield request


@contextlib.contextmanager
def _first_stop_recorded(later: Callable[[int], None], tell_command: bool) -> Iterator[StopRequest]:
    """Ctrl-C, SIGTERM and SIGHUP while inside: the first sets ``request.signum`` (``tell_command``: and the
    command's own handler ignores more SIGTERM/SIGHUP after the block), later ones go to ``later``."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def stop(signum, frame):
        if request.signum is not None:
            later(signum)
            return
        request.signum = signum
        if tell_command and signum != signal.SIGINT:
            note_stop_signal(signum)

    signals = (signal.SIGINT, *STOP_SIGNALS)
    previous = {s: signal.signal(s, stop) for s in signals if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
