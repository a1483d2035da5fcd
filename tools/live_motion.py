"""What ``live --motion`` buys and costs, measured on the command itself.

Runs ``streamer live`` in this process (the CLI's own code, flags and defaults) with ``--vcam`` into a
registered pyvirtualcam test backend that keeps every frame it is sent, and ``--record``, alternating
``--motion off`` and ``--motion on`` (so other load on the machine hits both alike), on the test pattern and
on the real clip. For every run:

* engine frames/s and working sizes, from the session's own summary;
* the virtual camera: frames sent, and *distinct* frames/s (a frame that differs from the one before it);
* latency: the mean age, when it was sent, of what a virtual-camera frame shows (its send time minus the
  capture time of the frame it depicts: the stylized frame's source without motion, the newest captured
  frame where motion carried it);
* the warping error of the virtual-camera stream (``streamer eval flicker``'s metric, Lai et al. 2018),
  each frame against the source frame that was newest when it was sent, i.e. where things were then: a
  repeated frame while the scene moves scores like a jump, a frame that follows the motion scores low;
  the source's own score is the floor;
* the recording: frames, distinct frames, duration.

``--carry-check`` measures instead how well each rule for *where* to carry predicts the newest frame: every
few frames of the test pattern and of the real clip, the source frame 2 or 4 frames back is carried to the
current one (the flow of ``--motion``) and compared with it (mean absolute error, 0-255): not moved at all,
moved where ``--temporal``'s forward-backward check trusts the flow, moved everywhere, and ``--motion``'s rule.

It also writes, per source, a strip of consecutive virtual-camera frames, off above on, each row cropped on
the region that moves most in it, and everything as JSON.

    python -m tools.live_motion --seconds 12 --rounds 2 --out /tmp/live_motion
    python -m tools.live_motion --sources test --size 288 --rounds 1   # a quick look
    python -m tools.live_motion --carry-check
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tools/live_motion.py` finds `tools.` too

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import streamer.live.command as live_command  # noqa: E402
from streamer import cli  # noqa: E402
from streamer.evaluate import warping_errors  # noqa: E402
from streamer.live.session import LiveSession  # noqa: E402
from tools.shared import shared_dir  # noqa: E402

SHARED = shared_dir()
CLIP = SHARED / "media" / "video" / "cutBunny.mp4"


class KeepingCamera:
    """A pyvirtualcam backend keeping every frame (``--vcam-backend tools.live_motion:KeepingCamera``)."""

    last: KeepingCamera | None = None

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device, **kw) -> None:
        self.width, self.height = width, height
        self.frames: list[np.ndarray] = []
        KeepingCamera.last = self

    def send(self, frame: np.ndarray) -> None:
        self.frames.append(frame.reshape(self.height, self.width, 3).copy())

    def close(self) -> None:
        pass

    def device(self) -> str:
        return "keeping"

    def native_fourcc(self):
        return None


@dataclass
class Tick:
    t_sent: float
    newest: np.ndarray  # the newest captured frame when this tick was sent: where things were
    t_shown: float  # capture time of the frame the output depicts


class TracingSession(LiveSession):
    """The command's session, noting for every output tick what was newest and what was shown."""

    last: TracingSession | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ticks: list[Tick] = []
        self.present_s: list[float] = []
        self.emit_s: list[float] = []
        TracingSession.last = self

    def _present(self, result):
        t0 = time.perf_counter()
        shown = super()._present(result)
        self.present_s.append(time.perf_counter() - t0)
        return shown

    def _emit(self, shown, result, fresh) -> None:
        latest = self.capture.latest
        t0 = time.perf_counter()
        super()._emit(shown, result, fresh)
        self.emit_s.append(time.perf_counter() - t0)
        self.ticks.append(Tick(time.perf_counter(), latest.image if latest is not None else shown.image,
                               shown.t_capture))


@dataclass
class Run:
    source: str
    motion: str
    seconds: float
    engine_fps: float
    sizes: str
    vcam_frames: int
    vcam_distinct_fps: float
    latency_ms: float
    warping_error: float  # x 1000, mean squared error in [0, 1] RGB, as streamer eval flicker prints it
    floor: float
    carried: int
    trusted: float
    record_frames: int
    record_distinct: int
    record_seconds: float
    carry_cpu_ms: float  # CPU time of one carry on the motion thread
    present_ms: float  # mean per tick: picking the frame to show
    emit_ms: float  # mean per tick: sending it to the virtual camera and the recording


