"""ONNX Runtime: the content graph exported once to ONNX (dynamic H/W, cached on disk), run per frame size.

The export carries the exact CPU rewrites of :mod:`engines.backends.graph` when it runs on the CPU.
One session per frame size pins ``height``/``width`` (``add_free_dimension_override_by_name``), so
ORT plans every buffer and layout for static shapes; building one takes a fraction of a second and the
last few are kept. Threads = physical cores (hyper-threads only add contention to conv kernels).
On an NVIDIA GPU the TensorRT and CUDA execution providers are used when this onnxruntime has them.
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor

from engines.backends.base import Engine, PerShape, require_module
from engines.backends.graph import OUTPUT_NAME, input_names, onnx_entry, padded_shape
from engines.backends.machine import physical_cores
from engines.errors import DeviceError
from engines.models.base import StyleModel

log = logging.getLogger(__name__)

#: sessions kept per engine (one per frame size seen)
MAX_SESSIONS = 4


def _ort():
    return require_module("onnxruntime", "onnxruntime")


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    @classmethod
    def unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        try:
            ort = _ort()
        except DeviceError as exc:
            return str(exc)
        providers = ort.get_available_providers()
        if precision == "int8":
            return "onnxruntime does not run int8 here; int8 runs on --engine openvino"
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in providers and "TensorrtExecutionProvider" not in providers:
                return ("this onnxruntime has no CUDA provider; pip install onnxruntime-gpu, "
                        "or use --engine tensorrt/torch")
            if precision == "fp16" and "TensorrtExecutionProvider" not in providers:
                return "onnxruntime runs fp16 only through its TensorRT provider; use --precision fp32"
            if precision == "bf16":
                return "onnxruntime does not run bf16 here; use --precision fp16 or fp32"
            return None
        if device.type != "cpu":
            return f"onnxruntime does not support device {device.type}"
        if precision != "fp32":
            return (f"onnxruntime on the CPU runs fp32 only ({precision} is not faster on CPUs); "
                    "use --precision fp32, or --engine torch for bf16/fp16")
        return None

    def __init__(self, model: StyleModel, device: torch.device, precision: str = "fp32",
                 weights_id: str | None = None, shape_hint: tuple[int, int] | None = None,
                 threads: int | None = None) -> None:
        super().__init__(model, device, precision)
        self.ort = _ort()
        self.threads = threads or physical_cores()
        self.providers = self._providers()
        self.entry = onnx_entry(model, weights_id, "onnxruntime" if device.type == "cpu" else None)
        self.path = self.entry.path
        self.names = input_names(model)
        self._sessions = PerShape(self._new_session, keep=MAX_SESSIONS)
        if shape_hint is not None:
            self.prepare(*padded_shape(model, *shape_hint))

    @classmethod
    def is_built(cls, model: StyleModel, device: torch.device, precision: str, weights_id: str | None = None,
                 shape_hint: tuple[int, int] | None = None) -> bool:
        """The ONNX export cached (a session per frame size takes a fraction of a second)."""
        return onnx_entry(model, weights_id, "onnxruntime" if device.type == "cpu" else None).is_built()

    def _providers(self) -> list:
        if self.device.type != "cuda":
            return ["CPUExecutionProvider"]
        available = self.ort.get_available_providers()
        chosen: list = []
        if "TensorrtExecutionProvider" in available:
            from engines.backends.cache import engine_cache_dir

            chosen.append(("TensorrtExecutionProvider", {
                "device_id": self.device.index or 0,
                "trt_fp16_enable": self.precision == "fp16",
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(engine_cache_dir() / "ort-tensorrt"),
            }))
        if "CUDAExecutionProvider" in available:
            chosen.append(("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
        return [*chosen, "CPUExecutionProvider"]

    def describe(self) -> str:
        where = "CPU" if self.device.type == "cpu" else ", ".join(
            p if isinstance(p, str) else p[0] for p in self.providers)
        return f"onnxruntime {self.ort.__version__} {self.precision} ({where}, {self.threads} threads)"

    def _new_session(self, height: int, width: int):
        ort = self.ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.add_free_dimension_override_by_name("height", height)
        so.add_free_dimension_override_by_name("width", width)
        session = self.entry.load(lambda path: ort.InferenceSession(str(path), so, providers=self.providers))
        log.debug("onnxruntime session for %dx%d", width, height)
        return session

    def prepare(self, height: int, width: int) -> None:
        self._sessions.get(height, width)

    def run(self, image: Tensor, alpha: Tensor, code: tuple[Tensor, ...]) -> Tensor:
        session = self._sessions.get(image.shape[-2], image.shape[-1])
        feeds = {n: t.detach().to("cpu", torch.float32).contiguous().numpy()
                 for n, t in zip(self.names, (image, alpha, *code))}
        out = session.run([OUTPUT_NAME], feeds)[0]
        return torch.from_numpy(out)

    def close(self) -> None:
        self._sessions.clear()
