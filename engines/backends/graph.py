"""The content graph as engines compile it: example inputs, dynamic H/W export, CPU rewrites, ONNX.

Every rewrite here is exact algebra (same function, different kernels): it changes which CPU kernels
run, never what is computed, so outputs stay within float rounding of the eager graph (tested). They
were each measured on the reference machine (2 Zen 4 cores, AVX2 kernels; single-thread CPU time of
MicroAST at 640x360, OpenVINO / ONNX Runtime):

* ``ReflectionPad2d(0)`` before 1x1 convs is a full-resolution copy: removed.
* a grouped conv with several inputs and one output per group (MicroAST's decoder) runs on slow
  generic grouped kernels; a depthwise conv followed by a fixed 0/1 "sum the group" 1x1 conv is the
  same function on fast kernels (OpenVINO 299 -> 246 ms, ONNX Runtime 332 -> 320 ms).
* a 9x9 conv with few channels (MicroAST's first and last layer) vectorises badly; space-to-depth by 2
  turns it into a 5x5 conv with 4x the channels, then depth-to-space (ONNX Runtime 332 -> 264 ms).
* a 1x1 conv followed by reflection padding and a conv (VGG's normalisation layer) folds into the
  second conv, because a per-pixel affine map commutes with reflection padding.
* nearest x2 upsampling -> reflection pad -> 3x3 conv (VGG decoders) runs at the low resolution as a
  2x2 conv per output phase: 16 instead of 36 taps per source pixel (AdaIN relu3_1 at 640x360:
  OpenVINO 1180 -> 1058 ms, ONNX Runtime 1268 -> 1150 ms).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.models.base import StyleModel

log = logging.getLogger(__name__)

#: ONNX opset of exports; both ONNX Runtime (>= 1.17) and OpenVINO (>= 2024) read it
ONNX_OPSET = 20
#: bump when a rewrite or the export recipe changes, so cached exports are rebuilt
RECIPE_VERSION = 2
#: largest frame side an exported graph accepts (8K)
MAX_SIDE = 8192
INPUT_NAMES_HEAD = ("image", "alpha")
OUTPUT_NAME = "stylized"


def input_names(model: StyleModel) -> list[str]:
    return [*INPUT_NAMES_HEAD, *model.code_names]


def min_side(model: StyleModel) -> int:
    """The smallest H or W the graph accepts (what pad_to_multiple guarantees)."""
    return max(2 * model.factor, 16)


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
    h = Dim("h", min=min_side(model) // f, max=max_side // f)
    w = Dim("w", min=min_side(model) // f, max=max_side // f)
    spec: dict = {"image": {2: f * h, 3: f * w}, "alpha": None}
    spec.update({name: None for name in model.code_names})
    return spec


def export_program(model: StyleModel, graph: nn.Module | None = None, example: tuple[Tensor, ...] | None = None,
                   max_side: int = MAX_SIDE) -> torch.export.ExportedProgram:
    """torch.export of the content graph with dynamic H and W (what TensorRT and ONNX exports start from)."""
    graph = (graph if graph is not None else model.content_graph()).eval()
    if example is None:
        s = 8 * model.factor
        example = example_inputs(model, 3 * s, 4 * s)
    spec = dynamic_shapes(model, max_side)
    args_spec = tuple(spec[n] for n in input_names(model))
    with torch.no_grad():
        return torch.export.export(graph, tuple(example), dynamic_shapes=args_spec, strict=False)


# -- exact rewrites for CPU kernels -------------------------------------------------------------------
class GroupSumConv(nn.Module):
    """A grouped conv with k inputs and 1 output per group, as depthwise conv + fixed group-sum 1x1 conv."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        cin, groups = conv.in_channels, conv.groups
        per_group = cin // groups
        self.depthwise = nn.Conv2d(cin, cin, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                                   groups=cin, bias=False, padding_mode=conv.padding_mode)
        self.depthwise.weight.data.copy_(conv.weight.detach().reshape(cin, 1, *conv.kernel_size))
        self.sum = nn.Conv2d(cin, groups, 1, bias=conv.bias is not None)
        ones = torch.zeros(groups, cin, 1, 1)
        for g in range(groups):
            ones[g, g * per_group:(g + 1) * per_group] = 1.0
        self.sum.weight.data.copy_(ones)
        if conv.bias is not None:
            self.sum.bias.data.copy_(conv.bias.detach())

    def forward(self, x: Tensor) -> Tensor:
        return self.sum(self.depthwise(x))


