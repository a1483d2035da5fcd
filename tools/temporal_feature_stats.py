"""Experiment: smooth AdaIN's *content-side* statistics across frames inside the network (torch only).

AdaIN normalises each frame's content features with that frame's own per-channel mean/std. Here those
statistics are replaced by an exponential moving average over frames (``keep`` = EMA factor), by
patching the models' ``adain`` for the duration of the run. This needs the model's internals, so it
cannot work with exported ONNX/TensorRT engines; streamer.temporal uses the engine-agnostic output-side
equivalent instead. The script reports the warping error with and without, on the real clip, so the
two can be compared.

    python tools/temporal_feature_stats.py --model microast --style la_muse --frames 96
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

import engines.models.microast as microast_mod
import engines.models.vgg as vgg_mod
from engines.backends import create_engine
from engines.models import load_model
from engines.ops import mean_std
from engines.stylizer import Stylizer
from streamer.evaluate import read_frames, sharpness, warping_errors
from streamer.imageio import load_image
from tools.shared import shared_dir
from streamer.temporal import TemporalStabilizer

SHARED = shared_dir()


class SmoothedAdaIN:
    """A drop-in for engines.ops.adain whose content mean/std are EMAs over frames, one per call site
    (call order within a frame identifies the site: MicroAST has two AdaIN layers, VGG AdaIN one)."""

    def __init__(self, keep: float, sites: int) -> None:
        self.keep, self.sites, self.calls = keep, sites, 0
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, content, style_mean, style_std, eps: float = 1e-5):
        site = self.calls % self.sites
        self.calls += 1
        c_mean, c_std = mean_std(content, eps)
        if site in self.state:
            m, s = self.state[site]
            c_mean, c_std = self.keep * m + (1 - self.keep) * c_mean, self.keep * s + (1 - self.keep) * c_std
        self.state[site] = (c_mean, c_std)
        return (content - c_mean) / c_std * style_std + style_mean


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="microast")
    p.add_argument("--style", default="la_muse")
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--keep", type=float, nargs="+", default=[0.7, 0.9])
    args = p.parse_args()
    model = load_model(args.model, SHARED / "weights", download=False)
    stylizer = Stylizer(model, create_engine("torch", model, torch.device("cpu")))
    code = stylizer.encode_style(load_image(SHARED / "media" / "style" / f"{args.style}.jpg"), 512)
    sources = list(read_frames(SHARED / "media" / "video" / "cutBunny.mp4", args.frames))
    module = microast_mod if args.model == "microast" else vgg_mod
    sites = 2 if args.model == "microast" else 1
    plain = [stylizer.stylize(f, code) for f in sources]
    videos = {"per-frame": plain}
    original = module.adain
    for keep in args.keep:
        module.adain = SmoothedAdaIN(keep, sites)
        try:
            videos[f"feature-stat EMA {keep}"] = [stylizer.stylize(f, code) for f in sources]
        finally:
            module.adain = original
    videos["output-side tone only"] = [o for o in _run(TemporalStabilizer(tone=True, texture=False), sources, plain)]
    videos["--temporal (default)"] = [o for o in _run(TemporalStabilizer(), sources, plain)]
    report = warping_errors(sources, *videos.values())
    base = report.mean(report.videos[0])
    s0 = np.mean([sharpness(f) for f in plain])
    print(f"{args.model} / {args.style}, {args.frames} frames; source floor {report.mean(report.source):.6f}")
    for (name, frames), errs in zip(videos.items(), report.videos):
        e = report.mean(errs)
        mad = np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(frames, plain)])
        print(f"  {name:26s} warping error {e:.6f} ({(1 - e / base) * 100:+5.1f}% lower)  "
              f"MAD to per-frame {mad:5.2f}  sharpness {np.mean([sharpness(f) for f in frames]) / s0:.3f}")


def _run(st: TemporalStabilizer, sources, stylized):
    return [st.process(s, y) for s, y in zip(sources, stylized)]


if __name__ == "__main__":
    main()
