"""PyTorch on NVIDIA GPUs without TensorRT: fp16/bf16, channels-last, ``torch.compile`` (inductor).

Many NVIDIA users cannot install TensorRT (it has to match torch, CUDA and the driver); a CUDA torch
with Triton is enough here. The graph is :func:`graph.gpu_graph` (floor-mode pools, weights and
activations in fp16/bf16, AdaIN statistics and the final clamp in fp32), in channels-last memory
(what cuDNN's tensor-core convolutions want), compiled per frame shape: inductor fuses the
element-wise tails, and at a fixed shape CUDA graphs remove the per-kernel launch cost
(``mode="reduce-overhead"``). Shapes are few (a render or a camera has one), so ``dynamic=False``.

Cache and checks, as for the other engines: inductor's compiled kernels go under the engine cache
(``<cache>/inductor``), and the first build of each (model, weights, precision, shape, GPU, torch,
Triton, graph code) is checked against the fp32 eager graph on the GPU before it is used; the verdict
is cached beside the kernels under the same kind of key, so a later start skips the check. A build
that fails the check raises DeviceError, so ``--engine auto`` goes on to the next engine.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import torch
from torch import Tensor

from engines.backends.base import DTYPES, Engine
from engines.backends.cache import EngineCache, build_progress, graph_weights_id
from engines.backends.graph import RECIPE_VERSION, gpu_example_inputs, gpu_graph, graph_code_id, padded_shape
from engines.errors import DeviceError
from engines.models.base import StyleModel
from engines.ops import psnr

log = logging.getLogger(__name__)

#: PSNR (dB) a compiled build must reach against fp32 eager on the check input (fp16 AdaIN: 40+)
MIN_PSNR_DB = {"fp32": 60.0, "fp16": 33.0, "bf16": 28.0}


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def compile_options(device_type: str, fixed_shape: bool = True, have_triton: bool = True) -> dict | None:
    """What ``torch.compile`` gets, or None to run eager (no Triton: inductor cannot make GPU kernels).

    CUDA graphs only for a fixed shape: a graph is recorded per shape and replays its addresses.
    ``fullgraph``: the content graph has no Python control flow, so a graph break would be a bug.
    """
    if device_type != "cuda" or not have_triton:
        return None
    return {"backend": "inductor", "mode": "reduce-overhead" if fixed_shape else "default",
            "fullgraph": True, "dynamic": not fixed_shape}


def torch_cuda_cache_key(model: str, weights_id: str, shape: tuple[int, int, int], precision: str, gpu: str,
                         capability: str, options: dict | None, versions: dict[str, str]) -> dict:
    """Everything a compiled build and its check depend on."""
    return {"kind": "torch-cuda", "model": model, "weights": weights_id, "recipe": RECIPE_VERSION,
            "code": graph_code_id(), "precision": precision, "shape": list(shape), "gpu": gpu,
            "compute_capability": capability, "compile": options, **versions}


def psnr_db(out: Tensor, ref: Tensor) -> float:
    """:func:`engines.ops.psnr`, capped at 199 dB so the cached verdict stays finite JSON."""
    return min(199.0, psnr(out, ref))


def check_build(precision: str, out: Tensor, ref: Tensor) -> str | None:
    """Why a build's output on the check input is not good enough (one line), or None."""
    if out.shape != ref.shape:
        return f"the compiled graph gives shape {tuple(out.shape)}, eager {tuple(ref.shape)}"
    if not torch.isfinite(out).all():
        return f"the compiled {precision} graph gives non-finite values"
    got = psnr_db(out, ref)
    if got < MIN_PSNR_DB[precision]:
        return f"the compiled {precision} graph is {got:.1f} dB from fp32 (needs {MIN_PSNR_DB[precision]:.0f})"
    return None


def versions() -> dict[str, str]:
    out = {"torch": torch.__version__, "cuda": str(torch.version.cuda)}
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception:
        out["triton"] = "none"
    return out


