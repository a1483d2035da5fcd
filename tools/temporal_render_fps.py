"""Frames/s of a real render (streamer.video.render_video_file) without and with the stabilizer.

Renders alternate (plain, temporal, plain, temporal, ...) so that other load on the machine hits both
alike; the median of each is reported. The stabilizer's own cost is measured more precisely,
frame by frame, by tools/temporal_numbers.py.

    python tools/temporal_render_fps.py --model microast --frames 96 --rounds 3
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from engines.backends import create_engine
from engines.models import load_model, weights_fingerprint
from engines.stylizer import Stylizer
from streamer.imageio import load_image
from tools.shared import shared_dir
from streamer.temporal import TemporalStabilizer
from streamer.video import render_video_file

SHARED = shared_dir()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="microast")
    p.add_argument("--engine", default="torch")
    p.add_argument("--style", default="la_muse")
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    weights = SHARED / "weights"
    model = load_model(args.model, weights, download=False)
    engine = create_engine(args.engine, model, torch.device("cpu"), weights_id=weights_fingerprint(args.model, weights),
                           shape_hint=(360, 640))
    stylizer = Stylizer(model, engine)
    code = stylizer.encode_style(load_image(SHARED / "media" / "style" / f"{args.style}.jpg"), 512)
    clip = SHARED / "media" / "video" / "cutBunny.mp4"
    fps: dict[str, list[float]] = {"plain": [], "temporal": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for kind in fps:
                temporal = TemporalStabilizer() if kind == "temporal" else None
                stats = render_video_file(clip, Path(tmp) / f"{kind}.mp4", stylizer, code, temporal=temporal,
                                          max_frames=args.frames, progress=False)
                fps[kind].append(stats.fps)
    plain, steady = statistics.median(fps["plain"]), statistics.median(fps["temporal"])
    print(f"{args.model} ({engine.describe()}), {args.frames} frames x {args.rounds}: "
          f"plain {plain:.2f} frames/s {fps['plain']}, temporal {steady:.2f} frames/s {fps['temporal']}: "
          f"{(1 - steady / plain) * 100:.1f}% fewer frames/s")


if __name__ == "__main__":
    main()
