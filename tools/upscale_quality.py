"""What ``--upscale guided`` gives back at small working sizes, measured on the command itself.

For each style, renders the first ``--frames`` frames of the real clip with ``streamer render`` (in this
process: the CLI's own code and defaults; x264 ``--crf 0`` so the encoder adds nothing) at ``--size 0``
(the reference: the network at the full 640x360) and at each ``--sizes`` with ``--upscale bicubic`` (what
every render did before) and ``--upscale guided``; then, per render against the full-size render of the
same frames:

* SSIM of the luma (Wang et al. 2004) and the correlation of the gradient magnitudes (where the edges are);
* the gradient correlation with the source, and the mean distance to the source (0-255), also as a share of
  the full-size render's own distance: the result must stay a stylization (85% or more);
* the warping error (``streamer eval flicker``'s metric) and its ratio to the source's floor; with
  ``--temporal`` also for renders with ``--temporal``.

``--ladder SECONDS`` runs ``streamer live`` on the clip (looped, ``--vcam`` into a test backend, motion as
the CPU default has it) pinned at each rung of the CPU's ``--size auto`` ladder, each way back in turn, and
``--size auto`` at ``--targets``: the engine frame rate each gives, beside the picture's figures at that size
(from the renders above: pass the same ``--sizes``). That is what the CPU live defaults are chosen from.

``--live SECONDS`` records ``streamer live --source CLIP --size S --record`` for each way back and scores each
recorded frame against the full-size render of the source frame it shows (found by its timestamp and the
best gradient match nearby). ``--cost`` times the two ways back at 640x360 and 1280x720 in this process,
interleaved. ``--strips DIR`` writes crops side by side (source | bicubic | guided | full size) per style and
size. Everything goes to JSON with ``--json``.

    python -m tools.upscale_quality --styles la_muse brushstrokes --sizes 152 204 --temporal --cost \\
        --live 8 --strips /tmp/strips --json /tmp/upscale.json
    python -m tools.upscale_quality --frames 24 --sizes 152          # a quick look
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tools/upscale_quality.py` works too

import numpy as np  # noqa: E402

from engines.backends.machine import cpu_flags, cpu_name  # noqa: E402
from streamer import cli  # noqa: E402
from streamer.evaluate import (gradient_correlation, mean_distance, read_frames, ssim_luma,  # noqa: E402
                               warping_errors)
from streamer.live.session import LiveSession  # noqa: E402
from tools.shared import shared_dir  # noqa: E402

SHARED = shared_dir()
CLIP = SHARED / "media" / "video" / "cutBunny.mp4"
METHODS = ("bicubic", "guided")


def render(out: Path, style: str, size: int, frames: int, *extra: str) -> list[np.ndarray]:
    """``streamer render CLIP out --size size ...`` in this process; the frames it wrote."""
    code = cli.main(["-q", "render", str(CLIP), str(out), "--style", str(SHARED / "media" / "style" / f"{style}.jpg"),
                     "--size", str(size), "--max-frames", str(frames), "--crf", "0", "--overwrite",
                     "--weights-dir", str(SHARED / "weights"), "--model", "microast", *extra])
    if code != 0:
        raise SystemExit(f"render failed ({code}): {out}")
    return list(read_frames(out))


def scores(outs: list[np.ndarray], full: list[np.ndarray], source: list[np.ndarray]) -> dict[str, float]:
    """The four figures of one render against the full-size render and the source, means over frames."""
    mean = lambda values: round(statistics.fmean(values), 4)  # noqa: E731
    distance = mean(mean_distance(o, s) for o, s in zip(outs, source))
    full_distance = mean(mean_distance(f, s) for f, s in zip(full, source))
    return {"ssim_vs_full": mean(ssim_luma(o, f) for o, f in zip(outs, full)),
            "gradcorr_vs_full": mean(gradient_correlation(o, f) for o, f in zip(outs, full)),
            "gradcorr_vs_source": mean(gradient_correlation(o, s) for o, s in zip(outs, source)),
            "distance_to_source": round(distance, 2),
            "distance_share_of_full": round(distance / full_distance, 3) if full_distance else None}


def flicker(source: list[np.ndarray], videos: dict[str, list[np.ndarray]]) -> dict[str, dict[str, float]]:
    report = warping_errors(source, *videos.values(), names=list(videos))
    floor = report.mean(report.source)
    return {name: {"warping_error": round(report.mean(errs), 6), "x_floor": round(report.mean(errs) / floor, 1)}
            for name, errs in zip(videos, report.videos)} | {"source floor": {"warping_error": round(floor, 6)}}


def strip(path: Path, source: np.ndarray, tiles: dict[str, np.ndarray], box: tuple[int, int, int, int]) -> None:
    """Crops side by side with their names: what a person sees."""
    import cv2

    y, x, h, w = box
    row = []
    for name, image in {"source": source, **tiles}.items():
        crop = np.ascontiguousarray(image[y:y + h, x:x + w])
        cv2.putText(crop, name, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
        row.append(crop)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(row, axis=1), cv2.COLOR_RGB2BGR))


def cost(rounds: int = 40) -> dict[str, dict[str, float]]:
    """ms per frame of each way back, 640x360 from 270x152 and 1280x720 from 540x304, interleaved, medians."""
    import cv2

    from engines.upscale import bicubic_upscale, guided_upscale

    source = next(read_frames(CLIP, 1))
    result = {}
    for (w, h), (sw, sh) in (((640, 360), (270, 152)), ((1280, 720), (540, 304))):
        big = cv2.resize(source, (w, h), interpolation=cv2.INTER_CUBIC)
        small = cv2.resize(source, (sw, sh), interpolation=cv2.INTER_AREA)
        runs = {"bicubic": lambda: bicubic_upscale(small, h, w), "guided": lambda: guided_upscale(small, big)}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for i in range(rounds + 3):
            for name, fn in runs.items():
                t = time.perf_counter()
                fn()
                if i >= 3:  # warm-up rounds left out
                    times[name].append(time.perf_counter() - t)
        result[f"{w}x{h} from {sw}x{sh}"] = {k: round(1000 * statistics.median(v), 2) for k, v in times.items()}
    return result


def live_scores(style: str, size: int, seconds: float, full: list[np.ndarray], source: list[np.ndarray],
                tmp: Path) -> dict[str, dict[str, float]]:
    """A live recording per way back, each recorded frame scored against the full-size render of its source frame."""
    import av

    result = {}
    for method in METHODS:
        out = tmp / f"live-{style}-{size}-{method}.mp4"
        code = cli.main(["-q", "live", "--source", str(CLIP), "--style", str(SHARED / "media" / "style" / f"{style}.jpg"),
                         "--size", str(size), "--upscale", method, "--record", str(out), "--crf", "0", "--no-stdin",
                         "--max-frames", str(round(seconds * 12)), "--model", "microast", "--overwrite", "--engine-wait",
                         "--weights-dir", str(SHARED / "weights")])
        if code != 0:
            raise SystemExit(f"live failed ({code})")
        with av.open(str(out)) as container:
            recorded = [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
        matched = []
        first = max(range(min(24, len(source))), key=lambda i: gradient_correlation(recorded[0][1], source[i]))
        for t, frame in recorded:
            guess = first + round(t * 24)
            near = [i for i in range(guess - 3, guess + 4) if 0 <= i < len(full)]
            if near:
                matched.append((max(near, key=lambda i: gradient_correlation(frame, source[i])), frame))
        result[method] = {"frames": len(matched), **scores([f for _, f in matched], [full[i] for i, _ in matched],
                                                            [source[i] for i, _ in matched])}
    return result


class _SummarySession(LiveSession):
    """The command's own session, kept so its summary can be read after the command returns."""

    last: LiveSession | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _SummarySession.last = self


