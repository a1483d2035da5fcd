"""`streamer eval flicker SRC STYLIZED`: how much a stylized video flickers.

The metric is the warping error of Lai et al., "Learning Blind Video Temporal Consistency" (ECCV 2018):
for each pair of consecutive frames, the optical flow between the *source* frames says where every
pixel of frame t was in frame t-1; the stylized frame t-1 is warped there, pixels the flow cannot
vouch for (occluded or disoccluded: forward-backward check) are masked out, and the error is the mean
squared difference between stylized frame t and the warped frame t-1 (RGB in [0, 1], averaged over
the unmasked pixels and the three channels), then averaged over all pairs. A perfectly stable video
whose texture moves with the content scores what the source itself scores: the *floor*, which is not
zero because flow, interpolation and compression are imperfect. Pairs across a scene cut have no
motion to compare and are skipped (and reported).

Flow here is OpenCV DIS (``medium`` preset) at full resolution, which is deliberately not the flow
the temporal stabilizer uses (DIS ``fast`` at half size), so the stabilizer is not graded by
its own yardstick; ``--flow farneback`` gives a second, independent opinion.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from engines.errors import InputError
from streamer import flow as fl
from streamer.fileutil import print_stdout

log = logging.getLogger(__name__)


# -- the maths ---------------------------------------------------------------------------------------
def pair_warping_error(cur: np.ndarray, prev: np.ndarray, backward: np.ndarray, valid: np.ndarray) -> float:
    """Masked mean squared difference between ``cur`` and ``prev`` warped by ``backward`` (RGB in [0, 1]).

    ``backward = flow(cur_source, prev_source)``; ``valid`` (H, W) bool marks the pixels to count.
    """
    n = int(valid.sum())
    if n == 0:
        return float("nan")
    warped = fl.warp(prev, backward)
    diff = (cur.astype(np.float32) - warped.astype(np.float32)) / 255.0
    sq = np.square(diff).mean(axis=2) if diff.ndim == 3 else np.square(diff)
    return float(sq[valid].mean())


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the luma's Laplacian (the usual focus measure): falls when an image is blurred."""
    return float(cv2.Laplacian(fl.gray(rgb).astype(np.float32), cv2.CV_32F).var())


def ssim_luma(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5) of two RGB frames' luma, borders left out."""
    x, y = (fl.gray(im).astype(np.float64) for im in (a, b))
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(im: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(im, (11, 11), 1.5)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s[5:-5, 5:-5].mean()) if min(s.shape) > 10 else float(s.mean())


def gradient_magnitude(rgb: np.ndarray) -> np.ndarray:
    """Edge strength of an RGB frame: Sobel magnitude of its luma after a Gaussian blur (sigma 1, so compression
    noise and single-pixel texture do not dominate)."""
    g = cv2.GaussianBlur(fl.gray(rgb).astype(np.float32), (0, 0), 1.0)
    return cv2.magnitude(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))


def gradient_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two frames' :func:`gradient_magnitude`: 1 when their edges are in the same places."""
    x, y = gradient_magnitude(a).ravel(), gradient_magnitude(b).ravel()
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference (0-255, over pixels and channels): how far a stylization moved from its source."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


@dataclass
class FlickerReport:
    """Per-pair warping errors: ``source`` is the floor, ``videos[k]`` the k-th stylized sequence.
    Entry i is the pair (frame i, frame i+1); ``None`` where a cut was skipped or nothing was unmasked."""

    flow: str
    source: list[float | None] = field(default_factory=list)
    videos: list[list[float | None]] = field(default_factory=list)
    cuts: list[int] = field(default_factory=list)  # index t of the first frame of each new shot
    valid_fraction: list[float] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return len(self.source) + 1 if self.source else 0

    @staticmethod
    def mean(values: Sequence[float | None]) -> float:
        kept = [v for v in values if v is not None]
        return float(np.mean(kept)) if kept else float("nan")

    @property
    def pairs(self) -> int:
        return sum(v is not None for v in self.source)


def warping_errors(source: Iterable[np.ndarray], *videos: Iterable[np.ndarray], method: str = "dis",
                   names: Sequence[str] | None = None) -> FlickerReport:
    """The warping error of each of ``videos`` against ``source`` (all iterables of uint8 RGB frames,
    consumed in lockstep, so a long video is never held in memory). The flow is computed once from
    the source and shared by every video; ``source`` itself is scored too (the floor).

    Raises InputError when a video has another frame size or frame count than the source.
    """
    names = list(names or [f"video {k + 1}" for k in range(len(videos))])
    estimator = fl.FlowEstimator(method, "medium")
    report = FlickerReport(flow="dis-medium" if method == "dis" else method, videos=[[] for _ in videos])
    its = [iter(v) for v in videos]
    prev: list[np.ndarray] | None = None
    prev_gray: np.ndarray | None = None
    t = 0
    for src in source:
        cur = [src]
        for k, it in enumerate(its):
            frame = next(it, None)
            if frame is None:
                raise InputError(f"{names[k]} has {_frames(t)} but the source has more; "
                                 "they must match frame for frame")
            cur.append(_match_size(frame, src.shape, names[k]))
        g = fl.gray(src)
        if min(g.shape) < fl.MIN_FLOW_SIDE:
            raise InputError(f"the warping error needs frames of at least {fl.MIN_FLOW_SIDE} px a side to measure "
                             f"motion; these are {g.shape[1]}x{g.shape[0]}")
        if prev is not None:
            backward = estimator(g, prev_gray)
            valid = fl.consistent(backward, estimator(prev_gray, g))
            if fl.is_cut(g, prev_gray, fl.motion_residual(g, prev_gray, backward), float(valid.mean())):
                report.cuts.append(t)
                report.source.append(None)
                report.valid_fraction.append(0.0)
                for errs in report.videos:
                    errs.append(None)
            else:
                report.valid_fraction.append(float(valid.mean()))
                errors = [pair_warping_error(c, p, backward, valid) for c, p in zip(cur, prev)]
                errors = [None if math.isnan(e) else e for e in errors]
                report.source.append(errors[0])
                for errs, e in zip(report.videos, errors[1:]):
                    errs.append(e)
        prev, prev_gray = cur, g
        t += 1
    for k, it in enumerate(its):
        if next(it, None) is not None:
            raise InputError(f"{names[k]} has more frames than the source ({t}); they must match frame for frame")
    if t < 2:
        raise InputError(f"the source has {_frames(t)}; the warping error needs at least two")
    return report


