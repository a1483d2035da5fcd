"""Choosing and creating an inference engine for a model's content side.

``--engine auto`` picks, in order, the first engine that can run the requested precision here:

* NVIDIA GPU (``--device cuda``): TensorRT (torch-tensorrt installed), else the torch CUDA engine
  (fp16/bf16, channels-last, torch.compile: needs no TensorRT), else ONNX Runtime, else PyTorch eager.
* CPU: :data:`CPU_PREFERENCE`, the ranking `streamer bench` measured side by side (ms/frame of the
  content side, fp32; the figures are in the README). A fixed order rather than a calibration run at
  start-up: the ranking was the same for every model at every size measured, and a timing run would
  cost seconds at every start and be noisy on busy machines. int8 is never chosen implicitly: it is
  asked for with ``--precision int8``.

The choice and the reason are logged (``streamer: engine: ...``). An engine that is available but
fails to build (a TensorRT conversion error, a compiled graph failing its check) is reported in one
line and ``auto`` goes on to the next one in the order.
"""
from __future__ import annotations

import importlib
import logging

import torch

from engines.backends.base import DTYPES, PRECISIONS, Engine
from engines.errors import DeviceError, InputError

log = logging.getLogger(__name__)

#: every engine: its ``--engine`` name -> where its class is ("module:Class"), imported only when chosen, so
#: that choosing one never imports another's library (TensorRT, OpenVINO, ONNX Runtime). Adding an engine is
#: one line here (and a place in the preferences below if ``auto`` should pick it).
ENGINES: dict[str, str] = {
    "torch": "engines.backends.torch_engine:TorchEngine",
    "torch-cuda": "engines.backends.torch_cuda_engine:TorchCudaEngine",
    "tensorrt": "engines.backends.tensorrt_engine:TensorRTEngine",
    "onnxruntime": "engines.backends.onnxruntime_engine:OnnxRuntimeEngine",
    "openvino": "engines.backends.openvino_engine:OpenVINOEngine",
}
ENGINE_NAMES = ("auto", *ENGINES)

GPU_PREFERENCE: tuple[str, ...] = ("tensorrt", "torch-cuda", "onnxruntime", "torch")
CPU_PREFERENCE: tuple[str, ...] = ("openvino", "onnxruntime", "torch")


def engine_class(kind: str) -> type[Engine]:
    """The class of engine ``kind``, its module imported now (not before)."""
    if kind not in ENGINES:
        raise InputError(f"unknown engine '{kind}': choose one of {', '.join(ENGINE_NAMES)}")
    module, _, name = ENGINES[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def auto_order(model_name: str, device: torch.device) -> tuple[str, ...]:
    if device.type == "cuda":
        return GPU_PREFERENCE
    return CPU_PREFERENCE


def usable_engines(model_name: str, device: torch.device, precision: str) -> list[tuple[str, str]]:
    """(engine kind, why) for ``--engine auto``, in the measured order, for every engine that can run here."""
    usable, skipped = [], []
    for kind in auto_order(model_name, device):
        reason = engine_class(kind).unavailable_reason(device, precision)
        if reason is None:
            why = "measured fastest available" if not skipped else "fastest available; skipped " + "; ".join(skipped)
            usable.append((kind, why))
        else:
            skipped.append(f"{kind}: {reason}")
    if not usable:
        raise DeviceError(f"no engine can run {precision} on {device.type}: " + "; ".join(skipped))
    return usable


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}".rstrip(": ")


def _build(kind: str, model, device: torch.device, precision: str, weights_id: str | None,
           shape_hint: tuple[int, int] | None) -> Engine:
    return engine_class(kind)(model, device, precision, weights_id=weights_id, shape_hint=shape_hint)


def create_engine(kind: str, model, device: torch.device, precision: str = "fp32",
                  weights_id: str | None = None, shape_hint: tuple[int, int] | None = None) -> Engine:
    """Build the engine ``kind`` for ``model``; ``auto`` picks the fastest available and logs which.

    ``weights_id`` keys on-disk engine caches; ``shape_hint`` (H, W) is the expected frame size, used by
    engines that optimise for a shape (they build for it now rather than on the first frame). With
    ``auto``, an engine whose build fails is logged in one line and the next one is built.
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and model.int8_refusal:
        raise InputError(model.int8_refusal)
    device = torch.device(device)
    if kind != "auto":
        engine = _build(kind, model, device, precision, weights_id, shape_hint)
        log.info("engine: %s (asked for)", engine.describe())
        return engine
    candidates = usable_engines(model.name, device, precision)
    failed: list[str] = []
    for i, (name, why) in enumerate(candidates):
        try:
            engine = _build(name, model, device, precision, weights_id, shape_hint)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a build failure: say why in one line and take the next engine
            if i + 1 == len(candidates):
                raise
            log.warning("engine: %s failed to build (%s); using %s", name, _one_line(exc), candidates[i + 1][0])
            log.debug("engine %s build failure", name, exc_info=True)
            failed.append(f"{name} failed to build")
            continue
        if failed:
            why = f"{why}; " + "; ".join(failed)
        log.info("engine: %s (%s)", engine.describe(), why)
        return engine
    raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["DTYPES", "ENGINES", "ENGINE_NAMES", "PRECISIONS", "Engine", "create_engine", "usable_engines",
           "CPU_PREFERENCE"]
