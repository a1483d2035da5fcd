"""The content graph as engines compile it: example inputs, dynamic H/W export, the GPU graph, ONNX.

The exact CPU rewrites applied before an ONNX export for OpenVINO or ONNX Runtime are in
:mod:`engines.backends.cpu_rewrites`.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from engines.backends.cpu_rewrites import cpu_graph, onnx_translations
from engines.models.base import StyleModel, min_side, padded_size

log = logging.getLogger(__name__)

#: ONNX opset of exports; both ONNX Runtime (>= 1.17) and OpenVINO (>= 2024) read it
ONNX_OPSET = 20
#: bump when a rewrite or the export recipe changes, so cached exports are rebuilt
RECIPE_VERSION = 4  # 4: GPU graph (floor pools, half precision), batch dimension
#: largest frame side an exported graph accepts (8K)
MAX_SIDE = 8192
INPUT_NAMES_HEAD = ("image", "alpha")
OUTPUT_NAME = "stylized"


@functools.cache
def graph_code_id() -> str:
    """A hash of the source that decides what an exported graph computes (the maths, the models, these
    rewrites), part of every cache key: new code never loads an export or engine built from the old."""
    here = Path(__file__).resolve()
    root = here.parents[1]
    h = hashlib.sha256()
    for path in [root / "ops.py", *sorted((root / "models").glob("*.py")), here, here.with_name("cpu_rewrites.py")]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def input_names(model: StyleModel) -> list[str]:
    return [*INPUT_NAMES_HEAD, *model.code_names]


def code_shapes(model: StyleModel) -> dict[str, tuple[int, ...]]:
    """Shape of each style-code tensor, found by encoding a small image once."""
    with torch.inference_mode():
        probe = torch.rand(1, 3, 8 * model.factor, 8 * model.factor, generator=torch.Generator().manual_seed(0))
        code = model.encode_style(probe)
    return {name: tuple(code[name].shape) for name in model.code_names}


def example_inputs(model: StyleModel, height: int, width: int, seed: int = 0) -> tuple[Tensor, ...]:
    """(image, alpha, *code) with plausible values: the code comes from a real style pass on noise."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, height, width, generator=gen)
    with torch.inference_mode():
        style = torch.rand(1, 3, 8 * model.factor, 8 * model.factor, generator=gen)
        code = model.code_tensors(model.encode_style(style))
    return (image, torch.tensor(1.0), *(c.float().clone() for c in code))


