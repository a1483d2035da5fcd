"""`streamer bench`: how fast every model x engine x precision runs on this machine, side by side.

For each model, all engines are built in one process and timed in turns (engine A, B, C, A, B, C ...),
so a busy machine slows them alike and the ratios stay meaningful. Reported per size: the median
ms/frame of the content side (warm-up excluded), frames/s, the speedup over PyTorch fp32 eager, the
agreement with it (PSNR), and the achieved GFLOP/s against the graph's FLOPs and the machine's measured
fp32 peak (a large matmul timed in the same run). Per model: the cost of encoding one style. Per
engine: end-to-end frames/s of a real video render (decode, stylize, encode) through
``streamer.video.render_video_file``.
"""
from __future__ import annotations

import argparse
import json
import os
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from engines.backends import ENGINE_NAMES, PRECISIONS, create_engine, engine_class
from engines.backends.graph import content_flops
from engines.backends.machine import describe_machine, measure_peak_gflops
from engines.errors import InputError, StreamerError, WeightsError
from engines.models import MODEL_NAMES, StyleModel, load_model, random_weights_model, weights_fingerprint
from engines.ops import psnr
from engines.stylizer import encode_style
from streamer.bench_report import (SWITCH_PAUSE_S, RenderRow, Row, engine_label, format_report, median_ms,
                                   synced_call, time_side_by_side)
from streamer.fileutil import AtomicOutput, print_stdout, refuse_same_file
from streamer.signals import Interrupted
from streamer.imageio import parse_size

log = logging.getLogger(__name__)

DEFAULT_SIZES = ((640, 360), (1280, 720), (256, 256), (512, 512))
#: on a CPU the default leaves out adain (relu4_1): it alone would take minutes per size
CPU_DEFAULT_MODELS = ("microast", "adain-r31")
RENDER_ROUNDS = 2
#: working short side per output short side for the way-back timing: --size auto's smallest CPU rung (152 of 360)
UPSCALE_FROM = 152 / 360
#: engines that only run on an NVIDIA GPU: not listed in a CPU bench
GPU_ONLY_ENGINES = ("tensorrt", "torch-cuda")


# -- small pure helpers -------------------------------------------------------------------------------
def frame_size(text: str) -> tuple[int, int]:
    """--sizes: WIDTHxHEIGHT or N for a square (:func:`streamer.imageio.parse_size`)."""
    try:
        size = parse_size(text, "size", square=True)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size is None:
        raise argparse.ArgumentTypeError(f"size must look like 640x360 or 512, not '{text}'")
    return size


# -- inputs -------------------------------------------------------------------------------------------
#: a folder of real weights and media (``weights/<model>/``, ``media/{video,style}/``): bench's defaults where set
ENV_SHARED = "STREAMER_SHARED"


def _shared(*parts: str) -> Path | None:
    """``$STREAMER_SHARED/parts...`` when the variable is set and that folder exists."""
    root = os.environ.get(ENV_SHARED, "").strip()
    folder = Path(root).expanduser().joinpath(*parts) if root else None
    return folder if folder is not None and folder.is_dir() else None


def _first_file(kind: str, suffixes: tuple[str, ...]) -> Path | None:
    folder = _shared("media", kind)
    if folder is None:
        return None
    return next((p for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes and p.is_file()), None)


def default_clip() -> Path | None:
    """The first video of ``$STREAMER_SHARED/media/video``, if there is one."""
    return _first_file("video", (".mp4", ".mkv", ".mov", ".webm"))


def default_style() -> Path | None:
    """The first style image of ``$STREAMER_SHARED/media/style``, if there is one."""
    return _first_file("style", (".jpg", ".jpeg", ".png"))


def load_bench_model(name: str, weights_dir: str | None) -> tuple[StyleModel, str, str]:
    """(model, weights id, note). Weights already on disk are used (never downloaded: speed needs no
    download); without them, random weights of the same architecture, for speed only."""
    folders = [weights_dir] if weights_dir is not None else [None, _shared("weights")]
    for folder in folders:
        try:
            model = load_model(name, folder, download=False)
            return model, weights_fingerprint(name, folder), "real weights"
        except WeightsError:
            continue
    from engines.backends.cache import graph_weights_id

    model = random_weights_model(name)
    log.warning("%s: weights not found locally; benchmarking RANDOM weights (speed only, images meaningless)", name)
    return model, graph_weights_id(model), "RANDOM weights (speed only)"


