"""TensorRT on NVIDIA GPUs: the content graph compiled by torch-tensorrt (FP16 by default), cached on disk.

Build: ``torch.export`` of the content graph with dynamic H/W -> torch-tensorrt converts the whole
program into one serialized TensorRT engine with an optimisation profile (min/opt/max) around the
capture size: opt = the expected frame, min = half of it, max = the frame itself. Style codes and alpha
are engine inputs, so a new style never rebuilds. The engine bytes go to the engine cache keyed by
model, weights, profile, precision, GPU (name and compute capability) and the TensorRT / torch-tensorrt /
torch versions: a cache hit deserialises in seconds; any mismatch builds a new engine (never loads a
foreign one). A frame outside every built profile gets its own profile (built once, cached as well).

Run: the TensorRT runtime directly (``execute_async_v3`` on the current torch CUDA stream, tensors
bound by address), so nothing but TensorRT itself is needed once an engine is cached.
"""
from __future__ import annotations

import copy
import inspect
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from engines.backends.base import Engine
from engines.backends.cache import EngineCache, build_progress, graph_weights_id
from engines.backends.graph import (RECIPE_VERSION, code_shapes, example_inputs, export_program, graph_code_id,
                                    min_side, padded_shape)
from engines.errors import DeviceError
from engines.models.base import StyleModel

log = logging.getLogger(__name__)

TRT_PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def missing_requirement(device: torch.device) -> str | None:
    """Why TensorRT cannot run here (one line), or None."""
    if device.type != "cuda":
        return "--engine tensorrt needs --device cuda (an NVIDIA GPU)"
    if not torch.cuda.is_available():
        return "--engine tensorrt needs an NVIDIA GPU with CUDA, and PyTorch sees none; use --engine auto or onnxruntime"
    try:
        import tensorrt  # noqa: F401
        import torch_tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or a CUDA/TensorRT library mismatch raising OSError
        return (f"--engine tensorrt needs torch-tensorrt for this torch/CUDA ({exc.__class__.__name__}: {exc}); "
                "pip install torch-tensorrt, or use --engine onnxruntime")
    return None


