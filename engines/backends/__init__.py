"""Choosing and creating an inference engine for a model's content side.

``--engine auto`` picks, in order, the first engine that can run the requested precision here:

* NVIDIA GPU (``--device cuda``): TensorRT (torch-tensorrt installed), else ONNX Runtime with its
  CUDA/TensorRT providers (onnxruntime-gpu), else PyTorch.
* CPU: the per-model order in :data:`CPU_PREFERENCE`, which is the ranking `streamer bench` measured
  side by side (ms/frame of the content side, fp32, see the table there). A table rather
  than a calibration run at start-up: the ranking was the same at every size measured and a timing
  run would cost seconds at every start and be noisy on busy machines.

The choice and the reason are logged (``streamer: engine: ...``).
"""
from __future__ import annotations

import logging

import torch

from engines.backends.base import DTYPES, PRECISIONS, Engine
from engines.errors import DeviceError, InputError

log = logging.getLogger(__name__)

ENGINE_NAMES = ("auto", "torch", "tensorrt", "onnxruntime", "openvino")

#: measured by `streamer bench` on a 2-core AMD EPYC (Zen 4, AVX2 kernels, no native bf16), content
#: side, fp32, ms/frame (speedup vs torch eager), all engines interleaved in one process, torch warmed up
#: and without per-frame page faults (machine.reuse_freed_memory). Idle machine, 2026-11-24:
#:              640x360                              1280x720
#:   microast   torch 211  ort 141 ov 102 (2.1x)     torch 871  ort 571  ov 411 (2.1x)
#:   adain-r31  torch 727  ort 625 ov 532 (1.4x)     torch 3984 ort 2594 ov 2192 (1.8x)
#:              ov int8 322 (2.3x, 43 dB)            ov int8 1291 (3.1x, 42 dB)
#:   adain      torch 1419 ort 1254 ov 1131 (1.3x)   ov int8 630 (2.3x)  (random weights)
#: OpenVINO was fastest for every model at every size (256, 512, 640x360, 1280x720; at 256x256 adain
#: one earlier run had ONNX Runtime ahead by 6%), ONNX Runtime second; both match torch fp32 to > 100 dB.
#: int8 is never chosen implicitly: it is asked for with --precision int8.
CPU_PREFERENCE: dict[str, tuple[str, ...]] = {
    "microast": ("openvino", "onnxruntime", "torch"),
    "adain-r31": ("openvino", "onnxruntime", "torch"),
    "adain": ("openvino", "onnxruntime", "torch"),
}
GPU_PREFERENCE: tuple[str, ...] = ("tensorrt", "onnxruntime", "torch")
DEFAULT_CPU_PREFERENCE: tuple[str, ...] = ("openvino", "onnxruntime", "torch")


def engine_class(kind: str) -> type[Engine]:
    if kind == "torch":
        from engines.backends.torch_engine import TorchEngine

        return TorchEngine
    if kind == "onnxruntime":
        from engines.backends.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine
    if kind == "openvino":
        from engines.backends.openvino_engine import OpenVINOEngine

        return OpenVINOEngine
    if kind == "tensorrt":
        from engines.backends.tensorrt_engine import TensorRTEngine

        return TensorRTEngine
    raise InputError(f"unknown engine '{kind}': choose one of {', '.join(ENGINE_NAMES)}")


def auto_order(model_name: str, device: torch.device) -> tuple[str, ...]:
    if device.type == "cuda":
        return GPU_PREFERENCE
    return CPU_PREFERENCE.get(model_name, DEFAULT_CPU_PREFERENCE)


def pick_engine(model_name: str, device: torch.device, precision: str) -> tuple[str, str]:
    """(engine kind, why) for ``--engine auto``: the first in the measured order that works here."""
    skipped = []
    for kind in auto_order(model_name, device):
        reason = engine_class(kind).unavailable_reason(device, precision)
        if reason is None:
            why = "measured fastest available" if not skipped else "fastest available; skipped " + "; ".join(skipped)
            return kind, why
        skipped.append(f"{kind}: {reason}")
    raise DeviceError(f"no engine can run {precision} on {device.type}: " + "; ".join(skipped))


def create_engine(kind: str, model, device: torch.device, precision: str = "fp32",
                  weights_id: str | None = None, shape_hint: tuple[int, int] | None = None) -> Engine:
    """Build the engine ``kind`` for ``model``; ``auto`` picks the fastest available and logs which.

    ``weights_id`` keys on-disk engine caches; ``shape_hint`` (H, W) is the expected frame size, used by
    engines that optimise for a shape (they build for it now rather than on the first frame).
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and model.int8_refusal:
        raise InputError(model.int8_refusal)
    device = torch.device(device)
    why = "asked for"
    if kind == "auto":
        kind, why = pick_engine(model.name, device, precision)
    cls = engine_class(kind)
    if kind == "torch":
        engine: Engine = cls(model, device, precision)
    else:
        engine = cls(model, device, precision, weights_id=weights_id, shape_hint=shape_hint)
    log.info("engine: %s (%s)", engine.describe(), why)
    return engine


__all__ = ["DTYPES", "ENGINE_NAMES", "PRECISIONS", "Engine", "create_engine", "pick_engine", "CPU_PREFERENCE"]