def dynamic_shapes(model: StyleModel, max_side: int = MAX_SIDE) -> dict:
    """torch.export spec: H and W are any multiples of ``model.factor`` from min_side to ``max_side``."""
    from torch.export import Dim

    f = model.factor
    h = Dim("h", min=min_side(model.factor) // f, max=max_side // f)
    w = Dim("w", min=min_side(model.factor) // f, max=max_side // f)
    spec: dict = {"image": {2: f * h, 3: f * w}, "alpha": None}
    spec.update({name: None for name in model.code_names})
    return spec


def export_program(model: StyleModel, graph: nn.Module | None = None, example: tuple[Tensor, ...] | None = None,
                   max_side: int = MAX_SIDE, max_batch: int = 1) -> torch.export.ExportedProgram:
    """torch.export of the content graph with dynamic H and W (what TensorRT and ONNX exports start from).

    ``max_batch`` > 1 also makes the image's batch dimension dynamic (offline renders stack frames;
    AdaIN statistics are per sample and the style code broadcasts); the example then needs a batch of 2
    or more, since torch.export specialises a dimension it sees at size 1.
    """
    graph = (graph if graph is not None else model.content_graph()).eval()
    if example is None:
        s = 8 * model.factor
        example = example_inputs(model, 3 * s, 4 * s)
    spec = dynamic_shapes(model, max_side)
    if max_batch > 1:
        from torch.export import Dim

        spec["image"] = {0: Dim("batch", min=1, max=max_batch), **spec["image"]}
    args_spec = tuple(spec[n] for n in input_names(model))
    params = list(inspect.signature(graph.forward).parameters.values())
    if len(params) == 3 and params[2].kind is inspect.Parameter.VAR_POSITIONAL:  # LowPrecisionGraph(image, alpha, *code)
        args_spec = (*args_spec[:2], tuple(args_spec[2:]))
    with torch.no_grad():
        return torch.export.export(graph, tuple(example), dynamic_shapes=args_spec, strict=False)


def content_flops(model: StyleModel, height: int, width: int) -> int:
    """FLOPs of one content-graph pass at (H, W), counted on the meta device (no compute, any size)."""
    from torch.utils.flop_counter import FlopCounterMode

    graph = copy.deepcopy(model.content_graph()).to("meta").eval()
    args = [torch.empty(1, 3, height, width, device="meta"), torch.empty((), device="meta")]
    args += [torch.empty(s, device="meta") for s in code_shapes(model).values()]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        graph(*args)
    return int(counter.get_total_flops())


# -- the GPU graph (TensorRT, torch CUDA) -------------------------------------------------------------
def floor_pools(graph: nn.Module) -> nn.Module:
    """A copy of ``graph`` whose max-pools use ``ceil_mode=False``.

    torch-tensorrt cannot convert a ceil-mode max-pool: ``max_pool_param_validator`` in
    ``py/torch_tensorrt/dynamo/conversion/aten_ops_converters.py`` rejects it and ``max_poolNd`` in
    ``dynamo/conversion/impl/pool.py`` raises "ceil_mode is not yet supported!", and
    ``convert_exported_program_to_serialized_trt_engine`` does not partition, so the whole build fails.
    Exact on every frame an engine gets: frames are padded to multiples of ``model.factor`` (the product
    of the strides), so every pool sees even sides, where ceil and floor agree (tested).
    """
    g = copy.deepcopy(graph).eval()
    for module in g.modules():
        if isinstance(module, nn.MaxPool2d):
            module.ceil_mode = False
    return g


class LowPrecisionGraph(nn.Module):
    """The content graph with weights and activations in ``dtype`` (fp16/bf16), its output in fp32.

    Takes the image in ``dtype`` and alpha and the style code in fp32 (they are tiny). The AdaIN
    statistics run in fp32 inside (engines.ops.mean_std/adain), and the final clamp is in fp32. A
    strongly typed TensorRT network (torch-tensorrt >= 2.9 builds no other kind) follows exactly
    these dtypes, so this graph is what makes an "fp16" engine fp16.
    """

    def __init__(self, graph: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.inner = copy.deepcopy(graph).eval().to(dtype)

    def forward(self, image: Tensor, alpha: Tensor, *code: Tensor) -> Tensor:
        low = [c.to(self.dtype) for c in code]
        return self.inner(image.to(self.dtype), alpha.to(self.dtype), *low).float().clamp(0.0, 1.0)


def gpu_graph(model: StyleModel, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The content graph as GPU engines build it: floor-mode pools, in ``dtype`` (fp32: plain)."""
    graph = floor_pools(model.content_graph())
    if dtype == torch.float32:
        return graph.requires_grad_(False)
    return LowPrecisionGraph(graph, dtype).requires_grad_(False)


def gpu_example_inputs(model: StyleModel, height: int, width: int, dtype: torch.dtype = torch.float32,
                       batch: int = 1) -> tuple[Tensor, ...]:
    """example_inputs for :func:`gpu_graph`: the image in ``dtype`` and ``batch`` frames, the rest fp32."""
    image, alpha, *code = example_inputs(model, height, width)
    return (image.expand(batch, -1, -1, -1).contiguous().to(dtype), alpha, *code)


# -- ONNX ---------------------------------------------------------------------------------------------
def _name_dynamic_dims(onnx_model, names: list[str]) -> None:
    """The exporter names dims like '4*s39'; call them height/width so runtimes can pin them by name."""
    shape = onnx_model.graph.input[0].type.tensor_type.shape.dim
    rename = {shape[2].dim_param: "height", shape[3].dim_param: "width"}
    for vi in [*onnx_model.graph.input, *onnx_model.graph.output]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


#: the exporter narrates every step on stdout and its optimiser logs each folded constant
_EXPORT_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export")


def export_onnx(model: StyleModel, path: Path, runtime: str | None = "openvino") -> Path:
    """Export the content graph (with ``runtime``'s CPU rewrites, if any) to one self-contained ONNX file."""
    import onnx

    graph = model.content_graph().eval()
    if runtime is not None:
        graph = cpu_graph(graph, runtime, model.factor)
    names = input_names(model)
    from engines.backends.cache import quiet_build

    with quiet_build(_EXPORT_LOGGERS):
        program = export_program(model, graph)
        onnx_program = torch.onnx.export(program, input_names=names, output_names=[OUTPUT_NAME], dynamo=True,
                                         custom_translation_table=onnx_translations(), opset_version=ONNX_OPSET,
                                         optimize=True, verbose=False)
    proto = onnx_program.model_proto
    _name_dynamic_dims(proto, names)
    onnx.save(proto, str(path), save_as_external_data=False)
    return path


def padded_shape(model: StyleModel, height: int, width: int) -> tuple[int, int]:
    """The (H, W) an engine receives for a frame of this size (:func:`engines.models.base.padded_size`)."""
    return padded_size(height, width, model.factor)


def onnx_entry(model: StyleModel, weights_id: str | None, runtime: str | None = "openvino", cache=None):
    """The cache entry of the model's dynamic-H/W ONNX export for ``runtime`` (None: no CPU rewrites), one per
    (model, weights, runtime, graph code, torch, opset); engines read it with ``.load(read)``."""
    from engines.backends.cache import CacheEntry, EngineCache, build_progress, graph_weights_id

    key = {
        "kind": "onnx", "model": model.name, "weights": weights_id or graph_weights_id(model),
        "recipe": RECIPE_VERSION, "code": graph_code_id(), "rewrite": runtime, "opset": ONNX_OPSET,
        "max_side": MAX_SIDE, "torch": torch.__version__,
    }

    def build(path: Path) -> None:
        with build_progress(f"exporting {model.name} to ONNX"):
            export_onnx(model, path, runtime)

    return CacheEntry(cache or EngineCache(), f"{model.name}-{runtime}" if runtime else model.name, key, "onnx", build)
