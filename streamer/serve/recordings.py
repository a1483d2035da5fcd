"""The page's recordings: the stylized stream of one session, recorded on the server, then downloaded.

One at a time per server (a second start is refused with 409: one encoder beside the engine is what a CPU can
spare). Each file is written into a folder this server made for itself, named by the server (never by a
client), and kept until the server stops (the last :data:`KEEP` of them): it is a temporary copy for the page
to download, not an output of the command. The recording is live's :class:`~streamer.sinks.Recording` sink,
added to and removed from the session's outputs in the session's own thread, so it sees whole frames only.
"""
from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.serve.security import Refused

log = logging.getLogger(__name__)

KEEP = 4  # finished recordings kept for download; the oldest goes when a fifth is made
DETACH_WAIT = 10.0  # seconds a stop waits for the session to let go of the recording between two frames


@dataclass
class _Active:
    ident: str
    recording: Any  # streamer.sinks.Recording
    runner: Any  # streamer.serve.studio.SessionRunner
    started: float = field(default_factory=time.monotonic)


class PageRecordings:
    """Start, stop and find the page's recordings (thread-safe: the routes call it from an executor)."""

    def __init__(self) -> None:
        self.folder: Path | None = None  # made on the first start
        self.active: _Active | None = None
        self.done: OrderedDict[str, tuple[Path, int]] = OrderedDict()  # ident -> (file, frames)
        self._lock = threading.Lock()

    def start(self, runner: Any) -> str:
        """Record what ``runner``'s session shows from its next frame; the recording's id."""
        from streamer.sinks import Recording

        with self._lock:
            if self.active is not None and not self.active.runner.alive:  # its session ended (a tab went)
                self._finish(self.active)
            if self.active is not None:
                raise Refused(409, "a recording is already running on this server (one at a time): stop it first")
            if self.folder is None:
                self.folder = Path(tempfile.mkdtemp(prefix="streamer-serve-recordings-"))
            ident = secrets.token_hex(8)
            session = runner.session
            try:
                recording = Recording(self.folder / f"{ident}.mp4", session.source.width, session.source.height,
                                      session.fps)
            except Exception as exc:  # noqa: BLE001 - no encoder, a full disk: said on the page
                raise Refused(500, f"cannot record here: {str(exc).splitlines()[0] if str(exc) else exc}") from None
            self.active = _Active(ident, recording, runner)
            _hold(runner, +1)
            session.ask(lambda s: s.outputs.append(recording))
            log.info("recording from the page started (%s session)", runner.label)
            return ident

    def stop(self) -> dict:
        """Stop the running recording; ``{"id", "frames"}`` (no frame: no file to download)."""
        with self._lock:
            active = self.active
            if active is None:
                raise Refused(409, "no recording is running")
            frames = self._finish(active)
            return {"id": active.ident if frames else None, "frames": frames}

    def _finish(self, active: _Active) -> int:
        """The session lets go of it (between two frames), then it is finished and renamed into place."""
        self.active = None
        recording, runner = active.recording, active.runner
        let_go = threading.Event()

        def detach(session) -> None:
            if recording in session.outputs:
                session.outputs.remove(recording)
            let_go.set()

        runner.session.ask(detach)
        deadline = time.monotonic() + DETACH_WAIT
        while not let_go.wait(0.05) and runner.alive and time.monotonic() < deadline:
            pass  # a session that ended closed its outputs itself (this recording too)
        _hold(runner, -1)
        try:
            recording.close()
        except Exception as exc:  # noqa: BLE001 - a full disk: said on the page
            log.warning("the page's recording failed: %s", exc)
            raise Refused(500, f"the recording failed: {str(exc).splitlines()[0] if str(exc) else exc}") from None
        if recording.frames == 0 or not recording.path.is_file():
            return 0
        self.done[active.ident] = (recording.path, recording.frames)
        while len(self.done) > KEEP:
            _, (old, _) = self.done.popitem(last=False)
            old.unlink(missing_ok=True)
        return recording.frames

    def file(self, ident: str) -> Path:
        found = self.done.get(ident)
        if found is None or not found[0].is_file():
            raise Refused(404, f"no such recording (this server keeps its last {KEEP} until it stops)")
        return found[0]

    def status(self) -> dict:
        active = self.active
        last = next(reversed(self.done.items()), None)
        return {"running": active is not None,
                "target": active.runner.label if active is not None else None,
                "seconds": round(time.monotonic() - active.started, 1) if active is not None else 0,
                "frames": active.recording.frames if active is not None else 0,
                "last": {"id": last[0], "frames": last[1][1]} if last else None}

    def close(self) -> None:
        """The server stops: the running recording ends, and the folder goes with every file in it."""
        with self._lock:
            if self.active is not None:
                try:
                    self._finish(self.active)
                except Refused:
                    pass
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
                self.folder = None
            self.done.clear()


def _hold(runner: Any, delta: int) -> None:
    """The server's source is read while it records, watched or not."""
    hold = getattr(runner.session.source, "hold", None)
    if hold is not None:
        hold(delta)