def frame_tensor(width: int, height: int) -> torch.Tensor:
    """A real photo at (H, W) when the shared media has one, else smooth noise: speed does not care."""
    from PIL import Image

    from engines.stylizer import to_tensor

    photo = _first_file("content", (".jpg", ".jpeg", ".png"))
    if photo is not None:
        rgb = np.asarray(Image.open(photo).convert("RGB").resize((width, height), Image.Resampling.BILINEAR))
        return to_tensor(rgb)
    g = torch.Generator().manual_seed(0)
    small = torch.rand(1, 3, max(2, height // 16), max(2, width // 16), generator=g)
    return torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)


# -- the command --------------------------------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed of every model x engine on this machine",
                       description="Time every model x engine x precision side by side: content-side ms/frame, "
                                   "style encoding, end-to-end video render frames/s, GFLOP/s vs the machine's peak.")
    p.add_argument("--models", nargs="+", choices=(*MODEL_NAMES, "all"), default=None,
                   help=f"default: all on a GPU, {' '.join(CPU_DEFAULT_MODELS)} on a CPU")
    p.add_argument("--engines", nargs="+", choices=ENGINE_NAMES[1:], default=None,
                   help="default: every engine available here (torch fp32 eager is always run as the baseline)")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=None,
                   help="default: fp32 and int8 (OpenVINO) on a CPU, fp32 and fp16 on a GPU")
    p.add_argument("--sizes", nargs="+", type=frame_size, default=None, metavar="WxH",
                   help="frame sizes, WIDTHxHEIGHT or N for a square (default 640x360 1280x720 256 512)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per engine and size, at most (default 5)")
    p.add_argument("--warmup", type=int, default=4,
                   help="untimed runs first, within the budget (default 4: torch eager needs 3 to settle)")
    p.add_argument("--budget", type=float, default=6.0,
                   help="seconds of timing per engine and size; slow ones stop early, after 2 runs (default 6)")
    p.add_argument("--render-frames", type=int, default=48,
                   help="frames of the clip to render end to end, at most (default 48; 0 = skip the render)")
    p.add_argument("--clip", default=None, help="video for the end-to-end render (default: the first in $STREAMER_SHARED/media/video)")
    p.add_argument("--style", default=None, help="style image (default: the first in $STREAMER_SHARED/media/style, else noise)")
    p.add_argument("--quick", action="store_true",
                   help="a one-minute run: microast at 640x360, 3 repeats, 24 render frames")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="write the results as JSON to FILE ('-' or no FILE: to stdout instead of the table)")
    p.add_argument("--weights-dir", default=None, help="folder with weight files (<dir>/<model>/<file>)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if present")
    p.set_defaults(run=run)


def _plan(args: argparse.Namespace, device: torch.device) -> tuple[list[str], list[str], list[str], list]:
    gpu = device.type == "cuda"
    if args.quick:
        models = args.models or ["microast"]
        sizes = args.sizes or [(640, 360)]
        args.repeats = min(args.repeats, 3)
        args.render_frames = min(args.render_frames, 24)
    else:
        models = args.models or (list(MODEL_NAMES) if gpu else list(CPU_DEFAULT_MODELS))
        sizes = args.sizes or list(DEFAULT_SIZES)
    if "all" in models:
        models = list(MODEL_NAMES)
    engines = args.engines or [e for e in ENGINE_NAMES[1:] if e not in GPU_ONLY_ENGINES or gpu]
    if "torch" not in engines:
        engines = ["torch", *engines]
    precisions = args.precisions or (["fp32", "fp16"] if gpu else ["fp32", "int8"])
    if args.repeats < 1 or args.warmup < 0 or args.budget <= 0 or args.render_frames < 0:
        raise InputError("--repeats must be >= 1, --warmup and --render-frames >= 0, --budget > 0")
    return list(dict.fromkeys(models)), list(dict.fromkeys(engines)), list(dict.fromkeys(precisions)), sizes


def run(args: argparse.Namespace) -> int:
    from streamer.options import pick_device

    device = pick_device(args.device)
    models, engines, precisions, sizes = _plan(args, device)
    clip = Path(args.clip) if args.clip else default_clip()
    if clip is not None and not clip.exists():
        raise InputError(f"clip not found: {clip}")
    style_path = Path(args.style) if args.style else default_style()
    if style_path is not None:
        from streamer.imageio import image_size

        image_size(style_path, "style image")  # missing or broken: fail before the minutes of timing
    output = json_output(args, clip, style_path)
    try:
        report = measure(args, device, models, engines, precisions, sizes, clip, style_path)
        if output is not None:
            with output.file() as f:
                f.write(json.dumps(report, indent=1).encode())
            output.commit()
    finally:
        if output is not None:
            output.discard()  # a no-op once written
    print_stdout(json.dumps(report, indent=1) if args.json == "-" else format_report(report))
    return 0


