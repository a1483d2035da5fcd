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

Threads and shapes: every call of an engine (prepare, run, close) runs on one thread of its own
(:class:`~engines.backends.owner.OwnerThread`): CUDA graphs are per thread before torch 2.13, and the
video and live paths call from their own threads. Each engine compiles a function of its own (its own
code object), so dynamo's compiled variants, its recompile limit and ``close()`` are per engine: closing
one never throws away another's compiled code. An engine compiles at most :data:`MAX_COMPILED_SHAPES`
shapes (dynamo's limit is raised to that, plus a margin, where its default of 8 would fail the ninth
with ``fullgraph=True``); a shape beyond runs the same graph eager.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import sys
import threading
import types
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from engines.backends.base import DTYPES, Engine
from engines.backends.cache import EngineCache, build_progress, graph_weights_id
from engines.backends.graph import RECIPE_VERSION, gpu_example_inputs, gpu_graph, graph_code_id, padded_shape
from engines.backends.owner import OwnerThread
from engines.errors import DeviceError
from engines.models.base import StyleModel
from engines.ops import psnr

log = logging.getLogger(__name__)

#: PSNR (dB) a compiled build must reach against fp32 eager on the check input (fp16 AdaIN: 40+)
MIN_PSNR_DB = {"fp32": 60.0, "fp16": 33.0, "bf16": 28.0}
#: shapes (frames per call, H, W) one engine compiles: a render's frame size at one frame and at its batch,
#: live --size auto's ladder (4 sizes, as many as ``PerShape`` keeps) and the shape hint, with room to spare
MAX_COMPILED_SHAPES = 12
#: dynamo recompiles at one shape too when a guard changes (the grad mode, a dtype): room for those
RECOMPILE_MARGIN = 4
_engine_numbers = itertools.count(1)


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


def allow_compiled_shapes(shapes: int) -> None:
    """Let dynamo compile ``shapes`` variants of one function, plus :data:`RECOMPILE_MARGIN`.

    Its ``recompile_limit`` (8 by default; ``cache_size_limit`` before torch 2.6) counts per code object;
    with ``fullgraph=True`` the variant over it raises ``FailOnRecompileLimitHit`` instead of running
    eager. Only ever raised here, never lowered. Since torch 2.13 a setting holds in the thread that made
    it only: call this in the thread that compiles.
    """
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), shapes + RECOMPILE_MARGIN))


def own_function(graph: Callable, tag: str) -> Callable:
    """``graph`` behind a function with a code object of its own, for ``torch.compile``.

    dynamo keeps compiled variants (and counts recompiles) per code object: compiling ``graph`` itself
    would share its class's ``forward`` with every engine of that model, so one engine's shapes would
    count against another's limit, and releasing one engine's code would release all of them.
    """
    def forward(image: Tensor, alpha: Tensor, *code: Tensor) -> Tensor:
        return graph(image, alpha, *code)

    own = forward.__code__.replace(co_name=tag)
    return types.FunctionType(own, forward.__globals__, tag, None, forward.__closure__)


def adopt_cudagraph_state() -> None:
    """Give the calling thread inductor's CUDA-graph bookkeeping, as the thread that imported it has.

    Before torch 2.13 (pytorch issue 123177; 2.13 does this itself on first use) any other thread asserts
    on its first CUDA-graph call: the engine's owner thread calls this before anything else.
    """
    try:
        from torch._inductor import cudagraph_trees as trees
    except Exception:  # no inductor here: nothing to set up
        return
    local = getattr(trees, "local", None)
    if local is None or hasattr(local, "tree_manager_containers"):
        return
    if hasattr(trees, "_initialize_tls"):  # torch >= 2.13
        trees._initialize_tls(local)
        return
    local.tree_manager_containers = {}
    local.tree_manager_locks = defaultdict(threading.Lock)
    torch._C._stash_obj_in_tls("tree_manager_containers", local.tree_manager_containers)
    torch._C._stash_obj_in_tls("tree_manager_locks", local.tree_manager_locks)