def recording_stats(path: Path) -> tuple[int, int, float]:
    """Frames, distinct frames and duration (s, last pts - first pts) of a recording."""
    import av

    with av.open(str(path)) as f:
        stream = f.streams.video[0]
        frames, distinct, pts, prev = 0, 0, [], None
        for frame in f.decode(stream):
            image = frame.to_ndarray(format="rgb24")
            distinct += prev is None or not np.array_equal(image, prev)
            prev = image
            frames += 1
            pts.append(float(frame.pts * stream.time_base))
    return frames, distinct, (max(pts) - min(pts)) if pts else 0.0


def one_run(source: str, motion: str, args: argparse.Namespace, work: Path) -> tuple[Run, list[np.ndarray]]:
    record = work / f"rec-{time.monotonic_ns()}.mp4"
    argv = ["-q", "live", "--source", "test" if source == "test" else str(CLIP), "--vcam", "--vcam-backend",
            "tools.live_motion:KeepingCamera", "--record", str(record), "--max-frames",
            str(round(args.seconds * args.fps)), "--fps", str(args.fps), "--no-stdin", "--model", args.model,
            "--engine", args.engine, "--engine-wait", "--style", args.style, "--motion", motion, "--size", args.size,
            "--weights-dir", str(args.weights_dir)]
    if source != "test":
        argv.append("--loop")
    live_command.LiveSession = TracingSession
    try:
        rc = cli.main(argv)
    finally:
        live_command.LiveSession = LiveSession
    if rc != 0:
        raise SystemExit(f"streamer live exited with {rc}: {' '.join(argv)}")
    from tools import live_motion as registered  # the backend is loaded by name: under -m that is not __main__

    session, cam = TracingSession.last, registered.KeepingCamera.last
    frames, ticks, s = cam.frames, session.ticks, session.summary
    assert len(frames) == len(ticks), (len(frames), len(ticks))
    span = ticks[-1].t_sent - ticks[0].t_sent
    distinct = sum(not np.array_equal(a, b) for a, b in zip(frames, frames[1:]))
    latency = statistics.fmean(t.t_sent - t.t_shown for t in ticks)
    report = warping_errors((t.newest for t in ticks), iter(frames), names=["the virtual camera"])
    rec = recording_stats(record)
    record.unlink()
    run = Run(source, motion, round(s.seconds, 2), round(s.engine_fps, 2), s.sizes_text(), len(frames),
              round(distinct / span, 2), round(1000 * latency, 1), round(1000 * report.mean(report.videos[0]), 3),
              round(1000 * report.mean(report.source), 3), s.frames_carried, round(s.trusted, 3), *rec[:2],
              round(rec[2], 2), round(1000 * session.motion.cpu_s / max(1, session.motion.carries), 2),
              round(1000 * statistics.fmean(session.present_s), 2),
              round(1000 * statistics.fmean(session.emit_s), 2))
    return run, frames


