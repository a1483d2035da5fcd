"""TensorRT on NVIDIA GPUs: the content graph compiled by torch-tensorrt (FP16 by default), cached on disk.

Build: ``torch.export`` of the content graph with dynamic H/W -> torch-tensorrt converts the whole
program into one serialized TensorRT engine with an optimisation profile (min/opt/max) around the
capture size: opt = the expected frame, min = half of it, max = the frame itself, and 1 to
``max_batch`` frames a call (opt and max at ``max_batch``), so one build serves ``prepare``, live's
single frames and a render's batches. Style codes and alpha
are engine inputs, so a new style never rebuilds. The engine bytes go to the engine cache keyed by
model, weights, profile, precision, GPU (name and compute capability) and the TensorRT / torch-tensorrt /
torch versions: a cache hit deserialises in seconds; any mismatch builds a new engine (never loads a
foreign one). A frame outside every built profile gets its own profile (built once, cached as well).

Precision: torch-tensorrt 2.13 (the release for torch 2.13, TensorRT 11) builds strongly typed
networks only, and ``convert_exported_program_to_serialized_trt_engine`` (``py/torch_tensorrt/dynamo/
_compiler.py``) has no ``enabled_precisions`` any more: its ``**kwargs`` swallow such flags. So the
precision is the graph's: fp16/bf16 export :func:`graph.gpu_graph` (weights and activations low,
AdaIN statistics and the final clamp fp32). So the check before an engine is cached as fp16 reads
the exported program's convolutions (their output dtypes are the network's, and so the engine's), and
the layer precisions where the engine inspector lists them (2.13 builds at ``LAYER_NAMES_ONLY``
verbosity unless its debugger is on, so usually it does not). The engine's size is no evidence: an
fp16 plan's kernels and tactics can pass 3 bytes a weight.

Run: the TensorRT runtime directly (``execute_async_v3`` on the current torch CUDA stream, tensors
bound by address), so nothing but TensorRT itself is needed once an engine is cached. Every input and
output is bound in the dtype the engine reports (``ICudaEngine.get_tensor_dtype``), read once into an
:class:`IOSpec` list: the binding logic is plain code tested without TensorRT. The bound tensors (the
casts :func:`bind_inputs` makes) are kept until the next call: TensorRT reads them by address when the
stream runs, and a tensor freed before the work is queued could be handed to the output.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from engines.backends.base import Engine
from engines.backends.cache import EngineCache, build_progress, graph_weights_id
from engines.backends.graph import (RECIPE_VERSION, code_shapes, export_program, gpu_example_inputs, gpu_graph,
                                    graph_code_id, padded_shape)
from engines.errors import DeviceError
from engines.models.base import StyleModel, min_side

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
    #: frames per call the profile is built for (min 1): offline renders batch
    batch: int = 1

    def contains(self, h: int, w: int, n: int = 1) -> bool:
        return self.min[0] <= h <= self.max[0] and self.min[1] <= w <= self.max[1] and 1 <= n <= self.batch

    @classmethod
    def around(cls, model: StyleModel, h: int, w: int, batch: int = 1) -> Profile:
        opt = padded_shape(model, h, w)
        least = min_side(model.factor)
        low = padded_shape(model, max(opt[0] // 2, least), max(opt[1] // 2, least))
        return cls(min=low, opt=opt, max=opt, batch=max(1, batch))

    def image_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) NCHW shapes for torch_tensorrt.Input."""
        return (1, 3, *self.min), (self.batch, 3, *self.opt), (self.batch, 3, *self.max)


def tensorrt_cache_key(model: str, weights_id: str, profile: Profile, precision: str, gpu: str, capability: str,
                       versions: dict[str, str]) -> dict:
    """Everything a serialized engine depends on; any change means a rebuild (engines are not portable
    across GPUs or TensorRT versions, and a profile bounds the shapes it accepts)."""
    return {
        "kind": "tensorrt", "model": model, "weights": weights_id, "recipe": RECIPE_VERSION,
        "code": graph_code_id(), "precision": precision,
        "profile": [list(profile.min), list(profile.opt), list(profile.max)], "batch": profile.batch,
        "gpu": gpu, "compute_capability": capability, **versions,
    }


_TRT_TO_TORCH = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                 "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8, "INT8": torch.int8}


@dataclass(frozen=True)
class IOSpec:
    """One engine input or output as the engine describes it."""

    name: str
    is_input: bool
    dtype: torch.dtype


def describe_engine(engine, trt) -> list[IOSpec]:
    """The engine's I/O tensors in binding order (``ICudaEngine.num_io_tensors``, ``get_tensor_name``,
    ``get_tensor_mode``, ``get_tensor_dtype``: TensorRT >= 8.5, the only API left in TensorRT 10/11)."""
    specs = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype_name = engine.get_tensor_dtype(name).name
        if dtype_name not in _TRT_TO_TORCH:
            raise RuntimeError(f"TensorRT engine tensor {name} has dtype {dtype_name}, which streamer cannot bind")
        specs.append(IOSpec(name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT, _TRT_TO_TORCH[dtype_name]))
    return specs