def json_output(args: argparse.Namespace, clip: Path | None, style_path: Path | None) -> AtomicOutput | None:
    """``--json FILE`` taken before the minutes of timing: a folder, a missing or read-only folder, a file the
    run reads, or another run writing it fail now, in one line; the results are written there at the end."""
    from streamer.job import Job
    from streamer.options import run_inputs

    if args.json is None or args.json == "-":
        return None
    path = Path(args.json)
    if path.is_dir():
        raise InputError(f"--json {path} is a folder; give a file name, e.g. {path / 'bench.json'}")
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    clip_input = [("--clip video", clip)] if clip is not None else []
    styles = [style_path] if style_path is not None else []
    refuse_same_file([path], [*clip_input, *run_inputs(Job(weights_dir=args.weights_dir), styles)])
    return AtomicOutput(path)


def measure(args: argparse.Namespace, device: torch.device, models: list[str], engines: list[str],
            precisions: list[str], sizes: list, clip: Path | None, style_path: Path | None) -> dict:
    """Every model x engine x precision x size timed in turns, and the end-to-end renders: the report."""
    machine = describe_machine()
    peak = measure_peak_gflops()
    log.info("machine: %s, %d cores; fp32 matmul peak %.0f GFLOP/s", machine["cpu"], machine["physical_cores"], peak)

    rows: list[Row] = []
    renders: list[RenderRow] = []
    model_info: dict[str, dict] = {}
    for name in models:
        peak = max(peak, measure_peak_gflops())  # re-measured: a busy moment must not set the ceiling
        model, weights_id, weights_note = load_bench_model(name, args.weights_dir)
        info = model_info[name] = {"weights": weights_note, "gflop": {}}
        code, info["style_encode_ms"] = _style_code(model, style_path)
        built: dict[str, object] = {}
        labels = ["torch/fp32", *(engine_label(k, p) for k in engines for p in precisions)]
        for label in dict.fromkeys(labels):  # torch fp32 eager first: the baseline
            kind, prec = label.split("/")
            if prec == "int8" and kind != "openvino" and not args.precisions:
                continue  # by default int8 is shown where it exists (OpenVINO on a CPU)
            reason = engine_class(kind).unavailable_reason(device, prec)
            if prec == "int8" and model.int8_refusal:
                reason = model.int8_refusal
            if reason:
                rows.extend(Row(name, kind, prec, f"{w}x{h}", note=f"n/a: {reason}") for w, h in sizes)
                continue
            try:
                t = time.perf_counter()
                built[label] = create_engine(kind, model, device, prec, weights_id=weights_id)
                info.setdefault("engine_setup_s", {})[label] = round(time.perf_counter() - t, 2)
            except (StreamerError, RuntimeError, OSError) as exc:
                rows.extend(Row(name, kind, prec, f"{w}x{h}", note=f"failed: {exc}") for w, h in sizes)
        base_label = "torch/fp32"
        for w, h in sizes:
            rows.extend(_bench_size(name, model, built, base_label, code, w, h, args, info))
        if args.render_frames and clip is not None:
            renders.extend(_bench_render(name, model, built, base_label, code, clip, args, rows))
        for engine in built.values():
            engine.close()

    order = {m: i for i, m in enumerate(models)}
    size_order = {f"{w}x{h}": i for i, (w, h) in enumerate(sizes)}
    engine_order = {e: i for i, e in enumerate(["torch", *engines])}
    rows.sort(key=lambda r: (order[r.model], size_order[r.size], engine_order.get(r.engine, 99), r.precision))
    peak = max(peak, measure_peak_gflops())
    for r in rows:  # against the best ceiling seen in the whole run
        if r.gflops:
            r.peak_pct = round(100.0 * r.gflops / peak, 1)
    return {"machine": machine, "peak_gflops": round(peak, 1),
            "clip": str(clip) if clip else None, "models": model_info,
            "content": [asdict(r) for r in rows], "render": [asdict(r) for r in renders],
            "upscale": bench_upscale(sizes, args)}


def _style_code(model: StyleModel, style_path: Path | None):
    """The style code used for every run, and what encoding one style costs (ms, 512 px short side, fp32 CPU)."""
    from streamer.imageio import load_image

    if style_path is not None:
        rgb = load_image(style_path, "style image")
    else:
        rgb = (np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8)
    encode_style(model, rgb, 128)  # warm-up (allocator, oneDNN primitives)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        code = encode_style(model, rgb, 512)
        times.append(time.perf_counter() - t)
    return code, round(median_ms(times), 1)


