"""Measure `streamer live --stream` here: the A/V offset of a recording and of an RTMP stream, the end-to-end delay
of the stream on 127.0.0.1, and the CPU cost of encoding and sending a stream beside the engine.

    STREAMER_SHARED=/work/shared .venv/bin/python tools/stream_measure.py [--size 640x360] [--seconds 8]

A clip whose picture and sound mark the same instants (tests/avclock.py) is played as a file source; a one-connection
RTMP server (tests/rtmp_server.py) stamps each video packet with its arrival time. Delay = arrival - (the
stream's first capture, in wall-clock time, + the packet's pts). CPU: the process's CPU seconds for the same session
with --record alone and with --record and --stream (the difference is the stream's encoder and sending).
"""
from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.cli import main  # noqa: E402
from tools.shared import shared_media, shared_weights  # noqa: E402
import streamer.sinks as sinks  # noqa: E402
from tests.avclock import make_clip, offsets  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session(clip: Path, out: Path, frames: int, stream: str | None, size: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one `live` run."""
    argv = ["live", "--no-stdin", "--source", str(clip), "--record", str(out), "--max-frames", str(frames),
            "--style", str(shared_media() / "style" / "la_muse.jpg"), "--weights-dir", str(shared_weights()),
            "--size", size, "--engine-wait"]
    if stream:
        argv += ["--stream", stream]
    cpu, wall = time.process_time(), time.perf_counter()
    assert main(argv) == 0
    return time.process_time() - cpu, time.perf_counter() - wall


def main_(args: argparse.Namespace) -> None:
    w, h = (int(v) for v in args.size.split("x"))
    fps = 30
    frames = args.seconds * fps - 10
    starts: list[float] = []
    real_picture = sinks.Sink._picture

    def picture(self, frame, t):  # the stream's clock start, in wall-clock time
        first = self._t0 is None
        real_picture(self, frame, t)
        if first and self.cfr:
            starts.append(time.time() - (time.perf_counter() - self._t0))

    sinks.Sink._picture = picture
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = tmp / "marks.mp4"
        make_clip(clip, seconds=args.seconds, fps=fps, size=(w, h))
        port = free_port()
        url = f"rtmp://127.0.0.1:{port}/live/key"
        received = tmp / "received.mkv"
        server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "rtmp_server.py"), url, str(received)])
        time.sleep(1.5)
        cpu_stream, wall_stream = session(clip, tmp / "with_stream.mp4", frames, url, args.work_size)
        server.wait(30)
        cpu_rec, wall_rec = session(clip, tmp / "record_only.mp4", frames, None, args.work_size)
        arrivals = [tuple(map(float, line.split())) for line in Path(str(received) + ".arrivals").read_text().split("\n")
                    if line.count(" ") == 1]
        delays = sorted(1000 * (arrived - (starts[0] + pts)) for pts, arrived in arrivals)
        print(f"clip {w}x{h} at {fps} fps, {frames} frames, --size {args.work_size}, microast; AVX2, 2 cores")
        for name, path in (("recording", tmp / "with_stream.mp4"), ("RTMP stream", received)):
            found = [round(1000 * o, 1) for o in offsets(path)]
            print(f"A/V offset, {name} (ms, sound minus picture, per mark): {found}")
        print(f"end-to-end delay capture -> RTMP server on 127.0.0.1 (ms): median {statistics.median(delays):.0f}, "
              f"p90 {delays[int(0.9 * len(delays))]:.0f}, max {delays[-1]:.0f} over {len(delays)} packets")
        print(f"CPU seconds of the whole command: --record alone {cpu_rec:.1f} ({wall_rec:.1f} s wall), --record + "
              f"--stream {cpu_stream:.1f} ({wall_stream:.1f} s wall); engine fps: see the two summaries above")
        print(encoder_cost(tmp / "with_stream.mp4", fps))


def encoder_cost(stylized: Path, fps: int) -> str:
    """The stream's encoder and sending alone: the stylized pictures of a recording sent again, as fast as it goes,
    to a fresh server; CPU seconds of this process (x264's threads included) per frame."""
    import av
    import numpy as np

    with av.open(str(stylized)) as c:
        pictures = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/key"
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "rtmp_server.py"), url, f"{tmp}/r.mkv"])
        time.sleep(1.5)
        h, w = pictures[0].shape[:2]
        target = sinks.UrlTarget(url, w, h, fps)
        cpu = time.process_time()
        samples = 0
        for i, picture in enumerate(pictures):
            target.write(picture, i)
            while samples < (i + 1) * sinks.SOUND_RATE // fps:
                target.write_audio(np.zeros((1024, 2), np.float32), samples)
                samples += 1024
        target.close()
        cpu = time.process_time() - cpu
        server.wait(30)
    per = 1000 * cpu / len(pictures)
    return (f"stream encoding alone (H.264 veryfast zerolatency {w}x{h} + AAC, sent to 127.0.0.1): {per:.1f} ms CPU "
            f"a frame = {per * fps / 10:.0f}% of one core at {fps} fps")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="640x360", help="clip size (default 640x360)")
    p.add_argument("--work-size", default="204", help="live --size (default 204: a fixed size, so the engine rates compare)")
    p.add_argument("--seconds", type=int, default=8)
    main_(p.parse_args())