class TorchCudaEngine(Engine):
    name = "torch-cuda"
    max_batch = 16

    @classmethod
    def unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        if device.type != "cuda":
            return "--engine torch-cuda needs --device cuda (an NVIDIA GPU)"
        if not torch.cuda.is_available():
            return "--engine torch-cuda needs an NVIDIA GPU with CUDA, and PyTorch sees none"
        if precision not in DTYPES:
            return f"--engine torch-cuda runs fp16, bf16 or fp32, not {precision}"
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16; use --precision fp16"
        return None

    def __init__(self, model: StyleModel, device: torch.device, precision: str = "fp16",
                 weights_id: str | None = None, shape_hint: tuple[int, int] | None = None,
                 cache: EngineCache | None = None, compile: bool = True) -> None:
        super().__init__(model, device, precision)
        self.dtype = DTYPES[precision]
        self.cache = cache or EngineCache()
        self.weights_id = weights_id or graph_weights_id(model)
        self.gpu = torch.cuda.get_device_name(device)
        self.capability = ".".join(map(str, torch.cuda.get_device_capability(device)))
        self.versions = versions()
        self.options = compile_options(device.type, True, triton_available()) if compile else None
        if self.options is not None:  # inductor's kernels live with the other built engines
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.cache.folder / "inductor"))
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its algorithms once per shape
        self.graph = gpu_graph(model, self.dtype).to(device=device, memory_format=torch.channels_last)
        self._fn = torch.compile(self.graph, **self.options) if self.options else self.graph
        self._checked: set[tuple[int, int, int]] = set()
        self._lock = threading.Lock()
        if self.options is None:
            log.info("torch-cuda: no Triton here, running eager %s channels-last", precision)
        if shape_hint is not None:
            self.prepare(*shape_hint)

    def describe(self) -> str:
        how = f"torch.compile {self.options['mode']}" if self.options else "eager"
        return f"torch-cuda {self.precision} channels-last ({how}) on {self.gpu}"

    def cache_key(self, shape: tuple[int, int, int]) -> dict:
        return torch_cuda_cache_key(self.model.name, self.weights_id, shape, self.precision, self.gpu,
                                    self.capability, self.options, self.versions)

    def _call(self, image: Tensor, alpha: Tensor, code: tuple[Tensor, ...]) -> Tensor:
        image = image.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
        rest = [t.to(self.device, torch.float32, non_blocking=True) for t in (alpha, *code)]
        if self.options and self.options["mode"] == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
            return self._fn(image, *rest).clone()  # CUDA graph outputs are overwritten by the next replay
        return self._fn(image, *rest)

    def _ensure_checked(self, n: int, h: int, w: int) -> None:
        """The first call at a shape compiles it; the first build ever is also checked against eager fp32."""
        shape = (n, h, w)
        if shape in self._checked:
            return
        key = self.cache_key(shape)
        stem = f"{self.model.name}-torchcuda-{self.precision}"
        example = [t.to(self.device) for t in gpu_example_inputs(self.model, h, w, torch.float32, batch=n)]
        verdict = self.cache.lookup(stem, key, "json")
        with build_progress(f"compiling {self.model.name} {self.precision} for {w}x{h} (torch-cuda)"):
            out = self._call(example[0], example[1], tuple(example[2:]))  # compiles (or loads inductor's cache)
            if verdict is None:
                ref_graph = gpu_graph(self.model, torch.float32).to(self.device)
                with torch.inference_mode():
                    ref = ref_graph(*example)
                problem = check_build(self.precision, out, ref)
                if problem:
                    raise DeviceError(problem)
                result = {"psnr_db": round(psnr_db(out, ref), 1)}
                self.cache.store(stem, key, "json", lambda p: Path(p).write_text(json.dumps(result)))
                log.info("torch-cuda %s build checked: %.1f dB from fp32", self.precision, result["psnr_db"])
        self._checked.add(shape)

    def prepare(self, height: int, width: int) -> None:
        with self._lock, torch.inference_mode():
            self._ensure_checked(1, *padded_shape(self.model, height, width))

    @torch.inference_mode()
    def run(self, image: Tensor, alpha: Tensor, code: tuple[Tensor, ...]) -> Tensor:
        with self._lock:
            self._ensure_checked(image.shape[0], image.shape[-2], image.shape[-1])
            return self._call(image, alpha, code)

    def close(self) -> None:
        with self._lock:
            self._checked.clear()
            torch._dynamo.reset()