def _bench_size(name, model, built, base_label, code, w, h, args, info) -> list[Row]:
    from engines.stylizer import pad_to_multiple

    image, _ = pad_to_multiple(frame_tensor(w, h), model.factor)
    ph, pw = image.shape[-2:]
    flops = content_flops(model, ph, pw)
    info["gflop"][f"{w}x{h}"] = round(flops / 1e9, 2)
    alpha = torch.tensor(1.0)
    code_t = model.code_tensors(code)
    outputs, failed = {}, {}
    for label, engine in built.items():
        try:
            engine.prepare(ph, pw)
            outputs[label] = engine.run(image, alpha, code_t).cpu()
        except Exception as exc:  # one engine failing at one size must not end the bench
            log.debug("bench %s %s failed", label, name, exc_info=True)
            failed[label] = f"failed: {exc.__class__.__name__}: {exc}"
    runs = {label: synced_call(lambda e=built[label]: e.run(image, alpha, code_t)) for label in outputs}
    log.info("bench %s %dx%d: %s", name, w, h, ", ".join(runs))
    times = time_side_by_side(runs, args.repeats, max(0, args.warmup - 1), args.budget)
    ref = outputs.get(base_label)
    base_ms = median_ms(times[base_label]) if base_label in times else None
    rows = []
    for label in built:
        kind, prec = label.split("/")
        row = Row(name, kind, prec, f"{w}x{h}")
        if label in failed:
            row.note = failed[label]
        else:
            row.times_ms = [round(t * 1000, 2) for t in times[label]]
            row.runs = len(row.times_ms)
            row.ms = round(median_ms(times[label]), 2)
            row.fps = round(1000.0 / row.ms, 2)
            row.speedup = round(base_ms / row.ms, 2) if base_ms else None
            if ref is not None and label != base_label:
                row.psnr_db = round(min(psnr(outputs[label], ref), 199.0), 1)
            row.gflops = round(flops / (row.ms / 1000.0) / 1e9, 1)
        rows.append(row)
    return rows


def bench_upscale(sizes, args) -> list[dict]:
    """ms a frame of each way back to the output size (``--upscale``) from a working size at
    :data:`UPSCALE_FROM` of it, the ways interleaved; on the CPU (where the frames are for every CPU engine)."""
    from engines.stylizer import resize_to, short_side_shape, to_uint8
    from engines.upscale import UPSCALE_METHODS, upscale

    rows = []
    for w, h in sizes:
        big = to_uint8(frame_tensor(w, h))
        sh, sw = short_side_shape(h, w, max(1, round(min(w, h) * UPSCALE_FROM)))
        small = resize_to(big, (sw, sh))  # a stand-in stylization: the speed does not depend on the picture
        runs = {m: (lambda m=m: upscale(small, big, m)) for m in UPSCALE_METHODS}
        times = time_side_by_side(runs, max(5, args.repeats), 2, min(1.0, args.budget))
        rows.append({"size": f"{w}x{h}", "from": f"{sw}x{sh}",
                     **{f"{m}_ms": round(median_ms(times[m]), 2) for m in UPSCALE_METHODS}})
    return rows


def _bench_render(name, model, built, base_label, code, clip, args, rows) -> list[RenderRow]:
    """End-to-end: decode, stylize, encode the clip's first frames, each engine in turn, in RENDER_ROUNDS
    rounds (A, B, C, A, B, C) so a change in machine load hits every engine alike."""
    from engines.stylizer import Stylizer

    try:
        from streamer.video import render_video_file
    except ImportError as exc:
        return [RenderRow(name, *label.split("/"), note=f"n/a: streamer.video not available ({exc})")
                for label in built]
    plan = {}
    for label in built:
        kind, prec = label.split("/")
        ms = [r.ms for r in rows if r.model == name and r.engine == kind and r.precision == prec and r.ms]
        est_s = (min(ms) / 1000.0) if ms else 1.0  # a rough per-frame cost: keep slow engines to the budget
        frames = int(max(2 * RENDER_ROUNDS, min(args.render_frames, 4 * args.budget / est_s)))
        plan[label] = -(-frames // RENDER_ROUNDS)  # frames per round
    done = {label: [0, 0.0] for label in built}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="streamer-bench-") as tmp:
        for _ in range(RENDER_ROUNDS):
            for label, engine in built.items():
                if label in failed:
                    continue
                try:
                    stats = render_video_file(clip, Path(tmp) / "out.mp4", Stylizer(model, engine), code,
                                              progress=False, max_frames=plan[label])
                    if stats.interrupted:  # the render kept its frames and returned: the bench stops here
                        raise Interrupted(stats.signum)
                    done[label][0] += stats.frames
                    done[label][1] += stats.seconds
                except Exception as exc:
                    log.debug("render with %s failed", label, exc_info=True)
                    failed[label] = f"failed: {exc.__class__.__name__}: {exc}"
                time.sleep(SWITCH_PAUSE_S)
    out = []
    for label, (frames, seconds) in done.items():
        kind, prec = label.split("/")
        if label in failed:
            out.append(RenderRow(name, kind, prec, note=failed[label]))
        else:
            out.append(RenderRow(name, kind, prec, round(frames / seconds, 2) if seconds else None, frames))
    base = next((r.fps for r in out if f"{r.engine}/{r.precision}" == base_label and r.fps), None)
    for r in out:
        if r.fps and base:
            r.speedup = round(r.fps / base, 2)
    return out