class SpaceToDepthConv(nn.Module):
    """A stride-1, unpadded KxK conv computed as a ceil((K+1)/2)-wide conv on the 2x2 space-to-depth input.

    Output pixel (2Y+p, 2X+q) = sum_ij w[i,j] x[2Y+p+i, 2X+q+j]; writing p+i = 2a+r gives a conv over
    the (r, s) phases of x at half resolution, one output channel group per output phase (p, q).
    Needs even input H and W (true here: frames are multiples of 4 and pads are even).
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        w = conv.weight.detach()
        cout, cin, k, _ = w.shape
        taps = (k + 2) // 2
        big = torch.zeros(cout, 2, 2, cin, 2, 2, taps, taps)  # (co, p, q, ci, r, s, a, b)
        for p in range(2):
            for q in range(2):
                for r in range(2):
                    for s in range(2):
                        for a in range(taps):
                            for b in range(taps):
                                i, j = 2 * a + r - p, 2 * b + s - q
                                if 0 <= i < k and 0 <= j < k:
                                    big[:, p, q, :, r, s, a, b] = w[:, :, i, j]
        self.conv = nn.Conv2d(4 * cin, 4 * cout, taps, bias=conv.bias is not None)
        self.conv.weight.data.copy_(big.reshape(4 * cout, 4 * cin, taps, taps))
        if conv.bias is not None:
            self.conv.bias.data.copy_(conv.bias.detach().repeat_interleave(4))

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.conv(F.pixel_unshuffle(x, 2)), 2)


class NearestUpConv(nn.Module):
    """Nearest x2 upsample -> reflection pad 1 -> 3x3 conv, computed at the low resolution.

    Every output pixel of phase (p, q) (its row and column parity) sees a 2x2 window of the low-res
    input, with the 3x3 kernel's taps summed where two of them land on the same source pixel; reflection
    padding of the upsampled image is replicate padding of the source. So one 2x2 conv producing the four
    phases (4 x Cout channels) and a pixel shuffle give the same result with 16 instead of 36 taps per
    source pixel, and the 4x larger upsampled tensor is never written.
    """

    _ROWS = (((0,), (1, 2)), ((0, 1), (2,)))  # phase -> the 3x3 taps each of the 2 source rows collects

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        w = conv.weight.detach()
        cout, cin = w.shape[:2]
        phases = []
        for p in range(2):
            for q in range(2):
                k = torch.zeros(cout, cin, 2, 2)
                for a2, rows in enumerate(self._ROWS[p]):
                    for b2, cols in enumerate(self._ROWS[q]):
                        k[:, :, a2, b2] = w[:, :, list(rows)][:, :, :, list(cols)].sum(dim=(2, 3))
                phases.append(k)
        # output channel c * 4 + (2p + q): the order pixel_shuffle reads
        self.conv = nn.Conv2d(cin, 4 * cout, 2, bias=False)
        self.conv.weight.data.copy_(torch.stack(phases, dim=1).reshape(4 * cout, cin, 2, 2))
        self.bias = nn.Parameter(conv.bias.detach().clone() if conv.bias is not None else torch.zeros(cout),
                                 requires_grad=False)
        self.cout = cout

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        y = self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))  # (1, 4*Cout, H+1, W+1)
        y = y.reshape(1, self.cout, 4, h + 1, w + 1)
        phases = [y[:, :, 2 * p + q, p:p + h, q:q + w] for p in range(2) for q in range(2)]
        z = torch.stack(phases, dim=2).reshape(1, 4 * self.cout, h, w)
        return F.pixel_shuffle(z, 2) + self.bias[None, :, None, None]


def _fold_upsample_into_conv(seq: nn.Sequential) -> int:
    """Upsample(nearest, 2) -> ReflectionPad2d(1) -> 3x3 conv  ==>  NearestUpConv (VGG decoders)."""
    mods = list(seq)
    folded = 0
    i = 0
    while i + 2 < len(mods):
        up, pad, conv = mods[i], mods[i + 1], mods[i + 2]
        if (isinstance(up, nn.Upsample) and up.mode == "nearest" and up.scale_factor in (2, 2.0, (2.0, 2.0))
                and isinstance(pad, nn.ReflectionPad2d) and tuple(pad.padding) == (1, 1, 1, 1)
                and _plain_conv(conv) and conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.groups == 1):
            mods[i:i + 3] = [NearestUpConv(conv)]
            folded += 1
        i += 1
    if folded:
        _set_modules(seq, mods)
    return folded


def _set_modules(seq: nn.Sequential, mods: list[nn.Module]) -> None:
    """Replace a Sequential's children with ``mods``, renumbered from 0."""
    for name in list(seq._modules):
        del seq._modules[name]
    for j, m in enumerate(mods):
        seq.add_module(str(j), m)


def _is_zero_pad(m: nn.Module) -> bool:
    return isinstance(m, nn.ReflectionPad2d) and all(p == 0 for p in m.padding)


def _plain_conv(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and m.dilation == (1, 1)
            and all(p == 0 for p in m.padding))