def _frames(n: int) -> str:
    return f"{n} frame" if n == 1 else f"{n} frames"


def _match_size(frame: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The frame at the source's size. One extra row/column is allowed and cropped: H.264 in 4:2:0
    pads odd sizes that way (see streamer.videoio); anything else is an error."""
    h, w = shape[:2]
    fh, fw = frame.shape[:2]
    if (fh, fw) == (h, w):
        return frame
    if 0 <= fh - h <= 1 and 0 <= fw - w <= 1:
        return frame[:h, :w]
    raise InputError(f"{name} is {fw}x{fh} but the source is {w}x{h}; the frames must have the same size")


# -- reading ----------------------------------------------------------------------------------------
def frame_count(path: Path) -> int:
    """Frames a video's header declares (0 when it does not say), or the images in a folder."""
    if path.is_dir():
        from streamer.imageio import list_images

        return len(list_images(path))
    from streamer.videoread import open_video

    container, info = open_video(path)
    container.close()
    return info.frames


def read_frames(path: Path, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """uint8 RGB frames of a video file, or of the images of a folder in name order."""
    path = Path(path)
    if path.is_dir():
        from streamer.imageio import list_images, load_image

        for i, p in enumerate(list_images(path)):
            if max_frames is not None and i >= max_frames:
                return
            yield load_image(p, "frame")
        return
    import av

    from streamer.videoread import open_video, video_stream

    container, info = open_video(path)
    try:  # the stream open_video chose: a cover picture may come first
        for i, frame in enumerate(container.decode(video_stream(container, info))):
            if max_frames is not None and i >= max_frames:
                return
            yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as exc:
        raise InputError(f"cannot decode {path}: {exc}") from None
    finally:
        container.close()


# -- the command ------------------------------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", aliases=["evaluate"], help="measure output quality (flicker)",
                       description="Measure a rendered video's quality.")
    what = p.add_subparsers(dest="metric", metavar="METRIC", required=True)
    f = what.add_parser("flicker", help="temporal flicker: the warping error (Lai et al. 2018)",
                        description=__doc__.split("\n\n")[1].replace("\n", " "))
    f.add_argument("source", help="the source video (or folder of frames) the stylized one was made from")
    f.add_argument("stylized", help="the stylized video (or folder of frames), frame for frame")
    f.add_argument("--json", action="store_true", help="print JSON with the per-frame values")
    f.add_argument("--flow", choices=fl.FLOW_METHODS, default="dis",
                   help="optical flow: dis (DIS medium, default) or farneback")
    f.add_argument("--max-frames", type=int, default=None, help="only the first N frames")
    f.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    src, sty = Path(args.source), Path(args.stylized)
    for p in (src, sty):
        if not p.exists():
            raise InputError(f"not found: {p}")
    if args.max_frames is not None and args.max_frames < 2:
        raise InputError("--max-frames must be at least 2")
    if args.max_frames is None:
        n_src, n_sty = frame_count(src), frame_count(sty)
        if n_src and n_sty and n_src != n_sty:
            raise InputError(f"{sty} has {_frames(n_sty)} but {src} has {_frames(n_src)}; "
                             "they must match frame for frame")
    report = warping_errors(read_frames(src, args.max_frames), read_frames(sty, args.max_frames),
                            method=args.flow, names=[str(sty)])
    styl, floor = report.mean(report.videos[0]), report.mean(report.source)
    if args.json:
        print_stdout(json.dumps({"warping_error": styl, "source_warping_error": floor, "frames": report.frames,
                                 "pairs": report.pairs, "cuts": report.cuts, "flow": report.flow,
                                 "per_frame": [{"frame": i + 1, "stylized": e, "source": s, "valid_fraction": v}
                                               for i, (e, s, v) in enumerate(zip(report.videos[0], report.source,
                                                                                 report.valid_fraction))]},
                                indent=1))
        return 0
    cuts = f", {len(report.cuts)} scene cut(s) skipped at frame {', '.join(map(str, report.cuts))}" \
        if report.cuts else ""
    lines = [f"warping error: {styl:.6f}  ({report.frames} frames, {report.pairs} pairs{cuts}; flow {report.flow})",
             f"source floor:  {floor:.6f}  (the same measure on the source itself)"]
    if floor > 0:
        lines.append(f"ratio:         {styl / floor:.2f}x the floor")
    print_stdout("\n".join(lines))
    return 0