@dataclass(frozen=True)
class Profile:
    """A TensorRT optimisation profile for the image input, as (H, W) triples."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    def contains(self, h: int, w: int) -> bool:
        return self.min[0] <= h <= self.max[0] and self.min[1] <= w <= self.max[1]

    @classmethod
    def around(cls, model: StyleModel, h: int, w: int) -> Profile:
        opt = padded_shape(model, h, w)
        low = padded_shape(model, max(opt[0] // 2, min_side(model)), max(opt[1] // 2, min_side(model)))
        return cls(min=low, opt=opt, max=opt)


def tensorrt_cache_key(model: str, weights_id: str, profile: Profile, precision: str, gpu: str, capability: str,
                       versions: dict[str, str]) -> dict:
    """Everything a serialized engine depends on; any change means a rebuild (engines are not portable
    across GPUs or TensorRT versions, and a profile bounds the shapes it accepts)."""
    return {
        "kind": "tensorrt", "model": model, "weights": weights_id, "recipe": RECIPE_VERSION,
        "code": graph_code_id(), "precision": precision,
        "profile": [list(profile.min), list(profile.opt), list(profile.max)],
        "gpu": gpu, "compute_capability": capability, **versions,
    }


def _precision_kwargs(fn, precision: str) -> dict:
    """FP16/BF16 across torch-tensorrt versions: autocast (>= 2.9, strongly typed) or enabled_precisions."""
    params = inspect.signature(fn).parameters
    if precision == "fp32":
        return {"enabled_precisions": {torch.float32}} if "enabled_precisions" in params else {}
    low = TRT_PRECISIONS[precision]
    if "enable_autocast" in params:  # strongly typed networks: TensorRT casts, keeping reductions in fp32
        return {"use_explicit_typing": True, "enable_autocast": True, "autocast_low_precision_type": low}
    kwargs: dict = {"enabled_precisions": {torch.float32, low}}
    if "use_explicit_typing" in params:
        kwargs["use_explicit_typing"] = False
    return kwargs


_TRT_TO_TORCH = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32}


class _Runner:
    """One deserialised engine and its execution context."""

    def __init__(self, data: bytes, device: torch.device) -> None:
        import tensorrt as trt

        self.trt = trt
        self.device = device
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(device):
            self.engine = self.runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise RuntimeError("TensorRT could not deserialise the cached engine")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) != mode)
        self.out_dtype = _TRT_TO_TORCH.get(self.engine.get_tensor_dtype(self.output).name, torch.float32)

    def __call__(self, tensors: list[Tensor]) -> Tensor:
        if len(tensors) != len(self.inputs):
            raise RuntimeError(f"TensorRT engine takes {len(self.inputs)} inputs, got {len(tensors)}")
        for name, t in zip(self.inputs, tensors):
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.out_dtype, device=self.device)
        self.context.set_tensor_address(self.output, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out


class TensorRTEngine(Engine):
    name = "tensorrt"

    @classmethod
    def unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        reason = missing_requirement(device)
        if reason:
            return reason
        if precision == "int8":
            return "TensorRT int8 is not offered (it needs per-GPU calibration); use --precision fp16"
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16; use --precision fp16"
        return None

    def __init__(self, model: StyleModel, device: torch.device, precision: str = "fp16",
                 weights_id: str | None = None, shape_hint: tuple[int, int] | None = None,
                 cache: EngineCache | None = None) -> None:
        super().__init__(model, device, precision)
        import tensorrt
        import torch_tensorrt

        self.cache = cache or EngineCache()
        self.weights_id = weights_id or graph_weights_id(model)
        self.gpu = torch.cuda.get_device_name(device)
        self.capability = ".".join(map(str, torch.cuda.get_device_capability(device)))
        self.versions = {"tensorrt": tensorrt.__version__, "torch_tensorrt": torch_tensorrt.__version__,
                         "torch": torch.__version__}
        self._runners: dict[Profile, _Runner] = {}
        self._lock = threading.Lock()
        if precision == "fp32":
            log.info("tensorrt: building fp32; --precision fp16 is usually about twice as fast on NVIDIA GPUs")
        if shape_hint is not None:
            self.prepare(*shape_hint)

    def describe(self) -> str:
        return f"tensorrt {self.versions['tensorrt']} {self.precision} on {self.gpu}"

    def cache_key(self, profile: Profile) -> dict:
        return tensorrt_cache_key(self.model.name, self.weights_id, profile, self.precision, self.gpu,
                                  self.capability, self.versions)

    def _build(self, profile: Profile, path: Path) -> None:
        import torch_tensorrt

        example = tuple(t.to(self.device) for t in example_inputs(self.model, *profile.opt))
        # a copy: the content side may share modules with the style side (VGG), which stays on the CPU
        graph = copy.deepcopy(self.model.content_graph()).eval().to(self.device)
        program = export_program(self.model, graph, example)
        inputs = [
            torch_tensorrt.Input(min_shape=(1, 3, *profile.min), opt_shape=(1, 3, *profile.opt),
                                 max_shape=(1, 3, *profile.max), dtype=torch.float32),
            torch_tensorrt.Input(shape=(), dtype=torch.float32),
            *(torch_tensorrt.Input(shape=s, dtype=torch.float32) for s in code_shapes(self.model).values()),
        ]
        convert = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine
        data = convert(program, arg_inputs=inputs, device=self.device, min_block_size=1,
                       truncate_double=True, **_precision_kwargs(convert, self.precision))
        if not data:
            raise DeviceError(f"TensorRT could not build an engine for {self.model.name} (run with -vv for details)")
        path.write_bytes(bytes(data))

    def _runner(self, h: int, w: int) -> _Runner:
        with self._lock:
            for profile, runner in self._runners.items():
                if profile.contains(h, w):
                    return runner
            profile = Profile.around(self.model, h, w)
            key = self.cache_key(profile)
            stem = f"{self.model.name}-trt-{self.precision}"
            desc = (f"building TensorRT {self.precision} engine for {self.model.name} "
                    f"({profile.opt[1]}x{profile.opt[0]}, may take minutes)")

            def build(path: Path) -> None:
                with build_progress(desc):
                    self._build(profile, path)

            # a corrupt entry is removed and rebuilt once (EngineCache.load), never kept
            runner = self.cache.load(stem, key, "engine", build, lambda path: _Runner(path.read_bytes(), self.device))
            log.info("tensorrt engine for %s ready: profile min %s opt %s max %s", self.model.name,
                     profile.min, profile.opt, profile.max)
            self._runners[profile] = runner
            return runner

    def prepare(self, height: int, width: int) -> None:
        self._runner(*padded_shape(self.model, height, width))

    @torch.inference_mode()
    def run(self, image: Tensor, alpha: Tensor, code: tuple[Tensor, ...]) -> Tensor:
        runner = self._runner(image.shape[-2], image.shape[-1])
        tensors = [t.to(self.device, torch.float32).contiguous() for t in (image, alpha, *code)]
        with self._lock:
            return runner(tensors).float()

    def close(self) -> None:
        with self._lock:
            self._runners.clear()