def moving_crop(frames: list[np.ndarray], size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` x ``size`` square that changes most over ``frames`` (a moving region)."""
    change = np.zeros(frames[0].shape[:2], np.float32)
    for a, b in zip(frames, frames[1:]):
        change += cv2.absdiff(a, b).astype(np.float32).mean(axis=2)
    box = cv2.boxFilter(change, -1, (size, size), normalize=False)
    h, w = change.shape
    half = size // 2
    inner = box[half:h - half, half:w - half]
    y, x = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return int(y), int(x)


def strip(runs: dict[str, list[np.ndarray]], path: Path, start: int, count: int, size: int) -> None:
    """Rows of ``count`` consecutive frames (one row per motion setting, numbered from ``start``), each cropped on
    the square that moves most in it."""
    rows = []
    for name in ("off", "on"):  # the runs are not in step: each row is cropped on its own moving square
        y, x = moving_crop(runs[name][:count], size)
        crops = [f[y:y + size, x:x + size] for f in runs[name][:count]]
        row = np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=255) for c in crops], axis=1)
        label = np.full((22, row.shape[1], 3), 255, np.uint8)
        cv2.putText(label, f"--motion {name}: vcam frames {start}..{start + count - 1}", (4, 16),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        rows += [label, row]
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))


def source_frames(source: str, count: int) -> list[np.ndarray]:
    """The first ``count`` frames of the test pattern or the real clip, RGB, as live captures them."""
    from streamer.live.capture import PatternSource, open_source

    opened = PatternSource() if source == "test" else open_source(str(CLIP), None, 30.0)
    frames = [opened.read() for _ in range(count)]
    opened.release()
    return [f for f in frames if f is not None]


def carry_check() -> None:
    from streamer import flow as fl
    from streamer.live import motion
    from streamer.temporal import CONSISTENCY_PX2, confidence

    estimator = fl.FlowEstimator("dis", motion.FLOW_PRESET)
    for source in ("test", "clip"):
        frames = source_frames(source, 240)
        scale = motion.flow_scale(*frames[0].shape[:2])
        for lag in (2, 4):
            errors: dict[str, list[float]] = {}
            for k in range(lag + 10, len(frames), 3):
                before, now = frames[k - lag], frames[k]
                g_new, g_src = fl.gray(now, scale), fl.gray(before, scale)
                backward = estimator(g_new, g_src)
                moved = fl.warp(g_src, backward)
                residual = cv2.absdiff(g_new, moved).astype(np.float32)
                if fl.is_cut(g_new, g_src, residual):
                    continue
                valid = fl.consistent(backward, estimator(g_src, g_new), abs_px=CONSISTENCY_PX2 * scale ** 2)
                weights = {"unmoved": np.zeros_like(residual), "forward-backward": confidence(valid, residual),
                           "everywhere": np.ones_like(residual), "--motion": motion.carry_weight(g_new, g_src, moved),
                           "keep 4-16": motion.carry_weight(g_new, g_src, moved, 4, 16),
                           "keep 8-32": motion.carry_weight(g_new, g_src, moved, 8, 32)}
                for name, weight in weights.items():
                    carried = motion.carry(before, backward, weight)
                    errors.setdefault(name, []).append(float(cv2.absdiff(carried, now).mean()))
            print(f"{source:5} {lag} frames ahead ({len(errors['unmoved'])} pairs): " +
                  ", ".join(f"{name} {statistics.fmean(v):.2f}" for name, v in errors.items()), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", default="test,clip", help="comma list of: test (the pattern), clip (the real clip)")
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--rounds", type=int, default=2, help="off/on pairs per source")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--model", default="microast")
    p.add_argument("--engine", default="auto")
    p.add_argument("--size", default="auto")
    p.add_argument("--style", default=str(SHARED / "media" / "style" / "brushstrokes.jpg"))
    p.add_argument("--weights-dir", type=Path, default=SHARED / "weights")
    p.add_argument("--out", type=Path, default=Path("live_motion"))
    p.add_argument("--strip", type=int, default=8, help="frames in each strip")
    p.add_argument("--carry-check", action="store_true", help="only compare the rules for where to carry (above)")
    args = p.parse_args(argv)
    if args.carry_check:
        carry_check()
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in args.sources.split(","):
            kept: dict[str, list[np.ndarray]] = {}
            for _ in range(args.rounds):
                for motion in ("off", "on"):
                    run, frames = one_run(source, motion, args, Path(tmp))
                    results.append(run)
                    start = len(frames) // 2  # only the strip's frames are kept: big lists slow this VM's runs
                    kept[motion] = frames[start:start + args.strip]
                    del frames
                    print(json.dumps(asdict(run)), flush=True)
            strip(kept, args.out / f"strip_{source}.png", start, args.strip, 160)
    (args.out / "live_motion.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    print(f"{'source':6} {'motion':6} {'engine fps':>10} {'distinct/s':>10} {'latency ms':>10} "
          f"{'warp err':>9} {'floor':>7} {'trusted':>7}  sizes")
    for r in results:
        print(f"{r.source:6} {r.motion:6} {r.engine_fps:10.2f} {r.vcam_distinct_fps:10.2f} {r.latency_ms:10.1f} "
              f"{r.warping_error:9.3f} {r.floor:7.3f} {r.trusted:7.2f}  {r.sizes}")


if __name__ == "__main__":
    main()
