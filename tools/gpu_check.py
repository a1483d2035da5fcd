"""The NVIDIA proof of the torch CUDA engine: quality, engine speed and GPU-resident render speed, as JSON.

Made for a machine with only a CUDA torch (2.11+), Triton and numpy (no PyAV, PIL, TensorRT or network)
and at most 64 MiB carried in, so its media is one small array made here beforehand:

    # here (PyAV, PIL): 240 real frames of the test clip (320x180), a real photo and painting -> 43 MiB,
    # and read-only copies of the microast and adain-r31 weights (6 MiB): .gpu_check/ (gitignored)
    python tools/gpu_check.py --prepare
    # on the GPU machine: the device tool's run with carry=[".gpu_check"] (50 MiB in all), timeout_s=450:
    timeout 420 python3 tools/gpu_check.py         # JSON to $OUT/gpu_check.json, rewritten after every row

For each model (adain with random weights unless its relu4_1 files are in --weights-dir; adain-r31 and
microast real), fp16 and bf16, 512x512 and 1280x720, in priority order until --budget-s is spent:

* ``psnr_db``: the torch-cuda engine against the fp32 eager graph on the GPU (TF32 off), on the real
  photo, from the first run (the compile); ``psnr_replay_db``: the same from a run after the warm-up
  (a CUDA graph replay);
* ``thread_ok``: the engine called from a second thread, as the video pipeline and live do (with
  ``thread_max_diff`` against the first thread's output, or ``thread_error``);
* ``engine_ms``: engine-only ms/frame at ``--batch`` frames per call, by CUDA events;
* ``engine_ms_b1``: the same, one frame per call (the live case);
* ``render_fps``: end-to-end frames/s of Stylizer.stylize_frames on real clip frames (uint8 in from
  pinned host memory on a copy stream, uint8 out into pinned memory, 3 batches in flight).

A failure in one combination is recorded in its row (``error``), and the next one runs.

``--dry-run`` runs every step on the CPU at tiny sizes (the suite runs it so the script cannot rot):
the eager torch engine in fp32 stands in for the compiled one, and times are wall-clock.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
import types
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tools.shared import shared_dir, shared_media  # noqa: E402

DEFAULT_DIR = ROOT / ".gpu_check"
#: the weight folders --prepare copies (adain's VGG-19 relu4_1 files are not in the shared folder)
CARRIED_WEIGHTS = ("microast", "adain-r31")
SIZES = ((512, 512), (1280, 720))
MODELS = ("adain", "microast", "adain-r31")
PRECISIONS = ("fp16", "bf16")
TARGETS = {"adain 512x512 fp16 engine fps": 1000.0, "microast 1280x720 fp16 engine fps": 500.0,
           "render / engine": 0.7}


def _shim_missing_modules() -> None:
    """platformdirs (cache folders) may be missing on a bare GPU machine; the check passes its own."""
    try:
        import platformdirs  # noqa: F401
    except ImportError:
        shim = types.ModuleType("platformdirs")
        base = Path(tempfile.gettempdir()) / "streamer-gpu-check"
        shim.user_cache_dir = lambda name, *a, **k: str(base / "cache" / name)
        shim.user_data_dir = lambda name, *a, **k: str(base / "data" / name)
        shim.user_config_dir = lambda name, *a, **k: str(base / "config" / name)
        sys.modules["platformdirs"] = shim


def _one_line(exc: BaseException) -> str:
    """An error in one line, as engines.backends words it (imported here: after the platformdirs shim)."""
    from engines.backends import _one_line as one_line

    return one_line(exc)


# -- --prepare (runs where PyAV and PIL are) ---------------------------------------------------------
def prepare(clip: Path, media: Path, frames: int, size: tuple[int, int], shared: Path) -> None:
    import av
    from PIL import Image

    w, h = size
    out = []
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            out.append(np.asarray(frame.to_image().convert("RGB").resize((w, h), Image.Resampling.LANCZOS)))
            if len(out) >= frames:
                break
    photo = Image.open(shared / "media" / "content" / "golden_gate.jpg").convert("RGB")
    style = Image.open(shared / "media" / "style" / "brushstrokes.jpg").convert("RGB")
    scale = 512 / min(style.size)
    style = style.resize((round(style.size[0] * scale), round(style.size[1] * scale)), Image.Resampling.LANCZOS)
    media.parent.mkdir(parents=True, exist_ok=True)
    with open(media, "wb") as f:  # a file object: np.savez would append ".npz" to a path
        np.savez(f, frames=np.stack(out), photo=np.asarray(photo.resize((1280, 720), Image.Resampling.LANCZOS)),
                 style=np.asarray(style))
    print(f"gpu_check: {len(out)} frames {w}x{h}, photo, style -> {media} ({media.stat().st_size / 2**20:.1f} MiB)")


def copy_weights(source: Path, dest: Path, names: tuple[str, ...] = CARRIED_WEIGHTS) -> list[Path]:
    """Read-only copies of the weight folders ``names`` under ``dest`` (a copy made before replaced): nothing
    in the run can change the weights it measures."""
    copied = []
    for name in names:
        src, dst = source / name, dest / name
        if not src.is_dir():
            continue
        if dst.exists():
            for path in (dst, *dst.rglob("*")):
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
        for path in (*dst.rglob("*"), dst):  # the folder last: its files first
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        copied.append(dst)
    return copied


# -- the check ----------------------------------------------------------------------------------------
class Timer:
    """ms of ``fn`` per call: CUDA events on a GPU (the launch alone would time nothing), else wall-clock."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def ms_per_call(self, fn, calls: int) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / calls
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t) * 1000.0 / calls


