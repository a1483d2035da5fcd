"""Command-line options shared by render, live and bench, and what they build: a Stylizer and styles."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engines.backends import ENGINE_NAMES, PRECISIONS, create_engine
from engines.errors import DeviceError, InputError
from engines.models import MODEL_NAMES, StyleCode, check_model_name, default_model, load_model, weights_fingerprint
from engines.ops import mix_codes
from engines.precision import BF16_MIN_PSNR_DB, auto_precision, check_bf16
from engines.style_cache import StyleCache
from engines.stylizer import Stylizer, short_side_shape
from engines.upscale import UPSCALE_METHODS
from streamer.job import Job, check_style_weights
from streamer.imageio import check_pixels, image_size, is_image_path, list_images, load_image

log = logging.getLogger(__name__)


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and engine")
    g.add_argument("--model", default="auto", choices=("auto", *MODEL_NAMES),
                   help="network; auto = adain on an NVIDIA GPU, microast on a CPU (default: auto)")
    g.add_argument("--weights-dir", default=None,
                   help="folder with weight files (<dir>/<model>/<file>); also STREAMER_WEIGHTS_DIR")
    g.add_argument("--decoder", default=None, metavar="PATH",
                   help="adain/adain-r31: your own decoder (DIR/decoder.pth from `streamer train`)")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if present")
    g.add_argument("--precision", default="auto", choices=("auto", *PRECISIONS),
                   help="auto = fp16 on an NVIDIA GPU; on a CPU, bf16 for live where the CPU has it natively "
                        "(checked against fp32 first), else fp32 (default). int8: OpenVINO, VGG models, "
                        "calibrated once (about 1.7x, >= 33 dB)")
    g.add_argument("--engine", default="auto", choices=ENGINE_NAMES,
                   help="inference backend; auto = the fastest available (default)")


def add_engine_wait_option(p: argparse._ActionsContainer) -> None:
    """--engine-wait: render and live start on a ready engine while the fastest one builds, unless told to wait."""
    p.add_argument("--engine-wait", action="store_true",
                   help="with --engine auto: wait for the fastest engine's first-time build (ONNX export, TensorRT, "
                        "compile) before the first frame, instead of starting on a ready engine (torch) and "
                        "switching to the fast one, built and checked in the background, between two frames")


def add_style_options(p: argparse.ArgumentParser, several_means: str = "mixed") -> None:
    g = p.add_argument_group("style")
    g.add_argument("--style", "-s", action="extend", nargs="+", required=True, metavar="IMAGE",
                   help=f"style image(s) or folder(s); several are {several_means}")
    g.add_argument("--style-weights", type=float, nargs="+", default=None, metavar="W",
                   help="interpolation weights, one per style (normalised to sum to 1)")
    g.add_argument("--style-size", type=int, default=512,
                   help="short side the style image is resized to before encoding (0 = original; default 512)")
    g.add_argument("--alpha", type=float, default=1.0, help="content/style trade-off in [0, 1] (default 1)")
    g.add_argument("--preserve-color", action="store_true",
                   help="keep the content's colours (luminance-only transfer)")


def add_upscale_option(p: argparse._ActionsContainer) -> None:
    """--upscale: how a stylization made at a smaller --size returns to the output size (render and live)."""
    p.add_argument("--upscale", default=UPSCALE_METHODS[0], choices=UPSCALE_METHODS,
                   help="how a stylization made at a smaller --size returns to the output size: guided (default: "
                        "edges and detail from the full-size frame, colours and strokes from the stylization) or "
                        "bicubic (plain scaling: as soft as the working size)")


def alpha_value(text: str | float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--alpha must be a number between 0 and 1, not '{text}'") from None
    if not 0.0 <= value <= 1.0:
        raise InputError(f"--alpha must be between 0 and 1, not {value:g}")
    return value


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but no CUDA GPU is visible to PyTorch; use --device cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device, use: str = "render") -> str:
    """``--precision auto`` (engines.precision): fp16 on CUDA; on a CPU bf16 for live where it is native, else fp32."""
    return name if name != "auto" else auto_precision(device.type, use)[0]


def build_stylizer(job: Job, shape_hint: tuple[int, int] | None = None, use: str = "render",
                   background: bool = False) -> Stylizer:
    """The model (weights resolved or downloaded) and the engine the job asks for; ``use`` (render, live)
    steers ``--precision auto`` (engines.precision). ``background`` (render video/folder, live): with
    ``--engine auto`` and no ``--engine-wait``, when the fastest engine has its first-time build ahead, start on
    a ready one and build it behind (engines.backends.switch)."""
    device = pick_device(job.device)
    name = job.model
    if name == "auto":
        name = default_model(device.type == "cuda")
        log.info("model: %s (auto: %s)", name, "CUDA GPU present" if device.type == "cuda" else
                 "CPU only; adain runs at about one frame per second here")
    check_model_name(name)
    model = load_model(name, job.weights_dir, decoder=job.decoder)
    weights_id = weights_fingerprint(name, job.weights_dir, job.decoder)
    precision = resolve_precision(job.precision, device, use)
    if background and job.engine == "auto" and not job.engine_wait:
        engine = _without_waiting(job, model, device, precision, weights_id, shape_hint)
        if engine is not None:
            return Stylizer(model, engine, weights_id)
    if job.precision == "auto" and device.type == "cpu" and precision != "fp32":
        engine = _native_low_precision(job.engine, model, precision, weights_id, shape_hint)
        if engine is not None:
            return Stylizer(model, engine, weights_id)
        precision = "fp32"
    engine = create_engine(job.engine, model, device, precision, weights_id=weights_id, shape_hint=shape_hint)
    return Stylizer(model, engine, weights_id)


def _without_waiting(job: Job, model, device: torch.device, precision: str, weights_id: str,
                     shape_hint: tuple[int, int] | None) -> Any:
    """A ready engine with the fastest building behind it, or None: nothing to wait for (built already, or
    nothing faster than the ready engine). The candidates are ``--engine auto``'s, in its order. ``--precision
    auto``'s bf16 on a CPU builds the fp32 engines here: OpenVINO's bf16 reads the same ONNX export, so from the
    next start live takes it as always, after its check (:func:`check_live_precision`)."""
    from engines.backends import usable_engines
    from engines.backends.switch import start_without_waiting

    if job.precision == "auto" and device.type == "cpu":
        precision = "fp32"
    try:
        candidates = [(kind, precision) for kind, _ in usable_engines(model.name, device, precision)]
    except DeviceError:
        return None  # no engine runs this precision here: the usual path says so
    source = {"weights_dir": job.weights_dir, "decoder": job.decoder}
    return start_without_waiting(model, device, candidates, weights_id, shape_hint, source)


def finish_background_build(stylizer: Any, wait: bool = True) -> None:
    """At the end of a render or live session: a faster engine still building in the background is let finish
    (``wait``), so the engine cache holds it and the next run starts on it; said in one line. Ctrl-C stops the
    wait. Without ``wait`` (the run was interrupted, or failed) the build is stopped: the next run builds again.
    Safe with any ``stylizer`` (None, a stand-in, a plain engine: nothing to do)."""
    from engines.backends.switch import UpgradingEngine

    engine = getattr(stylizer, "engine", None)
    if not isinstance(engine, UpgradingEngine):
        return
    engine.close()  # no more frames: the build thread stops after the build itself (the cache is written then)
    if not wait:
        engine.abandon()  # its child process stops; the next run builds again
        engine.wait_for_build(10.0)
        return
    if engine.building:
        log.info("engine: letting the background build finish, so the next run starts on it (Ctrl-C skips it)")
    engine.wait_for_build()


def _native_low_precision(kind: str, model, precision: str, weights_id: str, shape_hint) -> Any:
    """``--precision auto``'s bf16 on a CPU: only OpenVINO runs it natively; any other case, or a failed build,
    gives None (fp32), said in one line."""
    if kind not in ("auto", "openvino"):
        log.info("precision: fp32 (auto: only the openvino engine runs %s natively on a CPU)", precision)
        return None
    try:
        engine = create_engine("openvino", model, torch.device("cpu"), precision, weights_id=weights_id,
                               shape_hint=shape_hint)
    except Exception as exc:  # noqa: BLE001 - the fp32 engines are the fallback
        log.warning("precision: %s could not be built (%s); using fp32", precision, str(exc).splitlines()[0][:160])
        return None
    log.info("precision: %s (auto: %s)", precision, auto_precision("cpu", "live")[1])
    return engine


def check_live_precision(stylizer: Stylizer, job: Job, picture: Callable[[], Any], code,
                         shape_hint: tuple[int, int] | None = None) -> Stylizer:
    """Live on a CPU with ``--precision auto`` and bf16: held to fp32 on ``picture()`` (a real RGB picture; once per
    engine and CPU, cached); under the bar, the same stylizer rebuilt in fp32, with one warning."""
    engine = getattr(stylizer, "engine", None)
    if job.precision != "auto" or getattr(engine, "precision", "fp32") != "bf16" or stylizer.device.type != "cpu":
        return stylizer
    usable, db = check_bf16(stylizer, picture, code)
    if usable:
        log.info("precision: bf16 is %.1f dB from fp32 on the first style picture (needs %.0f)", db, BF16_MIN_PSNR_DB)
        return stylizer
    log.warning("precision: bf16 is %.1f dB from fp32 here (needs %.0f): using fp32", db, BF16_MIN_PSNR_DB)
    engine.close()
    fp32 = create_engine(job.engine, stylizer.model, stylizer.device, "fp32", weights_id=stylizer.weights_id,
                         shape_hint=shape_hint)
    return Stylizer(stylizer.model, fp32, stylizer.weights_id)


def check_short_side(size: int, flag: str) -> None:
    """A short-side option (``--size``, ``--style-size``): 0 or positive, and no larger than an image may be."""
    if size < 0:
        raise InputError(f"{flag} must be 0 (original) or a positive number of pixels")
    check_pixels(size, size, f"{flag} {size}", fix=f"use a smaller {flag}")


def fit_short_side(size: int, height: int, width: int, what: str = "the input") -> int:
    """``--size`` for one input: above its short side it would only upscale, so it is clamped (0 = as is), said so."""
    if size > min(height, width):
        log.warning("--size %d is larger than %s's short side (%d px): stylizing at its own size", size, what,
                    min(height, width))
        return 0
    return size


def expand_style_paths(items: list[str], style_size: int | None = None) -> list[Path]:
    """Files as given and the images inside folders, in order; a style named twice is an error.

    With ``style_size``, each image's header is read and the size it would be encoded at checked, so a
    broken or oversized style fails before any model loads.
    """
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise InputError(f"style folder has no images: {p}")
            paths.extend(found)
        elif not p.exists():
            raise InputError(f"style image not found: {p}")
        elif not is_image_path(p):
            raise InputError(f"style is not a supported image type: {p}")
        else:
            paths.append(p)
    seen: set[Path] = set()
    for p in paths:
        key = p.resolve()
        if key in seen:
            raise InputError(f"style given twice: {p}")
        seen.add(key)
    if style_size is not None:
        check_short_side(style_size, "--style-size")
        for p in paths:
            w, h = image_size(p, "style image")
            sh, sw = short_side_shape(h, w, style_size)
            check_pixels(sw, sh, f"style image {p.name} at --style-size {style_size}", fix="use a smaller --style-size")
    return paths


def run_inputs(job: Job, style_paths: list[Path]) -> list[tuple[str, Path]]:
    """What a stylizing command reads besides its content: each style image, the mask, the decoder and every
    model's weight files (user folder and cache), as (what, path): no output may be one of them
    (streamer.fileutil.refuse_same_file)."""
    from engines.models import weight_spec
    from engines.weights import weight_file_places

    found = [("style image", p) for p in style_paths]
    found += [(what, Path(path)) for what, path in (("mask", job.mask), ("--decoder file", job.decoder)) if path]
    found += [("weights file", p) for name in MODEL_NAMES
              for p in weight_file_places(weight_spec(name), job.weights_dir)]
    return found


@dataclass
class Style:
    name: str
    path: Path
    code: StyleCode = field(repr=False)


def load_styles(paths: list[Path], stylizer: Stylizer, style_size: int, weights_dir: str | None = None) -> list[Style]:
    """Style codes for each image, from the on-disk cache or computed once and cached."""
    if style_size < 0:
        raise InputError("--style-size must be 0 (original) or a positive number of pixels")
    cache = StyleCache(stylizer.name, stylizer.weights_id or weights_fingerprint(stylizer.name, weights_dir))
    styles = []
    for p in paths:
        code = cache.get_or_compute(p, style_size, lambda p=p: stylizer.encode_style(load_image(p, "style image"), style_size))
        styles.append(Style(p.stem, p, code))
    return styles


def mixed_code(styles: list[Style], weights: list[float] | None) -> StyleCode:
    """One style, or the paper's interpolation of several with normalised weights."""
    check_style_weights(weights, len(styles))
    return mix_codes([s.code for s in styles], weights or [1.0] * len(styles))