def live_rate(size: str, method: str, seconds: float, target: float | None = None) -> dict:
    """Engine frames/s and working sizes of ``streamer live`` on the looped clip into a test virtual camera."""
    import streamer.live.command as live_command

    argv = ["-q", "live", "--source", str(CLIP), "--loop", "--vcam", "--vcam-backend", "tools.live_motion:KeepingCamera",
            "--max-frames", str(round(seconds * 30)), "--no-stdin", "--model", "microast", "--engine-wait", "--size", size,
            "--upscale", method, "--style", str(SHARED / "media" / "style" / "la_muse.jpg"),
            "--weights-dir", str(SHARED / "weights")]
    if target:
        argv += ["--target-fps", str(target)]
    live_command.LiveSession = _SummarySession
    try:
        if cli.main(argv) != 0:
            raise SystemExit(f"live failed: {' '.join(argv)}")
    finally:
        live_command.LiveSession = LiveSession
    summary = _SummarySession.last.summary
    return {"engine_fps": round(summary.engine_fps, 2), "step_ms": round(summary.step_ms, 1),
            "sizes": summary.sizes_text()}


def ladder_rates(sizes: list[int], seconds: float, targets: list[float], rounds: int) -> dict:
    """Each rung pinned, each way back, taking turns (so load hits both alike); then --size auto at each target."""
    rates: dict[str, list[dict]] = {}
    for _ in range(rounds):
        for size in sizes:
            for method in METHODS:
                rates.setdefault(f"{size} px {method}", []).append(live_rate(str(size), method, seconds))
        for target in targets:
            rates.setdefault(f"auto {target:g} fps guided", []).append(live_rate("auto", "guided", seconds, target))
    for name, runs in rates.items():
        print(f"live {name:22s} " + "; ".join(f"{r['engine_fps']} fps ({r['sizes']})" for r in runs), flush=True)
    return rates


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--styles", nargs="+", default=["la_muse", "brushstrokes"])
    p.add_argument("--sizes", nargs="+", type=int, default=[152, 204])
    p.add_argument("--frames", type=int, default=72)
    p.add_argument("--temporal", action="store_true", help="flicker with --temporal too (at the first size)")
    p.add_argument("--cost", action="store_true", help="time the two ways back at 640x360 and 1280x720")
    p.add_argument("--live", type=float, default=0.0, metavar="SECONDS", help="also score live recordings")
    p.add_argument("--ladder", type=float, default=0.0, metavar="SECONDS",
                   help="live engine rates pinned at each --sizes rung and with --size auto at --targets")
    p.add_argument("--targets", nargs="+", type=float, default=[12.0, 15.0])
    p.add_argument("--rounds", type=int, default=2, help="--ladder: rounds of taking turns (default 2)")
    p.add_argument("--no-renders", action="store_true", help="only --cost/--ladder")
    p.add_argument("--strips", type=Path, default=None, metavar="DIR")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags()]
    report: dict = {"machine": f"{cpu_name()} ({', '.join(isa) or 'no AVX2'})", "frames": args.frames, "styles": {}}
    print(f"machine: {report['machine']}")
    source = list(read_frames(CLIP, max(args.frames, 96 if args.live else 0)))
    with tempfile.TemporaryDirectory(prefix="upscale-quality-") as tmp_dir:
        tmp = Path(tmp_dir)
        for style in [] if args.no_renders else args.styles:
            full = render(tmp / f"{style}-full.mkv", style, 0, max(args.frames, 96 if args.live else 0))
            n = args.frames
            entry: dict = {"renders": {}}
            report["styles"][style] = entry
            videos = {"full size": full[:n]}
            for size in args.sizes:
                for method in METHODS:
                    name = f"{size} px {method}"
                    outs = render(tmp / f"{style}-{size}-{method}.mkv", style, size, n, "--upscale", method)
                    entry["renders"][name] = scores(outs, full[:n], source[:n])
                    videos[name] = outs
                    print(f"{style:14s} {name:18s} {entry['renders'][name]}", flush=True)
                if args.strips:
                    i = n // 2
                    strip(args.strips / f"{style}-{size}.png", source[i],
                          {f"{size} px bicubic": videos[f"{size} px bicubic"][i],
                           f"{size} px guided": videos[f"{size} px guided"][i], "full size": full[i]}, (40, 160, 240, 320))
            if args.temporal:
                size = args.sizes[0]
                for method in METHODS:
                    videos[f"{size} px {method} --temporal"] = render(tmp / f"{style}-{size}-{method}-t.mkv", style, size,
                                                                      n, "--upscale", method, "--temporal")
                videos["full size --temporal"] = render(tmp / f"{style}-full-t.mkv", style, 0, n, "--temporal")
            entry["flicker"] = flicker(source[:n], videos)
            for name, value in entry["flicker"].items():
                print(f"{style:14s} flicker {name:30s} {value}", flush=True)
            if args.live:
                entry["live"] = {size: live_scores(style, size, args.live, full, source, tmp) for size in args.sizes[:1]}
                print(f"{style:14s} live {entry['live']}", flush=True)
    if args.ladder:
        report["ladder"] = ladder_rates(args.sizes, args.ladder, args.targets, args.rounds)
    if args.cost:
        report["cost_ms"] = cost()
        print(f"cost (ms a frame, median): {report['cost_ms']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
