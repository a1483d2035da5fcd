"""The sessions behind the page, built from live's machinery (streamer.live.session): no second engine loop.

* the server's source (camera, file, URL, test pattern): one :class:`ServedSession`, watched by any number of
  tabs; its source is read only while someone watches (:class:`~streamer.serve.frames.GatedSource`), so an
  unwatched server is idle;
* each browser camera: its own :class:`ServedSession` fed by :class:`~streamer.serve.frames.PushSource` (frames
  arriving over WebRTC), limited in number; it ends when its tab goes.

Every session shares one stylizer (calls serialised by :class:`SharedStylizer`) and one :class:`StyleBook`.
Page controls never touch a session's state from the server's thread: they are queued and applied in the
session's own loop thread, the way live applies keys.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engines.threads import join_thread
from streamer.live.hotkeys import Action, LiveState, handle_command, handle_key, select_style
from streamer.live.session import LiveSession
from streamer.live.slot import SourceEnded
from streamer.options import Style
from streamer.serve.frames import FrameHub, PushSource

log = logging.getLogger(__name__)

#: keys the page forwards to a session (q, s, f, h and i are the page's own: quitting, snapshots and fullscreen
#: belong to the tab, never to the server)
SESSION_KEYS = frozenset("np123456789+=-_cmu[]") | {"space"}


# -- shared pieces ------------------------------------------------------------------------------
class SharedStylizer:
    """One stylizer for every session: its calls one at a time (an engine is not made for two threads)."""

    def __init__(self, stylizer: Any) -> None:
        self._inner = stylizer
        self._lock = threading.Lock()

    def stylize(self, *args, **kwargs):
        with self._lock:
            return self._inner.stylize(*args, **kwargs)

    def encode_style(self, *args, **kwargs):
        with self._lock:
            return self._inner.encode_style(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclass(frozen=True)
class Entry:
    ident: str  # stable, for URLs (the image's digest): never a path
    style: Style
    thumb: bytes  # JPEG


class StyleBook:
    """The styles, in gallery order; replaced whole on each change, so a reader always sees one consistent list.

    Sessions index it by ``LiveState.style_index``; an index past the end (a style removed a moment ago, before
    the session's state caught up) gives the last style rather than an error.
    """

    def __init__(self) -> None:
        self._entries: tuple[Entry, ...] = ()
        self._lock = threading.Lock()  # writers only
        self.codes = _Codes(self)

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> Style:
        entries = self._entries
        return entries[min(max(0, index), len(entries) - 1)].style

    def __iter__(self):
        return iter([e.style for e in self._entries])

    def find(self, ident: str) -> int:
        return next((i for i, e in enumerate(self._entries) if e.ident == ident), -1)

    def add(self, entry: Entry) -> tuple[int, bool]:
        """(index, added): a style already in the book (same image) is not added twice."""
        with self._lock:
            found = self.find(entry.ident)
            if found >= 0:
                return found, False
            self._entries = (*self._entries, entry)
            return len(self._entries) - 1, True

    def remove(self, ident: str) -> int:
        """The index it had; -1 if absent. The last style stays: a session always has one."""
        with self._lock:
            index = self.find(ident)
            if index < 0 or len(self._entries) == 1:
                return -1 if index < 0 else -2
            self._entries = self._entries[:index] + self._entries[index + 1:]
            return index


class _Codes:
    """The engine thread's view of the book: ``codes[i]`` is style i's code."""

    def __init__(self, book: StyleBook) -> None:
        self._book = book

    def __getitem__(self, index: int):
        return self._book[index].code

    def __len__(self) -> int:
        return len(self._book)


def thumbnail(rgb: np.ndarray, side: int = 160) -> bytes:
    """A small JPEG of a style image for the gallery."""
    from PIL import Image
    import io

    img = Image.fromarray(rgb)
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


class SwitchTemporal:
    """The page's temporal switch over one stabilizer: off passes frames through; on starts it afresh."""

    def __init__(self, make: Callable[[], Any], on: bool) -> None:
        self._make, self._inner, self.on = make, None, on
        self._was_on = False

    def process(self, source_rgb: np.ndarray, stylized_rgb: np.ndarray) -> np.ndarray:
        on = self.on
        if not on:
            self._was_on = False
            return stylized_rgb
        if self._inner is None:
            self._inner = self._make()
        if not self._was_on:
            self._inner.reset()
            self._was_on = True
        return self._inner.process(source_rgb, stylized_rgb)

    def reset(self) -> None:
        if self._inner is not None:
            self._inner.reset()


# -- a session ------------------------------------------------------------------------------------
class ServedSession(LiveSession):
    """A live session without window or stdin: what the page asks for arrives as queued callables, run in the
    session's loop thread between frames."""

    def __init__(self, *args, book: StyleBook, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.styles = book  # type: ignore[assignment] - a list-like of Style
        self.engine.codes = book.codes
        self.requests: queue.SimpleQueue[Callable[[ServedSession], None]] = queue.SimpleQueue()

    def _handle_input(self, keys: list[str]) -> bool:
        while True:
            try:
                request = self.requests.get_nowait()
            except queue.Empty:
                return True
            try:
                request(self)
            except Exception:  # noqa: BLE001 - a bad request must not end the session
                log.exception("page request failed")

    def ask(self, request: Callable[[ServedSession], None]) -> None:
        self.requests.put(request)


def control(state: LiveState, names: list[str], params: dict) -> tuple[LiveState, list[Action], str | None]:
    """The page's controls -> (new state, actions, a note for the page): the same rules as live's keys and
    commands (streamer.live.hotkeys), with explicit values instead of toggles."""
    actions: list[Action] = []
    note = None
    if "style" in params:
        state, more = select_style(state, int(params["style"]))
        actions += more
    if "alpha" in params:
        state, more, note = handle_command(f"alpha {float(params['alpha'])}", state, names)
        actions += more
    if "keep_color" in params:
        state = replace(state, keep_color=bool(params["keep_color"]))
    if "bypass" in params and bool(params["bypass"]) != state.bypass:
        state, more = handle_key("space", state)
        actions += more
    if "motion" in params:
        state, more, note = handle_command(f"motion {'on' if params['motion'] else 'off'}", state, names)
        actions += more
    if "size" in params:
        state, more, note = handle_command(f"size {params['size']}", state, names)
        actions += more
    if "key" in params:
        state, more = handle_key(params["key"], state)
        actions += [a for a in more if a is not Action.QUIT and a is not Action.SNAPSHOT]
    return state, actions, note


class SessionRunner:
    """One :class:`ServedSession` in its own thread, with what the page reads from it."""

    def __init__(self, session: ServedSession, hub: FrameHub, temporal: SwitchTemporal, label: str,
                 on_end: Callable[[SessionRunner], None] | None = None) -> None:
        self.session, self.hub, self.temporal, self.label = session, hub, temporal, label
        self.on_end = on_end
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"session-{label}", daemon=True)
        self._start_called = False

    def start(self) -> None:
        self._start_called = True  # first: a signal inside start() still has the thread joined
        self.thread.start()

    def _warm_up(self) -> None:
        """The engine builds the starting working size before the first frame (as live does), so the first
        viewer does not wait on it frame by frame."""
        import torch

        from streamer.live.engine_thread import stylize_frame

        s = self.session
        with torch.inference_mode():
            stylize_frame(s.stylizer, np.zeros((s.source.height, s.source.width, 3), np.uint8), s.styles[0].code,
                          s.state, s.engine.size, None)

    def _run(self) -> None:
        try:
            self._warm_up()
            summary = self.session.run()
            log.info("%s session ended: %s; engine %.1f fps, latency %.0f ms", self.label, summary.stop_reason,
                     summary.engine_fps, summary.latency_ms)
        except SourceEnded:
            pass
        except BaseException as exc:  # noqa: BLE001 - said on the page and in the log
            self.error = exc
            log.error("%s session stopped: %s", self.label, exc)
        finally:
            self.hub.close()
            if self.on_end is not None:
                self.on_end(self)

    def stop(self, timeout: float = 30.0) -> None:
        self.session.stop.set()
        source = self.session.source
        if isinstance(source, PushSource):
            source.close()
        if self._start_called:
            join_thread(self.thread, timeout)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def request(self, params: dict) -> None:
        """Queue the page's control change; applied between two frames in the session's thread."""
        def apply(session: ServedSession) -> None:
            if "temporal" in params:
                self.temporal.on = bool(params["temporal"])
            new, actions, note = control(session.state, [s.name for s in session.styles], params)
            if note:
                log.info("%s: %s", self.label, note)
            session.apply(new, actions)
        self.session.ask(apply)

    def styles_changed(self, removed: int | None = None) -> None:
        """The book changed: the session's count of styles (and its pick, past a removed one) follow."""
        def follow(session: ServedSession) -> None:
            n = len(session.styles)
            index = session.state.style_index
            if removed is not None and index > removed:
                index -= 1
            session.state = replace(session.state, n_styles=n, style_index=min(index, n - 1))
        self.session.ask(follow)

    def status(self) -> dict:
        s = self.session
        st = s.state
        engine = s.engine
        size = engine.size if not st.bypass else 0
        h, w = s.source.height, s.source.width
        return {
            "label": self.label, "running": self.alive, "error": str(self.error) if self.error else None,
            "style": st.style_index, "style_name": s.styles[st.style_index].name if len(s.styles) else "",
            "alpha": st.alpha, "keep_color": st.keep_color, "bypass": st.bypass, "motion": st.motion,
            "temporal": self.temporal.on, "upscale": st.upscale,
            "size": size, "sizes": list(st.sizes), "size_pinned": st.size_pinned, "size_auto": bool(st.sizes),
            "capture": f"{w}x{h}", "engine_fps": round(engine.meter.rate, 1),
            "latency_ms": round(s.latency * 1000), "dropped": s.in_slot.dropped, "engine": s.engine_label,
            "viewers": self.hub.viewers,
        }


@dataclass
class SessionPlan:
    """What every session of this server is built with (from the command's flags)."""

    stylizer: Any
    book: StyleBook
    model: str
    fps: float
    size: int | str  # a number, or "auto"
    target_fps: float
    gpu: bool
    alpha: float
    keep_color: bool
    motion: bool
    upscale: str
    temporal_on: bool
    make_temporal: Callable[[], Any]
    snapshot_dir: Path = Path(".")


def build_session(plan: SessionPlan, source: Any, label: str, on_viewers=None, on_end=None,
                  hub: FrameHub | None = None, outputs: list | None = None) -> SessionRunner:
    """A session on ``source`` with the plan's model, styles and controls (live's sizing rules); ``outputs``:
    more than the page's (the server's --record and --vcam)."""
    from engines.stylizer import short_side_shape
    from streamer.live.sizing import auto_sizing, first_size

    w, h = source.width, source.height
    size, auto = first_size(plan.size, min(w, h), plan.gpu)
    sizing = None
    if auto:
        sizing = auto_sizing(getattr(getattr(plan.stylizer, "model", None), "factor", 1), min(w, h), size)
        size = sizing.size
    hub = hub or FrameHub(on_viewers)
    temporal = SwitchTemporal(plan.make_temporal, plan.temporal_on)
    state = LiveState(n_styles=len(plan.book), alpha=plan.alpha, keep_color=plan.keep_color,
                      sizes=sizing.sizes if sizing else (), size=size, motion=plan.motion, upscale=plan.upscale)
    session = ServedSession(source, plan.stylizer, list(plan.book), state, outputs=[hub, *(outputs or [])],
                            fps=plan.fps, size=size, temporal=temporal, snapshot_dir=plan.snapshot_dir,
                            sizing=sizing, target_fps=plan.target_fps, book=plan.book)
    log.debug("%s session: %s, working size %s", label, source.describe(),
              short_side_shape(h, w, size) if size else "capture")
    return SessionRunner(session, hub, temporal, label, on_end)


def merge_controls(kept: list[dict], params: dict, limit: int) -> list[dict]:
    """The control changes for a session still starting, with ``params`` added: a value set again replaces the
    earlier one (a dragged slider sends dozens), key presses stay in order; past ``limit`` entries (a flood of
    key presses) the new one is dropped."""
    replaced = {k for k in params if k != "key"}
    merged = [left for left in ({k: v for k, v in e.items() if k not in replaced} for e in kept) if left]
    return merged if len(merged) >= limit else [*merged, params]


class CameraSlots:
    """Browser-camera sessions, at most ``limit`` at once: a slot is held from the offer until the tab ends or
    its camera sends no first frame in time."""

    MAX_DEFERRED = 32  # control changes kept for a session still starting

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: dict[str, Any] = {}
        self._deferred: dict[str, list[dict]] = {}
        self._lock = threading.Lock()

    def take(self, ident: str) -> bool:
        with self._lock:
            if len(self.held) >= self.limit:
                return False
            self.held[ident] = None
            return True

    def defer(self, ident: Any, params: dict) -> bool:
        """Keep a control change for a session still starting (applied when it starts); False if it is not."""
        with self._lock:
            if not self._starting(ident):
                return False
            self._deferred[ident] = merge_controls(self._deferred.get(ident, []), params, self.MAX_DEFERRED)
            return True

    def set(self, ident: str, runner: Any) -> list[dict]:
        """The session made for a held slot; the control changes deferred while it was starting, oldest first."""
        with self._lock:
            if ident in self.held:
                self.held[ident] = runner
            return self._deferred.pop(ident, [])

    def starting(self, ident: Any) -> bool:
        """Held, its session not made yet (the offer is answered; the camera's first frame has not arrived)."""
        with self._lock:
            return self._starting(ident)

    def _starting(self, ident: Any) -> bool:
        return isinstance(ident, str) and ident in self.held and self.held[ident] is None

    def free(self, ident: str) -> Any:
        with self._lock:
            self._deferred.pop(ident, None)
            return self.held.pop(ident, None)

    def __len__(self) -> int:
        return len(self.held)
