"""OpenVINO on the CPU: the same cached ONNX export as ONNX Runtime, compiled per frame size.

Measured on the reference machine it is the fastest CPU runtime for MicroAST (its oneDNN "brgconv"
kernels and fused eltwise subgraphs), so ``--engine auto`` prefers it on CPUs when installed.
The model is read once; each new (H, W) is a ``reshape`` to static shapes plus a compile (well under a
second), and the last few compiled models are kept. Precision is always pinned explicitly: on CPUs with
AMX/AVX512-BF16 OpenVINO would otherwise silently run bf16 when fp32 was asked for.
"""
from __future__ import annotations

import logging
import threading

import numpy as np
import torch
from torch import Tensor

from engines.backends.base import Engine, PerShape, require_module
from engines.backends.graph import input_names, onnx_entry, padded_shape
from engines.backends.machine import physical_cores
from engines.errors import DeviceError
from engines.models.base import StyleModel

log = logging.getLogger(__name__)

MAX_COMPILED = 4
#: what runs between quantised layers: int8 models keep their unquantised layers in f32
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}


def _ov():
    return require_module("openvino", "openvino")


class OpenVINOEngine(Engine):
    name = "openvino"

    @classmethod
    def unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        if device.type != "cpu":
            return "the openvino engine runs on the CPU; use --device cpu, or --engine tensorrt/torch on a GPU"
        try:
            ov = _ov()
        except DeviceError as exc:
            return str(exc)
        if precision == "fp32":
            return None
        caps = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        need = {"bf16": "BF16", "fp16": "FP16", "int8": "INT8"}[precision]
        if need not in caps:
            return (f"this CPU has no native {precision} (OpenVINO reports {', '.join(sorted(caps))}); "
                    "use --precision fp32")
        return None

    def __init__(self, model: StyleModel, device: torch.device, precision: str = "fp32",
                 weights_id: str | None = None, shape_hint: tuple[int, int] | None = None,
                 threads: int | None = None) -> None:
        super().__init__(model, device, precision)
        self.ov = _ov()
        self.core = self.ov.Core()
        self.threads = threads or physical_cores()
        if precision == "int8":
            from engines.backends.int8 import int8_entry, read_model_file

            self.entry = int8_entry(model, weights_id)
            self._read_file = lambda path: read_model_file(self.core, path)
        else:
            self.entry = onnx_entry(model, weights_id, "openvino")
            self._read_file = lambda path: self.core.read_model(str(path))
        self.path = self.entry.path
        self.names = input_names(model)
        self._compiled = PerShape(self._compile, keep=MAX_COMPILED)
        self._infer_lock = threading.Lock()
        if shape_hint is not None:
            self.prepare(*padded_shape(model, *shape_hint))

    @classmethod
    def is_built(cls, model: StyleModel, device: torch.device, precision: str, weights_id: str | None = None,
                 shape_hint: tuple[int, int] | None = None) -> bool:
        """The ONNX export (and for int8 the calibrated model) cached; a frame size compiles in well under a second."""
        if not onnx_entry(model, weights_id, "openvino").is_built():
            return False
        if precision == "int8":
            from engines.backends.int8 import int8_entry

            return int8_entry(model, weights_id).is_built()
        return True

    def describe(self) -> str:
        return f"openvino {self.ov.__version__.split('-')[0]} {self.precision} (CPU, {self.threads} threads)"

    def config(self) -> dict:
        return {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(self.threads),
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision],
        }

    def _compile(self, height: int, width: int):
        model = self.entry.load(self._read_file)
        model.reshape({"image": [1, 3, height, width]})
        compiled = self.core.compile_model(model, "CPU", self.config())
        log.debug("openvino compiled for %dx%d", width, height)
        return compiled, compiled.create_infer_request()  # the request needs its compiled model alive

    def prepare(self, height: int, width: int) -> None:
        self._compiled.get(height, width)

    def run(self, image: Tensor, alpha: Tensor, code: tuple[Tensor, ...]) -> Tensor:
        _, request = self._compiled.get(image.shape[-2], image.shape[-1])
        feeds = [t.detach().to("cpu", torch.float32).contiguous().numpy() for t in (image, alpha, *code)]
        with self._infer_lock:  # one infer request per shape: serialise callers (normally one engine thread)
            request.infer(feeds, share_inputs=True)
            out = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        return torch.from_numpy(out)

    def close(self) -> None:
        self._compiled.clear()
