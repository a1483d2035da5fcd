"""How far `--precision int8` (OpenVINO) is from torch fp32 on real photos and paintings, and how fast.

Every (photo, painting) pair in the sample is unseen by the int8 calibration (which is synthetic).
Frames are centre crops at the bench size (640x360 by default); styles are encoded at 512 px.
Prints min / 10th percentile / median PSNR (dB, output in [0, 1]) and ms/frame of fp32 and int8
OpenVINO interleaved in one process.

    python tools/int8_quality.py --model adain-r31 --shared ../shared
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engines.backends import create_engine
from engines.models import load_model
from engines.ops import psnr
from engines.stylizer import Stylizer, to_tensor
from streamer.imageio import load_image
from tools.shared import shared_dir


def centre_crop(path: Path, height: int, width: int) -> torch.Tensor:
    im = Image.fromarray(load_image(path, "content"))
    scale = max(height / im.height, width / im.width)
    im = im.resize((max(width, round(im.width * scale)), max(height, round(im.height * scale))),
                   Image.Resampling.LANCZOS)
    left, top = (im.width - width) // 2, (im.height - height) // 2
    return to_tensor(np.asarray(im.crop((left, top, left + width, top + height))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="adain-r31")
    p.add_argument("--shared", default=str(shared_dir()))
    p.add_argument("--size", default="640x360")
    p.add_argument("--styles-per-photo", type=int, default=5)
    args = p.parse_args()
    width, height = map(int, args.size.split("x"))
    shared = Path(args.shared)
    model = load_model(args.model, shared / "weights", download=False)
    cpu = torch.device("cpu")
    reference = create_engine("torch", model, cpu)
    fp32 = create_engine("openvino", model, cpu, "fp32")
    int8 = create_engine("openvino", model, cpu, "int8")
    stylizer = Stylizer(model, reference)
    photos = sorted((shared / "media" / "content").glob("*.jpg"))
    paintings = sorted(p for p in (shared / "media" / "style").iterdir() if p.suffix in (".jpg", ".png"))
    codes = {p.name: model.code_tensors(stylizer.encode_style(load_image(p, "style"), 512)) for p in paintings}
    alpha = torch.tensor(1.0)
    scores, times = [], {"fp32": [], "int8": []}
    for i, photo in enumerate(photos):
        image = centre_crop(photo, height, width)
        for painting in paintings[i % 3::len(paintings) // args.styles_per_photo][:args.styles_per_photo]:
            code = codes[painting.name]
            ref = reference.run(image, alpha, code)
            for label, engine in (("fp32", fp32), ("int8", int8)):
                t = time.perf_counter()
                out = engine.run(image, alpha, code)
                times[label].append(time.perf_counter() - t)
            scores.append({"photo": photo.name, "painting": painting.name, "psnr_db": round(psnr(out, ref), 2)})
    db = np.array([s["psnr_db"] for s in scores])
    worst = min(scores, key=lambda s: s["psnr_db"])
    print(json.dumps({
        "model": model.name, "size": args.size, "pairs": len(scores),
        "psnr_db": {"min": float(db.min()), "p10": float(np.percentile(db, 10)), "median": float(np.median(db))},
        "worst": worst,
        "ms_per_frame": {k: round(1000 * float(np.median(v[1:])), 1) for k, v in times.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
