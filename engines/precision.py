"""``--precision auto``: what each device and use gets, and the check a CPU's bf16 must pass before live uses it.

* NVIDIA GPU: fp16 (tensor cores; the AdaIN statistics stay fp32).
* CPU with native bf16 (AVX-512 BF16 or AMX: Zen 4 and later, Sapphire Rapids and later): bf16 for ``live``,
  where the frame rate is the product and a frame is seen for a thirtieth of a second. OpenVINO there runs
  microast at 640x360 about 1.4x faster (120 -> 85 ms) at 36.6 dB from fp32 (measured on such a machine).
  Before live uses it, the bf16 engine's output on a real picture (the first style image, at the working
  size) is compared with fp32; under :data:`BF16_MIN_PSNR_DB` live falls back to fp32 with one warning. The
  verdict is cached beside the engines, so the check runs once per model, weights, engine version and CPU.
* ``render`` keeps fp32 on a CPU: a render is looked at frame by frame, and its speed matters less.
* CPU without native bf16: fp32 (emulated bf16 is slower than fp32).

The choice is a pure function of the device, the use and the CPU's reported flags (tested on any machine).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engines.backends.cache import EngineCache
from engines.backends.machine import cpu_flags, cpu_name
from engines.ops import psnr

log = logging.getLogger(__name__)

#: the lowest PSNR (dB) against fp32 at which a CPU's bf16 is used for live (measured: 33-37 dB, no visible change)
BF16_MIN_PSNR_DB = 30.0
#: CPU flags (Linux /proc/cpuinfo names) that mean bf16 arithmetic runs natively
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
USES = ("render", "live")


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes in bf16 natively (else OpenVINO would emulate it, slower than fp32)."""
    return bool(NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags))


def auto_precision(device_type: str, use: str, flags: frozenset[str] | None = None) -> tuple[str, str]:
    """(precision, why) for ``--precision auto`` on ``device_type`` ('cuda' or 'cpu') for ``use`` (render, live)."""
    if use not in USES:
        raise ValueError(f"unknown use {use!r}: one of {', '.join(USES)}")
    if device_type == "cuda":
        return "fp16", "NVIDIA GPU: tensor cores"
    if not native_bf16(flags):
        return "fp32", "this CPU has no native bf16"
    if use == "live":
        return "bf16", "native bf16 on this CPU (checked against fp32 before use)"
    return "fp32", "renders keep fp32 on a CPU (a render is looked at frame by frame)"


def _verdict_key(stylizer) -> dict:
    engine = stylizer.engine
    return {"model": stylizer.name, "weights": stylizer.weights_id, "engine": engine.describe(),
            "precision": engine.precision, "cpu": cpu_name(), "torch": torch.__version__}


@torch.inference_mode()
def bf16_psnr(stylizer, image_rgb: np.ndarray, code) -> float:
    """dB between the stylizer's engine and the model's own fp32 graph on one real picture."""
    from engines.backends.torch_engine import TorchEngine
    from engines.stylizer import Stylizer

    reference = Stylizer(stylizer.model, TorchEngine(stylizer.model, torch.device("cpu"), "fp32"))
    a = torch.from_numpy(stylizer.stylize(image_rgb, code).astype(np.float32) / 255.0)
    b = torch.from_numpy(reference.stylize(image_rgb, code).astype(np.float32) / 255.0)
    return min(199.0, psnr(a, b))


def check_bf16(stylizer, picture: Callable[[], np.ndarray], code, cache: EngineCache | None = None) -> tuple[bool, float]:
    """(usable, dB): the cached verdict for this engine and CPU, else :func:`bf16_psnr` on ``picture()`` (made only
    then) measured now and cached."""
    cache = cache or EngineCache()
    key = _verdict_key(stylizer)
    stem = f"{stylizer.name}-bf16-check"
    found = cache.lookup(stem, key, "json")
    if found is not None:
        try:
            db = float(json.loads(Path(found).read_text())["psnr_db"])
            return db >= BF16_MIN_PSNR_DB, db
        except (OSError, ValueError, KeyError, TypeError):
            cache.remove(Path(found))  # damaged: measure again
    db = round(bf16_psnr(stylizer, picture(), code), 1)
    cache.store(stem, key, "json", lambda p: Path(p).write_text(json.dumps({"psnr_db": db})))
    return db >= BF16_MIN_PSNR_DB, db

