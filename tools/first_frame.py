"""Time to the first stylized frame with a cold engine cache: starting on torch while the fastest engine builds in
the background (the default) against ``--engine-wait`` (build first), for ``render`` and ``live``.

Each run gets an empty engine cache (XDG_CACHE_HOME in a temporary folder) and runs the command in this
process; the clock starts when the command starts (Python and torch already imported) and stops when the first
frame reaches the output file (render: the encoder; live: the recording). The whole run's time and which engine
ran when are printed too.

    python -m tools.first_frame --weights-dir ../shared/weights --style ../shared/media/style/brushstrokes.jpg \\
        --clip ../shared/media/video/cutBunny.mp4 --repeats 2
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

from streamer.cli import main
from streamer.sinks import Recording
from streamer.videoio import VideoWriter


class FirstFrame:
    """Patches the two writers so the first frame written is timed."""

    def __init__(self) -> None:
        self.start = 0.0
        self.first: float | None = None
        self._write, self._send = VideoWriter.write, Recording.send
        clock = self

        def write(writer, *args, **kwargs):
            clock.mark()
            return clock._write(writer, *args, **kwargs)

        def send(rec, *args, **kwargs):
            clock.mark()
            return clock._send(rec, *args, **kwargs)

        VideoWriter.write, Recording.send = write, send

    def mark(self) -> None:
        if self.first is None:
            self.first = time.perf_counter() - self.start


class Spans(logging.Handler):
    """Keeps the end line's engine spans ('engine torch fp32 for frames 0-41, then ...')."""

    text = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        found = re.search(r"frames/s\); engine (.*)$", message) or re.search(r"ms a frame\) \(([^)]*)\)", message)
        if found:
            self.text = found.group(1)


def one_run(command: list[str], clock: FirstFrame) -> tuple[float, float, str]:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        spans = Spans()
        logging.getLogger("streamer").addHandler(spans)
        clock.first = None
        clock.start = time.perf_counter()
        rc = main(command)
        total = time.perf_counter() - clock.start
        logging.getLogger("streamer").removeHandler(spans)
        if rc != 0:
            raise SystemExit(f"{' '.join(command)} exited with {rc}")
        return clock.first or float("nan"), total, spans.text


def main_tool() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights-dir", required=True)
    p.add_argument("--style", required=True)
    p.add_argument("--clip", required=True)
    p.add_argument("--frames", type=int, default=120, help="render: --max-frames; live: recorded frames")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    out = Path(tempfile.mkdtemp())
    common = ["--style", args.style, "--model", "microast", "--weights-dir", args.weights_dir]
    commands = {
        "render": ["render", args.clip, str(out / "r.mp4"), "--overwrite", "--max-frames", str(args.frames), *common],
        "live": ["live", "--no-stdin", "--source", "test", "--record", str(out / "l.mp4"), "--overwrite",
                 "--max-frames", str(args.frames), *common],
    }
    clock = FirstFrame()
    modes = (("background build", []), ("--engine-wait", ["--engine-wait"]))
    results: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
    for _ in range(args.repeats):  # interleaved, so a busy minute on a shared machine hits every mode alike
        for name, command in commands.items():
            for how, extra in modes:
                results.setdefault((name, how), []).append(one_run([*command, *extra], clock))
    for (name, how), runs in results.items():
        firsts = [r[0] for r in runs]
        print(f"{name:6s} {how:17s} first frame {statistics.median(firsts):5.1f} s "
              f"(runs: {', '.join(f'{f:.1f}' for f in firsts)}), whole run {statistics.median(r[1] for r in runs):5.1f} s; "
              f"engine {runs[-1][2]}", flush=True)

if __name__ == "__main__":
    main_tool()