def load_check_model(name: str, weights_dir: Path | None):
    from engines.models import load_model

    try:
        return load_model(name, weights_dir, download=False), "real"
    except Exception:
        from engines.models import random_weights_model

        return random_weights_model(name), "random"


def make_engine(model, precision: str, device: torch.device, cache_dir: Path, dry: bool):
    from engines.backends import create_engine
    from engines.backends.cache import EngineCache

    if dry:
        return create_engine("torch", model, device, precision)
    from engines.backends.torch_cuda_engine import TorchCudaEngine

    return TorchCudaEngine(model, device, precision, cache=EngineCache(cache_dir))


def second_thread_call(fn, expected: torch.Tensor, timeout_s: float = 300.0) -> dict:
    """``fn()`` from a thread of its own, as the video pipeline and live call the engine: its outcome as row
    fields (never an exception: the row keeps what was measured before)."""
    result: dict = {}

    def call() -> None:
        try:
            with torch.inference_mode():
                result["out"] = fn()
        except BaseException as exc:
            result["error"] = _one_line(exc)

    thread = threading.Thread(target=call, name="gpu-check-second-thread", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return {"thread_ok": False, "thread_error": f"no answer in {timeout_s:.0f} s"}
    if "error" in result:
        return {"thread_ok": False, "thread_error": result["error"]}
    diff = float((result["out"].float() - expected.float()).abs().max())
    return {"thread_ok": True, "thread_max_diff": round(diff, 6)}


def psnr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    mse = float((out.float() - ref.float()).pow(2).mean())
    return round(min(199.0, 10 * np.log10(1.0 / max(mse, 1e-20))), 2)


def check_one(model, weights: str, precision: str, size: tuple[int, int], media: dict, device: torch.device,
              args, timer: Timer) -> dict:
    w, h = size
    row = {"model": model.name, "weights": weights, "precision": precision, "size": f"{w}x{h}",
           "batch": args.batch}
    t0 = time.perf_counter()
    engine = make_engine(model, precision, device, Path(args.cache), args.dry_run)
    try:
        measure(engine, model, precision, size, media, device, args, timer, row, t0)
    except Exception as exc:  # the row keeps what was measured before
        row["error"] = _one_line(exc)
    finally:  # nor may a failed row leave its compiled graphs (or its thread) to the next ones
        engine.close()
    return row


def measure(engine, model, precision: str, size: tuple[int, int], media: dict, device: torch.device, args,
            timer: Timer, row: dict, t0: float) -> None:
    """Fill ``row`` for one engine: quality, engine speed, a call from a second thread, render speed."""
    from engines.backends.graph import gpu_graph
    from engines.backends.torch_cuda_engine import exact_fp32
    from engines.device_frames import FrameMover
    from engines.stylizer import Stylizer, frames_to_input, pad_to_multiple, resize_tensor

    w, h = size
    row["engine"] = engine.describe()
    stylizer = Stylizer(model, engine)
    code = stylizer.encode_style(media["style"], 512)
    alpha, code_t = stylizer._device_style(code, 1.0)
    photo = resize_tensor(frames_to_input(torch.from_numpy(media["photo"]).to(device)), h, w)
    image, _ = pad_to_multiple(photo, model.factor)
    batch = image.expand(args.batch, -1, -1, -1).contiguous()
    with torch.inference_mode():
        out = engine.run(batch, alpha, code_t)  # compiles and checks (torch-cuda) at this shape
        with exact_fp32():
            ref = gpu_graph(model).to(device)(image, alpha, *code_t)
        row["setup_s"] = round(time.perf_counter() - t0, 1)
        row["psnr_db"] = psnr_db(out[:1], ref)
        row["out_std"] = round(float(out.float().std()), 3)
        for _ in range(args.warmup):
            engine.run(batch, alpha, code_t)
        row["psnr_replay_db"] = psnr_db(engine.run(batch, alpha, code_t)[:1], ref)
        row.update(second_thread_call(lambda: engine.run(batch, alpha, code_t), out))
        row["engine_ms"] = round(timer.ms_per_call(lambda: engine.run(batch, alpha, code_t), args.iters)
                                 / args.batch, 3)
        row["engine_fps"] = round(1000.0 / row["engine_ms"], 1)
        if args.batch1 and precision == "fp16":  # the live case, for the fp16 targets only (a second compile)
            one = image.contiguous()
            for _ in range(args.warmup):
                engine.run(one, alpha, code_t)
            row["engine_ms_b1"] = round(timer.ms_per_call(lambda: engine.run(one, alpha, code_t), args.iters), 3)
    # end to end: uint8 host frames at this size -> uint8 host frames, batches in flight
    host = frames_at(media["frames"], h, w, device)
    mover = FrameMover(device, depth=3)
    pending: deque = deque()
    done = 0

    def render() -> int:
        nonlocal done
        for i in range(0, len(host) - args.batch + 1, args.batch):
            dev = mover.upload(host[i:i + args.batch])
            if len(pending) >= mover.depth:
                done += len(pending.popleft().result())
            pending.append(mover.download(stylizer.stylize_frames(dev, code, 1.0)))
        while pending:
            done += len(pending.popleft().result())
        return done

    render()  # warm-up: every shape seen once
    done = 0
    t = time.perf_counter()
    frames = render()
    seconds = time.perf_counter() - t
    row["render_frames"] = frames
    row["render_fps"] = round(frames / seconds, 1)
    row["render_vs_engine"] = round(row["render_fps"] / row["engine_fps"], 3)


def frames_at(frames: np.ndarray, h: int, w: int, device: torch.device) -> np.ndarray:
    """The carried frames at (h, w) as host uint8 (resized on the device once, before any timing)."""
    from engines.stylizer import frames_to_input, output_to_frames, resize_tensor

    out = []
    for i in range(0, len(frames), 16):
        x = frames_to_input(torch.from_numpy(frames[i:i + 16]).to(device))
        out.append(output_to_frames(resize_tensor(x, h, w)).cpu().numpy())
    return np.concatenate(out)


def verdicts(rows: list[dict]) -> dict:
    """The issue's targets against what was measured (None: not measured)."""
    def find(model, size, prec="fp16"):
        return next((r for r in rows if r["model"] == model and r["size"] == size and r["precision"] == prec
                     and "engine_fps" in r), None)

    a, m = find("adain", "512x512"), find("microast", "1280x720")
    ratios = [r["render_vs_engine"] for r in rows if "render_vs_engine" in r]
    return {
        "adain 512x512 fp16 engine fps >= 1000": None if a is None else a["engine_fps"] >= 1000.0,
        "microast 1280x720 fp16 engine fps >= 500": None if m is None else m["engine_fps"] >= 500.0,
        "render >= 70% of engine (worst)": None if not ratios else min(ratios) >= 0.7,
        "worst render / engine": min(ratios) if ratios else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepare", action="store_true", help="make the media array from the clip (needs PyAV, PIL)")
    p.add_argument("--clip", type=Path, default=shared_media() / "video" / "cutBunny.mp4")
    p.add_argument("--shared", type=Path, default=shared_dir())
    p.add_argument("--frames", type=int, default=240, help="--prepare: frames to keep (default 240)")
    p.add_argument("--prepare-size", default="320x180", help="--prepare: WxH of the kept frames (default 320x180)")
    p.add_argument("--media", type=Path, default=DEFAULT_DIR / "media.npz")
    p.add_argument("--weights-dir", type=Path, default=DEFAULT_DIR / "weights",
                   help="weight folders (--prepare copies microast and adain-r31 there, read-only)")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "streamer-gpu-check-engines"))
    p.add_argument("--json", type=Path, default=None, help="write the report here (default: $OUT/gpu_check.json)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--batch", type=int, default=8, help="frames per engine call (default 8)")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-batch1", dest="batch1", action="store_false", help="skip the one-frame-per-call timing")
    p.add_argument("--budget-s", type=float, default=300.0, help="stop starting new checks after this (default 300)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, eager fp32: proves the script runs")
    args = p.parse_args(argv)
    if args.prepare:
        w, h = map(int, args.prepare_size.lower().split("x"))
        prepare(args.clip, args.media, args.frames, (w, h), args.shared)
        for folder in copy_weights(args.shared / "weights", args.weights_dir):
            print(f"gpu_check: weights -> {folder} (read-only)")
        return 0
    _shim_missing_modules()
    started = time.perf_counter()
    if args.dry_run:
        device, sizes, args.batch, args.iters, args.warmup = torch.device("cpu"), ((48, 32),), 2, 1, 0
        args.models, args.precisions, args.batch1 = ["microast"], ["fp32"], False  # eager fp32: fast on a CPU
    elif not torch.cuda.is_available():
        print("gpu_check: error: no CUDA GPU visible to torch (use --dry-run on a CPU)", file=sys.stderr)
        return 3
    else:
        device, sizes = torch.device("cuda"), SIZES
        torch.backends.cudnn.benchmark = True
    data = np.load(args.media)
    media = {k: data[k] for k in ("frames", "photo", "style")}
    if args.dry_run:
        media["frames"] = media["frames"][:4]
    report = {"dry_run": args.dry_run, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "media_frames": int(len(media["frames"])),
              "results": [], "skipped": []}
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = None
    out_path = args.json or Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    timer = Timer(device)
    # priority: the targets first (fp16 everywhere), then bf16
    plan = [(prec, name, size) for prec in args.precisions for name in args.models for size in sizes]
    models = {}
    for prec, name, size in plan:
        label = f"{name} {prec} {size[0]}x{size[1]}"
        if time.perf_counter() - started > args.budget_s:
            report["skipped"].append(f"{label}: over the time budget")
            continue
        if name not in models:
            models[name] = load_check_model(name, args.weights_dir)
        model, weights = models[name]
        try:
            row = check_one(model, weights, prec, size, media, device, args, timer)
        except Exception as exc:  # one failing combination must not lose the others
            row = {"model": name, "precision": prec, "size": f"{size[0]}x{size[1]}", "error": _one_line(exc)}
        report["results"].append(row)
        print("gpu_check:", json.dumps(row), flush=True)
        report["verdicts"] = verdicts(report["results"])
        report["elapsed_s"] = round(time.perf_counter() - started, 1)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=1))  # after every row: a timeout keeps what was done
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["verdicts"] = verdicts(report["results"])
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=1))
    print(f"gpu_check: {len(report['results'])} checks in {report['elapsed_s']} s -> {out_path}")
    print("gpu_check: verdicts:", json.dumps(report["verdicts"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
