"""No waiting for a build: start on an engine that is ready, build the faster one in the background, switch.

The fastest engine can take a while the first time: OpenVINO and ONNX Runtime export the network to ONNX
(seconds), int8 calibrates, TensorRT builds for minutes, compiled torch-cuda compiles. ``render`` (video,
folder) and ``live`` need not wait for it: :func:`plan_engines` says which engine is ready now (torch eager on
a CPU, uncompiled torch-cuda on a GPU) and which faster ones to build, and :class:`UpgradingEngine` runs the
ready one while a thread builds the faster one, checks it against the running one on a real frame
(:func:`engines.ops.psnr`, at least :data:`SWITCH_MIN_PSNR_DB`), warms it at every shape the running one has
seen, and hands it over: the next ``run`` (between two frames; every ``run`` takes whole frames) starts on
it. A build that fails, or fails the check, leaves the running engine in place with one warning.
Builds go to the engine cache as always, so a later start finds the fast engine built and starts on it
directly (:meth:`Engine.is_built`): no second engine, no thread.

:class:`EngineSpans` records which engine ran which frames, for the log, the HUD and the end summary
("torch fp32 for frames 0-41, then openvino fp32 for frames 42-239").
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from engines.backends.base import Engine
from engines.backends.cache import first_line
from engines.ops import psnr

log = logging.getLogger(__name__)

#: the lowest PSNR (dB) between the built engine and the running one on the same frame, by the built engine's
#: precision. fp32 OpenVINO against torch fp32 (microast, a real frame): 80 dB, so 40 leaves room for
#: another runtime's rounding and still refuses a wrong graph; low precisions take engines.precision's bar
SWITCH_MIN_PSNR_DB = {"fp32": 40.0, "fp16": 30.0, "bf16": 30.0, "int8": 30.0}
#: the most recent input shapes the built engine is warmed at before it takes over (live's --size auto ladder
#: has 4; engines keep about as many built per shape); an older shape builds on its first frame, as always
WARM_SHAPES = 4


@dataclass(frozen=True)
class Target:
    """A faster engine to build in the background. ``spec`` (see :func:`build_in_child`): its first-time build
    runs in a child process, which writes the engine cache; ``build()`` then makes the engine from the cache
    in about a second. Without a spec ``build()`` does it all in the build thread."""

    label: str  # "openvino bf16"
    precision: str
    build: Callable[[], Engine]
    spec: dict | None = None


def build_in_child(spec: dict, started: Callable[[subprocess.Popen], None] | None = None) -> str | None:
    """Build an engine into the engine cache in a child process (``python -m engines.backends.switch SPEC``);
    None when done, else why not (one line).

    A process, not a thread of this one: it can be stopped at any moment (an interpreter that exits while one
    of its threads exports aborts), an ONNX export or a compile is Python that would hold the running engine's
    GIL for long stretches, and a crash in a converter cannot take the running command with it. ``started(process)`` is told the process, to stop it early.
    """
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    process = subprocess.Popen([sys.executable, "-m", "engines.backends.switch", json.dumps(spec)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=env, text=True, errors="replace",
                               start_new_session=True)  # a terminal's Ctrl-C is the command's to handle, not its
    if started is not None:
        started(process)
    _, err = process.communicate()
    if process.returncode == 0:
        return None
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    return lines[-1] if lines else f"the build process exited with {process.returncode}"


def _child_main(spec_text: str) -> int:
    """The child of :func:`build_in_child`: load the model, build the engine (filling the cache), say why not."""
    import signal

    def stop(signum, frame):  # the parent stops the build: unwind, so the cache's temporary file goes too
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    parent = os.getppid()

    def watch_parent() -> None:  # a parent that ended without stopping us (killed, crashed): stop too
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch_parent, daemon=True).start()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    spec = json.loads(spec_text)
    try:
        from engines.backends import _build
        from engines.models import load_model

        model = load_model(spec["model"], spec.get("weights_dir"), decoder=spec.get("decoder"))
        hint = tuple(spec["shape_hint"]) if spec.get("shape_hint") else None
        engine = _build(spec["kind"], model, torch.device(spec["device"]), spec["precision"], spec.get("weights_id"),
                        hint)
        engine.close()
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the parent says it in one warning
        print(first_line(exc), file=sys.stderr)
        return 1
    return 0


def engine_label(engine: Engine) -> str:
    """``openvino fp32``: the short name the HUD and the summary use."""
    return f"{engine.name} {engine.precision}"


class UpgradingEngine(Engine):
    """The engine interface over a running engine that a background thread replaces by a faster one.

    ``run`` is called by one thread at a time (the video pipeline's stylize thread, live's engine thread;
    a warm-up before in the main thread); the switch happens at the start of a ``run``, in that thread, so
    a frame never mixes engines and nothing waits for it. The built engine is checked on a copy of a real
    frame the running engine stylized (asked for once the build is done) and warmed at every input shape
    seen so far, in the background, so its first frame costs what any other does. Engines with a thread
    of their own (torch-cuda's owner thread) keep it: each is only ever called through its own ``run``.
    """

    def __init__(self, running: Engine, targets: list[Target], max_batch: int | None = None) -> None:
        # no Engine.__init__: availability was checked when ``running`` was built
        self.model, self.device = running.model, running.device
        self.max_batch = max_batch if max_batch is not None else running.max_batch
        self._current = running
        self._retired: list[Engine] = []
        self._pending: Engine | None = None
        self._targets = list(targets)
        self._lock = threading.Lock()
        self._shapes: dict[tuple[int, int, int], None] = {}  # input shapes seen, the most recent last
        self._want_sample = False
        self._sample: tuple[Tensor, Tensor, tuple[Tensor, ...], Tensor] | None = None
        self._sample_ready = threading.Event()
        self._closed = threading.Event()
        self._db = 0.0
        self._in_build = False
        self._child: subprocess.Popen | None = None
        self._abandoned = False
        #: one line once the background work is over: what it built, or why the running engine stays
        self.outcome: str | None = None
        #: an engine is built and waits for the next real frame to be checked on
        self.checking = threading.Event()
        #: the engine built and checked, switched to on the next run (set by the build thread)
        self.switched = threading.Event()
        self._thread = threading.Thread(target=self._build_in_background, name="engine-build", daemon=True)
        self._thread.start()

    # -- the engine interface: the current engine's -----------------------------------------------------
    @property
    def name(self) -> str:  # type: ignore[override]
        return self._current.name

    @property
    def precision(self) -> str:  # type: ignore[override]
        return self._current.precision

    @property
    def current(self) -> Engine:
        return self._current

    def describe(self) -> str:
        return self._current.describe()

    @property
    def building(self) -> bool:
        """Whether the background thread is building an engine now (not checking or warming one)."""
        return self._in_build and self._thread.is_alive()

    def prepare(self, height: int, width: int) -> None:
        """The running engine's prepare (torch: nothing to do), and (H, W) noted: the built engine is warmed at it
        before it takes over, as at every shape ``run`` has seen."""
        from engines.backends.graph import padded_shape

        engine = self._take_pending()
        shape = (1, *padded_shape(self.model, height, width))
        with self._lock:
            self._shapes.pop(shape, None)
            self._shapes[shape] = None
        engine.prepare(height, width)

    def run(self, image: Tensor, alpha: Tensor, code: tuple[Tensor, ...]) -> Tensor:
        engine = self._take_pending()
        out = engine.run(image, alpha, code)
        shape = (int(image.shape[0]), int(image.shape[-2]), int(image.shape[-1]))
        if next(reversed(self._shapes), None) != shape:
            with self._lock:
                self._shapes.pop(shape, None)
                self._shapes[shape] = None
        if self._want_sample and bool(image.amax() > image.amin()):  # a real picture, not a warm-up's blank
            self._sample = (image[:1].detach().clone(), alpha.detach().clone(),
                            tuple(c.detach().clone() for c in code), out[:1].detach().float().clone())
            self._want_sample = False
            self._sample_ready.set()
        return out

    def _take_pending(self) -> Engine:
        """The engine this call runs on: the built one from the first call after its hand-over."""
        pending = self._pending
        if pending is not None:
            with self._lock:
                if self._pending is pending:
                    self._retired.append(self._current)
                    self._current, self._pending = pending, None
                    log.info("engine: switched to %s between two frames", pending.describe())
        return self._current

    def wait_for_build(self, timeout: float | None = None) -> bool:
        """Wait for the background work to end; True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _started_child(self, process: subprocess.Popen) -> None:
        self._child = process
        if self._abandoned:
            process.terminate()

    def abandon(self) -> None:
        """Stop a build in progress (its child process) and switch to nothing more: the run was interrupted."""
        self._abandoned = True
        self._closed.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(5.0)
            except subprocess.TimeoutExpired:  # deep in a converter's C++: it cannot unwind, so it is killed
                child.kill()

    def close(self) -> None:
        """Close every engine held; a build still running is closed by its thread when it ends."""
        self._closed.set()
        with self._lock:
            engines = [self._current, *self._retired, *([self._pending] if self._pending else [])]
            self._pending = None
            self._retired.clear()
        for engine in engines:
            engine.close()

    # -- the background thread ------------------------------------------------------------------------
    def _build_in_background(self) -> None:
        running = engine_label(self._current)
        failures: list[str] = []
        for target in self._targets:
            if self._closed.is_set():
                break
            t0 = time.perf_counter()
            self._in_build = True
            try:
                problem = None if target.spec is None else build_in_child(target.spec, self._started_child)
                if problem is not None:
                    raise RuntimeError(problem)
                if self._closed.is_set():
                    break
                engine = target.build()
            except Exception as exc:  # noqa: BLE001 - the running engine stays: said once, below
                if self._abandoned:
                    break
                failures.append(f"{target.label} could not be built ({first_line(exc)})")
                log.debug("background build of %s failed", target.label, exc_info=True)
                continue
            finally:
                self._in_build = False
                self._child = None
            built_s = time.perf_counter() - t0
            try:
                problem = self._check_and_warm(engine, target.precision)
            except Exception as exc:  # noqa: BLE001
                problem = f"failed on a frame ({first_line(exc)})"
                log.debug("background check of %s failed", target.label, exc_info=True)
            if problem is None and self._closed.is_set():
                problem = "stopped"
            if problem is not None:
                engine.close()
                if problem == "stopped":
                    break
                failures.append(f"{target.label} {problem}")
                continue
            self.outcome = (f"{engine_label(engine)} built in the background in {built_s:.1f} s, "
                            f"{self._db:.1f} dB from {running} on a frame")
            if failures:
                log.warning("engine: %s; using %s", "; ".join(failures), engine_label(engine))
            log.info("engine: %s; switching to it", self.outcome)
            with self._lock:
                if self._closed.is_set():
                    engine.close()
                    return
                self._pending = engine
            self.switched.set()
            return
        if failures:
            self.outcome = f"staying on {running}: " + "; ".join(failures)
            log.warning("engine: %s; staying on %s", "; ".join(failures), running)

    def _check_and_warm(self, engine: Engine, precision: str) -> str | None:
        """Why ``engine`` may not take over (one phrase), or None once it matched the running engine on a real
        frame and ran once at every shape seen so far."""
        self._want_sample = True
        self.checking.set()
        while not self._sample_ready.wait(0.1):
            if self._closed.is_set():
                return "stopped"
        image, alpha, code, expected = self._sample  # type: ignore[misc]
        with torch.inference_mode():
            got = engine.run(image, alpha, code).float().cpu()
            expected = expected.cpu()
            if got.shape != expected.shape:
                return f"gives shape {tuple(got.shape)} where {tuple(expected.shape)} was expected"
            if not torch.isfinite(got).all():
                return "gives non-finite values"
            self._db = min(199.0, psnr(got, expected))
            need = SWITCH_MIN_PSNR_DB.get(precision, 40.0)
            if self._db < need:
                return f"failed its check ({self._db:.1f} dB from {engine_label(self._current)}, needs {need:.0f})"
            checked = (int(image.shape[0]), int(image.shape[-2]), int(image.shape[-1]))
            with self._lock:
                shapes = [s for s in list(self._shapes)[-WARM_SHAPES:] if s != checked]
            for n, h, w in shapes:  # build and warm every shape in use now, so the switch costs no frame
                if self._closed.is_set():
                    return "stopped"
                engine.run(torch.zeros(n, 3, h, w, dtype=image.dtype, device=image.device), alpha, code)
        return None


# -- what to start on and what to build ------------------------------------------------------------------
def background_targets(candidates: list[tuple[str, str]], device_type: str, have_triton: bool = True) -> list[tuple[str, str]]:
    """(kind, precision) pairs worth building in the background, fastest first: on a CPU every candidate before
    torch (torch eager is what runs meanwhile); on a GPU those before torch-cuda, and torch-cuda itself when it
    compiles (it starts uncompiled). Empty: nothing faster than the ready engine."""
    ready = "torch-cuda" if device_type == "cuda" else "torch"
    out: list[tuple[str, str]] = []
    for kind, precision in candidates:
        if kind == ready:
            if device_type == "cuda" and have_triton:
                out.append((kind, precision))
            break
        if kind == "torch":
            break
        out.append((kind, precision))
    return out


def ready_engine(model, device: torch.device, precision: str) -> Engine:
    """The engine that runs at once, with nothing to build: torch fp32 on a CPU (the reference; a CPU's
    low precisions are OpenVINO's), uncompiled torch-cuda on a GPU (plain torch where it cannot run)."""
    from engines.backends import engine_class

    if device.type == "cuda":
        cls = engine_class("torch-cuda")
        if cls.unavailable_reason(device, precision) is None:
            return cls(model, device, precision, compile=False)
        return engine_class("torch")(model, device, precision if precision != "int8" else "fp16")
    return engine_class("torch")(model, device, "fp32")


def start_without_waiting(model, device: torch.device, candidates: list[tuple[str, str]], weights_id: str | None,
                          shape_hint: tuple[int, int] | None, source: dict | None = None) -> UpgradingEngine | None:
    """The ready engine with the faster ones building behind it, or None when there is nothing to wait for: the
    fastest candidate is built already (a warm cache: the caller builds it as always) or none is faster.
    ``source`` ({"weights_dir", "decoder"}: where ``model`` was loaded from) lets the first-time builds run in
    a child process (:func:`build_in_child`); without it they run in the build thread."""
    from engines.backends import _build, engine_class

    have_triton = True
    if device.type == "cuda":
        from engines.backends.torch_cuda_engine import triton_available

        have_triton = triton_available()
    wanted = background_targets(candidates, device.type, have_triton)
    if not wanted:
        return None
    first, first_precision = wanted[0]
    if engine_class(first).is_built(model, device, first_precision, weights_id, shape_hint):
        return None
    running = ready_engine(model, device, first_precision)
    def spec(kind: str, precision: str) -> dict | None:
        if source is None:
            return None
        return {"kind": kind, "model": model.name, "weights_dir": source.get("weights_dir"),
                "decoder": source.get("decoder"), "device": str(device), "precision": precision,
                "weights_id": weights_id, "shape_hint": list(shape_hint) if shape_hint else None}

    targets = [Target(f"{kind} {precision}", precision,
                      lambda kind=kind, precision=precision: _build(kind, model, device, precision, weights_id, shape_hint),
                      spec(kind, precision))
               for kind, precision in wanted]
    batch = min([running.max_batch, *(engine_class(kind).max_batch for kind, _ in wanted)])
    log.info("engine: %s now; building %s in the background (first time only; --engine-wait waits for it instead)",
             running.describe(), targets[0].label)
    return UpgradingEngine(running, targets, max_batch=batch)


class EngineSpans:
    """Which engine ran which frames, noted by the thread that stylizes, one call per frame (or batch)."""

    def __init__(self, unit: str = "frames") -> None:
        self.unit = unit
        self.spans: list[list] = []  # [label, first frame, last frame]
        self.frames = 0

    def note(self, label: str, frames: int = 1) -> None:
        if frames <= 0:
            return
        if self.spans and self.spans[-1][0] == label:
            self.spans[-1][2] = self.frames + frames - 1
        else:
            self.spans.append([label, self.frames, self.frames + frames - 1])
        self.frames += frames

    @property
    def labels(self) -> list[str]:
        return [label for label, _, _ in self.spans]

    def text(self) -> str:
        """``torch fp32 for frames 0-41, then openvino fp32 for frames 42-239`` (one engine: its name)."""
        if len(self.spans) <= 1:
            return self.spans[0][0] if self.spans else "none"
        return ", then ".join(f"{label} for {self.unit} {a}-{b}" for label, a, b in self.spans)


def current_label(stylizer) -> str:
    """The label of the engine a stylizer runs now ('' for stand-ins without an engine)."""
    engine = getattr(stylizer, "engine", None)
    if engine is None or not hasattr(engine, "name"):
        return ""
    return engine_label(engine)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
