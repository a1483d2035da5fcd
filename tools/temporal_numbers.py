"""The numbers behind `--temporal`, on the real clip: flicker without and with it, the floor, the cost.

For each model: render the clip with streamer.video.render_video_file twice (per-frame, then with the
stabilizer), decode both renders and measure
  - the warping error (Lai et al. 2018; DIS-medium flow, and Farneback as a second opinion) of each,
    and of the source (the floor);
  - that the picture is still the stylized one: mean absolute difference of the temporal render to
    the per-frame render (0-255 levels), and the sharpness ratio (variance of the Laplacian);
  - the same warping error for the per-frame render blurred until it is as soft as the temporal
    one, to show the gain is not just blur;
  - the frames/s cost, interleaved frame by frame in one process (stylize, then process), so the
    other load on the machine hits both alike: as wall time and as thread CPU time;
  - and the render's own frames/s both ways (wall clock; noisy when the machine is shared).
Crops of a moving region and of the frames around the scene cut, both ways, go to --pictures.

    python tools/temporal_numbers.py --models microast adain-r31 --style la_muse
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from engines.backends import create_engine
from engines.models import load_model
from engines.stylizer import Stylizer
from streamer.evaluate import read_frames, sharpness, warping_errors
from streamer.imageio import load_image
from tools.shared import shared_dir
from streamer.temporal import DEFAULT_STRENGTH, TemporalStabilizer
from streamer.video import render_video_file

ROOT = Path(__file__).resolve().parents[1]
SHARED = shared_dir()
CLIP = SHARED / "media" / "video" / "cutBunny.mp4"


def blur_to_match(frames: list[np.ndarray], target_ratio: float) -> tuple[float, list[np.ndarray]]:
    """The Gaussian blur (sigma) that makes ``frames`` as soft as ``target_ratio`` of their sharpness."""
    s0 = np.mean([sharpness(f) for f in frames[::8]])
    lo, hi = 0.05, 3.0
    for _ in range(12):
        mid = (lo + hi) / 2
        ratio = np.mean([sharpness(cv2.GaussianBlur(f, (0, 0), mid)) for f in frames[::8]]) / s0
        lo, hi = (mid, hi) if ratio > target_ratio else (lo, mid)
    sigma = (lo + hi) / 2
    return sigma, [cv2.GaussianBlur(f, (0, 0), sigma) for f in frames]


def cost(stylizer: Stylizer, code, sources: list[np.ndarray], strength: float, prepared: bool) -> dict:
    """Per-frame wall and thread-CPU milliseconds of stylize and of process, interleaved."""
    st = TemporalStabilizer(strength)
    wall = {"stylize": 0.0, "process": 0.0}
    cpu = {"stylize": 0.0, "process": 0.0}
    for f in sources:
        if prepared:
            st.prepare(f)  # flow on the helper thread while the engine runs
        w, c = time.perf_counter(), time.thread_time()
        y = stylizer.stylize(f, code)
        wall["stylize"] += time.perf_counter() - w
        cpu["stylize"] += time.thread_time() - c
        w, c = time.perf_counter(), time.thread_time()
        st.process(f, y)
        wall["process"] += time.perf_counter() - w
        cpu["process"] += time.thread_time() - c
    n = len(sources)
    out = {f"{k}_ms_wall": v / n * 1000 for k, v in wall.items()}
    out.update({f"{k}_ms_cpu": v / n * 1000 for k, v in cpu.items()})
    out["fps_cost_wall"] = wall["process"] / (wall["stylize"] + wall["process"])
    out["fps_cost_cpu"] = cpu["process"] / (cpu["stylize"] + cpu["process"])
    return out


def crops(plain: list[np.ndarray], steady: list[np.ndarray], frames: list[int], box: tuple[int, int, int, int],
          zoom: int) -> np.ndarray:
    """Rows of [per-frame | temporal] crops (x, y, w, h), scaled up ``zoom`` times (nearest: no smoothing)."""
    x, y, w, h = box
    rows = []
    for t in frames:
        pair = [np.pad(v[t][y:y + h, x:x + w], ((2, 2), (2, 2), (0, 0)), constant_values=255) for v in (plain, steady)]
        rows.append(np.concatenate(pair, 1))
    sheet = np.concatenate(rows, 0)
    return cv2.resize(sheet, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["microast", "adain-r31"])
    p.add_argument("--style", default="la_muse")
    p.add_argument("--strength", type=float, default=DEFAULT_STRENGTH)
    p.add_argument("--out", type=Path, default=Path("/tmp/temporal_numbers"))
    p.add_argument("--reuse", action="store_true", help="reuse renders already in --out")
    p.add_argument("--cost-frames", type=int, default=48)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sources = list(read_frames(CLIP))
    results = {}
    for name in args.models:
        model = load_model(name, SHARED / "weights", download=False)
        stylizer = Stylizer(model, create_engine("torch", model, torch.device("cpu")))
        code = stylizer.encode_style(load_image(SHARED / "media" / "style" / f"{args.style}.jpg"), 512)
        r: dict = {"model": name, "style": args.style, "strength": args.strength}
        paths = {k: args.out / f"{name}_{args.style}_{k}.mp4" for k in ("plain", "temporal")}
        for kind, path in paths.items():
            if args.reuse and path.exists():
                continue
            temporal = TemporalStabilizer(args.strength) if kind == "temporal" else None
            stats = render_video_file(CLIP, path, stylizer, code, temporal=temporal, progress=False)
            r[f"render_fps_{kind}"] = stats.fps
            if temporal is not None:
                r["cuts_seen"] = temporal.cuts
            print(f"{name}: rendered {path.name} at {stats.fps:.2f} frames/s", flush=True)
        plain, steady = (list(read_frames(paths[k])) for k in ("plain", "temporal"))
        s0 = np.mean([sharpness(f) for f in plain])
        r["sharpness_ratio"] = float(np.mean([sharpness(f) for f in steady]) / s0)
        r["mad_to_per_frame"] = float(np.mean([np.abs(a.astype(np.int16) - b).mean() for a, b in zip(steady, plain)]))
        sigma, blurred = blur_to_match(plain, r["sharpness_ratio"])
        r["matched_blur_sigma"] = sigma
        for method in ("dis", "farneback"):
            rep = warping_errors(sources, plain, steady, blurred, method=method)
            r[f"{method}_floor"] = rep.mean(rep.source)
            r[f"{method}_plain"] = rep.mean(rep.videos[0])
            r[f"{method}_temporal"] = rep.mean(rep.videos[1])
            r[f"{method}_blurred"] = rep.mean(rep.videos[2])
            r[f"{method}_reduction"] = 1 - r[f"{method}_temporal"] / r[f"{method}_plain"]
            r[f"{method}_cuts"] = rep.cuts
            if method == "dis":
                per = np.array([[np.nan if v is None else v for v in vs] for vs in rep.videos[:2]])
                r["worst_pairs_temporal"] = [int(i) + 1 for i in np.argsort(-np.nan_to_num(per[1]))[:5]]
        r["cost_inline"] = cost(stylizer, code, sources[:args.cost_frames], args.strength, prepared=False)
        r["cost_prepared"] = cost(stylizer, code, sources[:args.cost_frames], args.strength, prepared=True)
        results[name] = r
        print(json.dumps(r, indent=1), flush=True)
        # pictures: the bunny's arm while the camera pans (frames 40-44), and the cut (234-236)
        Image.fromarray(crops(plain, steady, [40, 42, 44], (150, 90, 200, 150), 2)).save(
            args.out / f"{name}_motion.png")
        Image.fromarray(crops(plain, steady, [233, 234, 235, 236], (0, 0, 640, 360), 1)[::2, ::2]).save(
            args.out / f"{name}_cut.png")
    (args.out / "numbers.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
