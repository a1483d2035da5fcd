"""The content/style trade-off (`--alpha`) measured: distances, a strip to look at, the per-frame cost.

For each style: the output at alpha 0, .25, .5, .75, 1 on one photo; the mean absolute distance (0-255
levels) to the content and to the alpha-1 output, and each output's std and saturated share (a flat or
saturated output fails). Writes a PNG strip (one row per style, content on the left). Then the own-code
size sweep (MicroAST: alpha-0 distance to the content and alpha-.5 distance to the full-size own code,
against the small copy's short side) and the per-frame cost at 640x360, alpha 1 and alpha .5, for
torch and OpenVINO interleaved in one process (min and median of the runs, ms).

    python -m tools.alpha_tradeoff --shared ../shared --out alpha_strip.png  (-m: this checkout's code)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engines import stylizer as stylizer_module
from engines.backends import create_engine
from engines.models import load_model
from engines.stylizer import Stylizer, resize_short_side, to_tensor
from streamer.imageio import load_image
from tools.shared import shared_dir

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def saturated_share(rgb: np.ndarray) -> float:
    """Share of pixels with every channel at 0 or 255 (the old microast alpha gave 1.0: solid cyan)."""
    return float(((rgb <= 0) | (rgb >= 255)).all(axis=2).mean())


def tradeoff_rows(st: Stylizer, content: np.ndarray, code, alphas=ALPHAS) -> list[dict]:
    outs = [st.stylize(content, code, a) for a in alphas]
    full = outs[-1].astype(int)
    return [{"alpha": a, "image": o, "to_content": float(np.abs(o.astype(int) - content).mean()),
             "to_full": float(np.abs(o.astype(int) - full).mean()), "std": float(o.std()),
             "saturated": saturated_share(o)} for a, o in zip(alphas, outs)]


def ms(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=shared_dir())
    ap.add_argument("--model", default="microast")
    ap.add_argument("--engine", default="torch", help="engine for the distances and the strip")
    ap.add_argument("--content", default="lenna.jpg")
    ap.add_argument("--styles", nargs="+", default=["la_muse.jpg", "brushstrokes.jpg"])
    ap.add_argument("--size", type=int, default=360, help="content short side (default 360)")
    ap.add_argument("--out", type=Path, default=Path("alpha_strip.png"))
    ap.add_argument("--runs", type=int, default=12, help="timed runs per engine and alpha")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args()
    media = args.shared / "media"
    model = load_model(args.model, args.shared / "weights", download=False)
    st = Stylizer(model, create_engine(args.engine, model, torch.device("cpu")))
    content = resize_short_side(load_image(media / "content" / args.content), args.size)
    codes = {s: st.encode_style(load_image(media / "style" / s)) for s in args.styles}

    print(f"{args.model} on {args.engine}, {args.content} at {content.shape[1]}x{content.shape[0]}: "
          "mean |out - content| / |out - out(alpha 1)| / std / saturated share")
    rows = []
    for name, code in codes.items():
        table = tradeoff_rows(st, content, code)
        rows.append([content, *(r["image"] for r in table)])
        print(f"  {name:24s}" + "  ".join(f"a={r['alpha']:.2f}: {r['to_content']:5.1f} / {r['to_full']:5.1f} / "
                                         f"{r['std']:4.1f} / {r['saturated']:.3f}" for r in table))
    strip = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    Image.fromarray(strip).save(args.out)
    print(f"strip: {args.out} (rows: {', '.join(codes)}; columns: content, alpha {', '.join(map(str, ALPHAS))})")

    if model.alpha_by_code and not args.skip_sweep:
        code = next(iter(codes.values()))
        print("own-code size sweep (alpha-0 |out - content|, alpha-.5 |out - out with the full-size own code|):")
        base = stylizer_module.OWN_CODE_SIZE
        try:
            stylizer_module.OWN_CODE_SIZE = 100_000
            full = st.stylize(content, code, 0.5).astype(int)
            for size in (96, 128, 192, 256, min(content.shape[:2])):
                stylizer_module.OWN_CODE_SIZE = size
                zero = np.abs(st.stylize(content, code, 0.0).astype(int) - content).mean()
                half = np.abs(st.stylize(content, code, 0.5).astype(int) - full).mean()
                print(f"  short side {size:4d}: alpha 0 {zero:5.1f}, alpha .5 vs full {half:5.1f}")
        finally:
            stylizer_module.OWN_CODE_SIZE = base

    if not args.skip_timing:
        engines = {k: Stylizer(model, create_engine(k, model, torch.device("cpu"))) for k in ("torch", "openvino")}
        image = to_tensor(np.asarray(Image.fromarray(load_image(media / "content" / "golden_gate.jpg"))
                                     .resize((640, 360), Image.Resampling.LANCZOS)))
        code = next(iter(codes.values()))
        times: dict[str, list[float]] = {}
        with torch.inference_mode():
            for s in engines.values():
                s.stylize_tensor(image, code, 0.5)  # warm-up: builds and first-run allocations
            for _ in range(args.runs):  # interleaved, so load on the machine hits every column alike
                for k, s in engines.items():
                    for a in (1.0, 0.5):
                        times.setdefault(f"{k} alpha {a:g}", []).extend(ms(lambda: s.stylize_tensor(image, code, a), 1))
                times.setdefault("own code alone", []).extend(ms(lambda: st.own_code(image), 1))
        print(f"per-frame cost at 640x360, {args.runs} runs each, interleaved (min / median ms):")
        for k, v in times.items():
            print(f"  {k:18s} {min(v):7.1f} / {float(np.median(v)):7.1f}")


if __name__ == "__main__":
    main()