def bind_inputs(specs: list[IOSpec], tensors: list[Tensor], device: torch.device) -> list[tuple[str, Tensor]]:
    """(name, tensor) for each engine input, each cast to the dtype the engine takes and made contiguous.

    TensorRT reads raw memory at the bound address: a tensor in another dtype would be read as garbage,
    so the engine's own description decides, never an assumption (fp16 engines take fp16 images).
    """
    inputs = [s for s in specs if s.is_input]
    if len(inputs) != len(tensors):
        raise RuntimeError(f"TensorRT engine takes {len(inputs)} inputs, got {len(tensors)}")
    return [(s.name, t.to(device=device, dtype=s.dtype).contiguous()) for s, t in zip(inputs, tensors)]


def output_spec(specs: list[IOSpec]) -> IOSpec:
    outputs = [s for s in specs if not s.is_input]
    if len(outputs) != 1:
        raise RuntimeError(f"TensorRT engine has {len(outputs)} outputs; the content graph has one")
    return outputs[0]


def layer_precisions(info: dict) -> dict[str, int]:
    """Output datatypes of an engine's layers, counted, from ``IEngineInspector.get_engine_information``
    (JSON). Layers are plain names unless the engine was built with detailed profiling verbosity: then
    nothing is counted and the exported graph's convolutions alone decide."""
    counts: dict[str, int] = {}
    for layer in info.get("Layers", []):
        if not isinstance(layer, dict):
            continue
        for out in layer.get("Outputs", []):
            fmt = str(out.get("Format/Datatype", "")) if isinstance(out, dict) else ""
            for word in ("Half", "BFloat16", "Float", "Int8", "Int32"):
                if word in fmt:
                    counts[word] = counts.get(word, 0) + 1
                    break
    return counts


def convolution_dtypes(program) -> dict[str, int]:
    """Output dtypes of an exported program's convolutions, counted (``float16``: 12). torch-tensorrt 2.13
    builds strongly typed networks from the program's dtypes, so these are its convolution layers'."""
    counts: dict[str, int] = {}
    for node in program.graph.nodes:
        if node.op != "call_function" or "conv" not in str(node.target):
            continue
        val = node.meta.get("val")
        name = str(getattr(val, "dtype", "unknown")).removeprefix("torch.")
        counts[name] = counts.get(name, 0) + 1
    return counts


def precision_mismatch(precision: str, convolutions: dict[str, int], layers: dict[str, int] | None = None) -> str | None:
    """Why a build is not the ``precision`` asked for (one line), or None.

    Every convolution of the exported graph must run in the low dtype (see :func:`convolution_dtypes`);
    where the inspector lists layer precisions (:func:`layer_precisions`), most layers must output it too.
    """
    if precision == "fp32":
        return None
    want = "bfloat16" if precision == "bf16" else "float16"
    total = sum(convolutions.values())
    if total == 0:
        return f"the TensorRT {precision} build has no convolution to check its precision by"
    others = sorted(dtype for dtype in convolutions if dtype != want)
    if others:
        return (f"the TensorRT {precision} build would run {total - convolutions.get(want, 0)} of {total} "
                f"convolutions in {', '.join(others)}, not {want}")
    if layers:
        low = layers.get("BFloat16" if precision == "bf16" else "Half", 0)
        count = sum(layers.values())
        if low * 2 < count:
            return f"the TensorRT {precision} build runs {count - low} of {count} layers in other precisions"
    return None


def enqueue(context, specs: list[IOSpec], output: IOSpec, tensors: list[Tensor], device: torch.device,
            stream: int) -> tuple[Tensor, list[Tensor]]:
    """Bind the inputs and a new output on ``context`` and queue the engine on ``stream`` (a CUDA stream
    handle): (output, the bound inputs). TensorRT reads the inputs when the stream runs: the caller keeps
    them at least until the work is queued (the allocator then reuses their memory only for work queued
    later on the same stream); freed earlier, one could become the output's memory."""
    bound = bind_inputs(specs, tensors, device)
    for name, t in bound:
        context.set_input_shape(name, tuple(t.shape))
        context.set_tensor_address(name, t.data_ptr())
    shape = tuple(context.get_tensor_shape(output.name))
    out = torch.empty(shape, dtype=output.dtype, device=device)
    context.set_tensor_address(output.name, out.data_ptr())
    if not context.execute_async_v3(stream):
        raise RuntimeError("TensorRT execution failed")
    return out, [t for _, t in bound]