def release_cudagraphs() -> None:
    """Free the CUDA graphs recorded by the calling thread (an engine's owner thread: its graphs only).

    ``torch._dynamo.reset()`` would free every engine's, and its compiled code too.
    """
    trees = sys.modules.get("torch._inductor.cudagraph_trees")
    containers = getattr(getattr(trees, "local", None), "tree_manager_containers", None)
    if not containers:
        return
    for container in containers.values():
        manager = getattr(container, "tree_manager", None)
        if manager is not None:
            manager.shutdown()
    containers.clear()


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """fp32 convolutions and matmuls without TF32 (cuDNN allows TF32 convolutions by default: 10 bits of
    mantissa, not a reference); the flags as they were afterwards."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32, cudnn.allow_tf32 = False, False
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


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
                 cache: EngineCache | None = None, compile: bool = True, options: dict | None = None) -> None:
        """``options``: ``torch.compile``'s, instead of :func:`compile_options`' (tests compile on a CPU)."""
        super().__init__(model, device, precision)
        self.dtype = DTYPES[precision]
        self.cache = cache or EngineCache()
        self.weights_id = weights_id or graph_weights_id(model)
        self.gpu = torch.cuda.get_device_name(device)
        self.capability = ".".join(map(str, torch.cuda.get_device_capability(device)))
        self.versions = versions()
        if not compile:
            self.options = None
        else:
            self.options = options if options is not None else compile_options(device.type, True, triton_available())
        if self.options is not None and options is None:  # inductor's kernels live with the other built engines
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.cache.folder / "inductor"))
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its algorithms once per shape
        self.graph = gpu_graph(model, self.dtype).to(device=device, memory_format=torch.channels_last)
        number = next(_engine_numbers)
        self._own = own_function(self.graph, f"torch_cuda_engine_{number}")
        self._fn: Callable | None = None
        if self.options:
            self._fn = torch.compile(self._own, **self.options)
        self._ready: set[tuple[int, int, int]] = set()  # shapes built (compiled) and checked
        self._eager: set[tuple[int, int, int]] = set()  # shapes past MAX_COMPILED_SHAPES
        self._owner = OwnerThread(f"torch-cuda-{number}", setup=adopt_cudagraph_state if device.type == "cuda" else None)
        weakref.finalize(self, self._owner.stop)  # an engine dropped without close() ends its thread too
        if self.options is None:
            log.info("torch-cuda: no Triton here, running eager %s channels-last", precision)
        if shape_hint is not None:
            self.prepare(*shape_hint)

    @classmethod
    def is_built(cls, model: StyleModel, device: torch.device, precision: str, weights_id: str | None = None,
                 shape_hint: tuple[int, int] | None = None) -> bool:
        """The hinted frame size compiled and checked before (its verdict cached beside inductor's kernels); no
        compiler here: nothing to build."""
        options = compile_options(device.type, True, triton_available())
        if options is None:
            return True
        if shape_hint is None:
            return False
        shape = (1, *padded_shape(model, *shape_hint))
        key = torch_cuda_cache_key(model.name, weights_id or graph_weights_id(model), shape, precision,
                                   torch.cuda.get_device_name(device),
                                   ".".join(map(str, torch.cuda.get_device_capability(device))), options, versions())
        return EngineCache().lookup(f"{model.name}-torchcuda-{precision}", key, "json") is not None

    def describe(self) -> str:
        how = f"torch.compile {self.options.get('mode', 'default')}" if self.options else "eager"
        return f"torch-cuda {self.precision} channels-last ({how}) on {self.gpu}"

    def cache_key(self, shape: tuple[int, int, int]) -> dict:
        return torch_cuda_cache_key(self.model.name, self.weights_id, shape, self.precision, self.gpu,
                                    self.capability, self.options, self.versions)

    def _graphs_replay(self) -> bool:
        return bool(self.options) and self.options.get("mode") == "reduce-overhead"

    def _call(self, fn: Callable, image: Tensor, alpha: Tensor, code: tuple[Tensor, ...]) -> Tensor:
        """``fn`` on the inputs in its dtypes and layout, each an inference tensor (runs in inference mode):
        dynamo guards on the dispatch keys, so a tensor made outside inference mode would compile the same
        shape a second time."""
        image = image.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
        rest = [t.to(self.device, torch.float32, non_blocking=True) for t in (alpha, *code)]
        image, *rest = (t if t.is_inference() else t.clone() for t in (image, *rest))
        if fn is self._fn and self._graphs_replay():
            torch.compiler.cudagraph_mark_step_begin()
            return fn(image, *rest).clone()  # CUDA graph outputs are overwritten by the next replay
        return fn(image, *rest)

    def _function_for(self, n: int, h: int, w: int) -> Callable:
        """What runs this shape: the compiled function (compiled, and the first build ever checked, on first
        use), or the graph itself: no compiler (checked as well), or past :data:`MAX_COMPILED_SHAPES`."""
        shape = (n, h, w)
        fn = self._fn if self._fn is not None else self.graph
        if shape in self._ready:
            return fn
        if shape in self._eager:
            return self.graph
        if self._fn is not None and len(self._ready) >= MAX_COMPILED_SHAPES:
            log.warning("torch-cuda: %d shapes compiled already; %dx%d at %d frames a call runs uncompiled",
                        MAX_COMPILED_SHAPES, w, h, n)
            self._eager.add(shape)
            return self.graph
        if self._fn is not None:
            allow_compiled_shapes(MAX_COMPILED_SHAPES)  # here: dynamo's settings are per thread since torch 2.13
        self._build_and_check(fn, shape)
        self._ready.add(shape)
        return fn

    def _build_and_check(self, fn: Callable, shape: tuple[int, int, int]) -> None:
        """The first call at a shape compiles it; the first build ever is also checked against eager fp32."""
        n, h, w = shape
        key = self.cache_key(shape)
        stem = f"{self.model.name}-torchcuda-{self.precision}"
        example = [t.to(self.device) for t in gpu_example_inputs(self.model, h, w, torch.float32, batch=n)]
        verdict = self.cache.lookup(stem, key, "json")
        with build_progress(f"compiling {self.model.name} {self.precision} for {w}x{h} (torch-cuda)"):
            out = self._call(fn, example[0], example[1], tuple(example[2:]))  # compiles (or loads inductor's cache)
            if verdict is None:
                ref_graph = gpu_graph(self.model, torch.float32).to(self.device)
                with exact_fp32():
                    ref = ref_graph(*example)
                problem = check_build(self.precision, out, ref)
                if problem:
                    raise DeviceError(problem)
                result = {"psnr_db": round(psnr_db(out, ref), 1)}
                self.cache.store(stem, key, "json", lambda p: Path(p).write_text(json.dumps(result)))
                log.info("torch-cuda %s build checked: %.1f dB from fp32", self.precision, result["psnr_db"])

    # -- every call runs on the owner thread, on the caller's CUDA stream --------------------------------
    def _caller_stream(self):
        return torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None

    def _owned(self, stream, fn: Callable, *args):
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext(), torch.inference_mode():
            return fn(*args)

    def prepare(self, height: int, width: int) -> None:
        self._owner.call(self._owned, self._caller_stream(), self._function_for, 1,
                         *padded_shape(self.model, height, width))

    def _run(self, image: Tensor, alpha: Tensor, code: tuple[Tensor, ...]) -> Tensor:
        fn = self._function_for(image.shape[0], image.shape[-2], image.shape[-1])
        return self._call(fn, image, alpha, code)

    def run(self, image: Tensor, alpha: Tensor, code: tuple[Tensor, ...]) -> Tensor:
        return self._owner.call(self._owned, self._caller_stream(), self._run, image, alpha, code)

    def _release(self) -> None:
        """This engine's compiled code and CUDA graphs, and nothing else (no ``torch._dynamo.reset()``)."""
        if self._fn is not None:
            torch._dynamo.eval_frame.remove_from_cache(self._own)
        self._fn = None
        self._ready.clear()
        self._eager.clear()
        release_cudagraphs()

    def close(self) -> None:
        if not self._owner.stopped:
            self._owner.call(self._release)
            self._owner.stop()