def _fold_pointwise_into_next(seq: nn.Sequential) -> int:
    """conv1x1 -> ReflectionPad -> conv  ==>  ReflectionPad -> conv' (exact: reflection commutes with it)."""
    folded = 0
    mods = list(seq)
    i = 0
    while i + 2 < len(mods):
        a, pad, b = mods[i], mods[i + 1], mods[i + 2]
        if (_plain_conv(a) and a.kernel_size == (1, 1) and a.groups == 1 and a.stride == (1, 1)
                and isinstance(pad, nn.ReflectionPad2d) and _plain_conv(b) and b.groups == 1):
            wa = a.weight.detach()[:, :, 0, 0]  # (mid, cin)
            ba = a.bias.detach() if a.bias is not None else torch.zeros(wa.shape[0])
            wb = b.weight.detach()  # (cout, mid, k, k)
            fused = nn.Conv2d(wa.shape[1], b.out_channels, b.kernel_size, b.stride, bias=True)
            fused.weight.data.copy_(torch.einsum("omij,mc->ocij", wb, wa))
            bias = b.bias.detach() if b.bias is not None else torch.zeros(b.out_channels)
            fused.bias.data.copy_(bias + torch.einsum("omij,m->o", wb, ba))
            mods[i:i + 3] = [pad, fused]
            folded += 1
        i += 1
    if folded:
        _set_modules(seq, mods)
    return folded


def cpu_graph(graph: nn.Module, upsample_conv: bool = True) -> nn.Module:
    """A copy of ``graph`` with the exact CPU rewrites above applied (the original is untouched)."""
    g = copy.deepcopy(graph).eval()
    counts = {"zero-pad": 0, "group-sum": 0, "space-to-depth": 0, "fold-1x1": 0, "nearest-up-conv": 0}
    for module in list(g.modules()):
        if isinstance(module, nn.Sequential):
            counts["fold-1x1"] += _fold_pointwise_into_next(module)
            if upsample_conv:
                counts["nearest-up-conv"] += _fold_upsample_into_conv(module)
    for module in list(g.modules()):
        for name, child in list(module.named_children()):
            if _is_zero_pad(child):
                setattr(module, name, nn.Identity())
                counts["zero-pad"] += 1
            elif (_plain_conv(child) and 1 < child.groups == child.out_channels < child.in_channels):
                setattr(module, name, GroupSumConv(child))
                counts["group-sum"] += 1
            elif (_plain_conv(child) and child.groups == 1 and child.stride == (1, 1)
                  and child.kernel_size[0] == child.kernel_size[1] >= 7
                  and min(child.in_channels, child.out_channels) < 8):
                setattr(module, name, SpaceToDepthConv(child))
                counts["space-to-depth"] += 1
    log.debug("CPU graph rewrites: %s", counts)
    return g.requires_grad_(False)


# -- ONNX ---------------------------------------------------------------------------------------------
def _name_dynamic_dims(onnx_model, names: list[str]) -> None:
    """The exporter names dims like '4*s39'; call them height/width so runtimes can pin them by name."""
    shape = onnx_model.graph.input[0].type.tensor_type.shape.dim
    rename = {shape[2].dim_param: "height", shape[3].dim_param: "width"}
    for vi in [*onnx_model.graph.input, *onnx_model.graph.output]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter narrates every step on stdout and its optimiser logs each folded constant: hide both."""
    noisy = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(noisy, levels):
            lg.setLevel(level)


def export_onnx(model: StyleModel, path: Path, rewrite: bool = True) -> Path:
    """Export the content graph (CPU rewrites applied if ``rewrite``) to one self-contained ONNX file."""
    import onnx

    graph = model.content_graph().eval()
    if rewrite:
        graph = cpu_graph(graph)
    names = input_names(model)
    with _quiet_exporter():
        program = export_program(model, graph)
        onnx_program = torch.onnx.export(program, input_names=names, output_names=[OUTPUT_NAME], dynamo=True,
                                         opset_version=ONNX_OPSET, optimize=True, verbose=False)
    proto = onnx_program.model_proto
    _name_dynamic_dims(proto, names)
    onnx.save(proto, str(path), save_as_external_data=False)
    return path


def padded_shape(model: StyleModel, height: int, width: int) -> tuple[int, int]:
    """The (H, W) an engine receives for a frame of this size (what Stylizer's pad_to_multiple gives)."""
    f, least = model.factor, min_side(model)

    def up(n: int) -> int:
        return max(-(-n // f) * f, -(-least // f) * f)

    return up(height), up(width)


def cached_onnx(model: StyleModel, weights_id: str | None, rewrite: bool = True, cache=None) -> Path:
    """The model's dynamic-H/W ONNX export, built once per (model, weights, recipe, torch, opset) and reused."""
    from engines.backends.cache import EngineCache, build_progress, graph_weights_id

    cache = cache or EngineCache()
    key = {
        "kind": "onnx", "model": model.name, "weights": weights_id or graph_weights_id(model),
        "recipe": RECIPE_VERSION, "rewrite": rewrite, "opset": ONNX_OPSET, "max_side": MAX_SIDE,
        "torch": torch.__version__,
    }

    def build(path: Path) -> None:
        with build_progress(f"exporting {model.name} to ONNX"):
            export_onnx(model, path, rewrite)

    return cache.get_or_build(f"{model.name}-cpu" if rewrite else model.name, key, "onnx", build)