class _Runner:
    """One deserialised engine and its execution context."""

    def __init__(self, data: bytes, device: torch.device) -> None:
        import tensorrt as trt

        self.device = device
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(device):
            self.engine = self.runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise RuntimeError("TensorRT could not deserialise the cached engine")
            self.context = self.engine.create_execution_context()
        self.specs = describe_engine(self.engine, trt)
        self.output = output_spec(self.specs)
        self._bound: list[Tensor] = []

    def layers(self) -> dict[str, int]:
        import json

        import tensorrt as trt

        try:
            info = self.engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
            return layer_precisions(json.loads(info))
        except Exception:  # the inspector is optional information
            return {}

    def __call__(self, tensors: list[Tensor]) -> Tensor:
        stream = torch.cuda.current_stream(self.device).cuda_stream
        out, self._bound = enqueue(self.context, self.specs, self.output, tensors, self.device, stream)
        return out  # self._bound: the inputs TensorRT reads, kept until the next call has been queued


class TensorRTEngine(Engine):
    name = "tensorrt"
    max_batch = 8

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

    @classmethod
    def is_built(cls, model: StyleModel, device: torch.device, precision: str, weights_id: str | None = None,
                 shape_hint: tuple[int, int] | None = None) -> bool:
        """An engine for the hinted frame size (the profile :meth:`prepare` would build) is cached."""
        if shape_hint is None:
            return False
        try:
            import tensorrt
            import torch_tensorrt
        except ImportError:
            return False
        versions = {"tensorrt": tensorrt.__version__, "torch_tensorrt": torch_tensorrt.__version__,
                    "torch": torch.__version__}
        profile = Profile.around(model, *padded_shape(model, *shape_hint), batch=cls.max_batch)
        key = tensorrt_cache_key(model.name, weights_id or graph_weights_id(model), profile, precision,
                                 torch.cuda.get_device_name(device),
                                 ".".join(map(str, torch.cuda.get_device_capability(device))), versions)
        return EngineCache().lookup(f"{model.name}-trt-{precision}", key, "engine") is not None

    def describe(self) -> str:
        return f"tensorrt {self.versions['tensorrt']} {self.precision} on {self.gpu}"

    def cache_key(self, profile: Profile) -> dict:
        return tensorrt_cache_key(self.model.name, self.weights_id, profile, self.precision, self.gpu,
                                  self.capability, self.versions)

    def _build(self, profile: Profile, path: Path) -> None:
        import torch_tensorrt

        dtype = TRT_PRECISIONS[self.precision]
        example = tuple(t.to(self.device) for t in
                        gpu_example_inputs(self.model, *profile.opt, dtype, batch=min(2, profile.batch)))
        # gpu_graph copies: the content side may share modules with the style side (VGG), which stays on the CPU
        graph = gpu_graph(self.model, dtype).to(self.device)
        program = export_program(self.model, graph, example, max_batch=profile.batch)
        convolutions = convolution_dtypes(program)
        problem = precision_mismatch(self.precision, convolutions)
        if problem:  # before a conversion of minutes
            raise DeviceError(problem)
        low, opt, high = profile.image_shapes()
        inputs = [
            torch_tensorrt.Input(min_shape=low, opt_shape=opt, max_shape=high, dtype=dtype),
            torch_tensorrt.Input(shape=(), dtype=torch.float32),
            *(torch_tensorrt.Input(shape=s, dtype=torch.float32) for s in code_shapes(self.model).values()),
        ]
        convert = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine
        # no precision flags: 2.13 has none (see the module docstring); the graph's dtypes decide
        data = convert(program, arg_inputs=inputs, device=self.device, min_block_size=1, truncate_double=True)
        if not data:
            raise DeviceError(f"TensorRT could not build an engine for {self.model.name} (run with -vv for details)")
        data = bytes(data)
        problem = precision_mismatch(self.precision, convolutions, self._layers(data))
        if problem:
            raise DeviceError(problem)
        path.write_bytes(data)

    def _layers(self, data: bytes) -> dict[str, int]:
        """Layer output precisions of a freshly built engine (empty where the inspector has none)."""
        return _Runner(data, self.device).layers()

    def _runner(self, h: int, w: int, n: int = 1) -> _Runner:
        with self._lock:
            for profile, runner in self._runners.items():
                if profile.contains(h, w, n):
                    return runner
            profile = Profile.around(self.model, h, w, batch=max(n, self.max_batch))  # one build: 1..max_batch
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
        runner = self._runner(image.shape[-2], image.shape[-1], image.shape[0])
        with self._lock:  # inputs are cast to the engine's own dtypes in _Runner (bind_inputs)
            return runner([image, alpha, *code]).float()

    def close(self) -> None:
        with self._lock:
            self._runners.clear()
