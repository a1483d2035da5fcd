"""Exact rewrites of the content graph for CPU kernels (OpenVINO, ONNX Runtime), applied before export.

Every rewrite here is exact algebra (same function, different kernels): it changes which CPU kernels
run, never what is computed, so outputs stay within float rounding of the eager graph (tested). They
were each measured on the reference machine (2 Zen 4 cores, AVX2 kernels; MicroAST at 640x360 with
2 threads, OpenVINO / ONNX Runtime):

* ``ReflectionPad2d(0)`` before 1x1 convs is a full-resolution copy: removed.
* a grouped conv with several inputs and one output per group (MicroAST's decoder) runs on slow
  generic grouped kernels; a depthwise conv followed by a fixed 0/1 "sum the group" 1x1 conv is the
  same function on fast kernels (OpenVINO 299 -> 246 ms, ONNX Runtime 332 -> 320 ms).
* a grouped conv with one input and k outputs per group (MicroAST's strided encoder convs) is k
  depthwise convs side by side; the dense conv after the ReLU takes its input channels in that order
  (OpenVINO 118.6 -> 113.5 ms).
* a large conv with few channels (MicroAST's 9x9 first and last layers) vectorises badly; on the
  ``SpaceToDepth`` of its input it becomes a 5-tap-wide conv with 4x the channels (ONNX Runtime 332 ->
  264 ms), and with 3 output channels a row stride of 2 gives 8x (OpenVINO 107.3 -> 103.7 ms).
* bilinear x2 upsampling is a fixed depthwise transposed conv, which OpenVINO runs faster than its
  Interpolate (101.2 -> 98.1 ms) and ONNX Runtime slower (165 -> 184 ms): OpenVINO's export only.
* a 1x1 conv followed by reflection padding and a conv (VGG's normalisation layer) folds into the
  second conv, because a per-pixel affine map commutes with reflection padding.
* nearest x2 upsampling -> reflection pad -> 3x3 conv (VGG decoders) runs at the low resolution as a
  2x2 conv per output phase: 16 instead of 36 taps per source pixel (AdaIN relu3_1 at 640x360:
  OpenVINO 1180 -> 1058 ms, ONNX Runtime 1268 -> 1150 ms).
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

#: the runtimes an export can be rewritten for (their fastest kernels differ)
CPU_RUNTIMES = ("openvino", "onnxruntime")


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


@torch.library.custom_op("streamer::space_to_depth", mutates_args=())
def space_to_depth(x: Tensor, block: int) -> Tensor:
    """ONNX's SpaceToDepth (channel (dy * block + dx) * C + c), exported as that one operator.

    torch's pixel_unshuffle exports as Reshape/Transpose/Reshape, which OpenVINO runs as a planar
    transpose between two layout reorders (4.3 ms on MicroAST's last layer input; the operator: 1.2 ms).
    """
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // block, block, w // block, block).permute(0, 3, 5, 1, 2, 4)
    return blocks.reshape(n, block * block * c, h // block, w // block).clone()


@space_to_depth.register_fake
def _space_to_depth_shape(x: Tensor, block: int) -> Tensor:
    n, c, h, w = x.shape
    return x.new_empty((n, block * block * c, h // block, w // block))


def _space_to_depth_onnx(x, block: int):
    from onnxscript import opset20 as op

    return op.SpaceToDepth(x, blocksize=block)


def onnx_translations() -> dict:
    """The exporter's table for the custom operators above (``custom_translation_table``)."""
    return {torch.ops.streamer.space_to_depth.default: _space_to_depth_onnx}


class SpaceToDepthConv(nn.Module):
    """A stride-1, unpadded KxK conv (K odd) run at half resolution on the 2x2 space-to-depth input.

    Input phase (r, s) at half-res pixel (Y, X) is x[2Y+r, 2X+s]. Output pixel (rows*Y+p, 2X+q) sums
    w[i, j] x[rows*Y+p+i, 2X+q+j]; writing p+i = 2a+r and q+j = 2b+s makes it a conv over the phases
    with stride (rows/2, 1) and one output channel per (channel, p, q), put back in place by a
    depth-to-space. ``rows`` = 4 gives 8x the output channels, for convs with very few (3 -> 24 fills
    the AVX lanes that 12 leaves idle). Needs H and W even, and H a multiple of ``rows``.
    """

    def __init__(self, conv: nn.Conv2d, rows: int = 2) -> None:
        super().__init__()
        w = conv.weight.detach()
        cout, cin, k, _ = w.shape
        if k % 2 == 0 or rows not in (2, 4):
            raise ValueError("SpaceToDepthConv needs an odd kernel and rows of 2 or 4")
        ka, kb = (rows + k - 2) // 2 + 1, k // 2 + 1  # half-res rows and columns the conv reads
        big = torch.zeros(cout, rows, 2, 2, 2, cin, ka, kb)  # (co, p, q | r, s, ci, a, b)
        for p in range(rows):
            for q in range(2):
                for r in range(2):
                    for s in range(2):
                        for a in range(ka):
                            for b in range(kb):
                                i, j = 2 * a + r - p, 2 * b + s - q
                                if 0 <= i < k and 0 <= j < k:
                                    big[:, p, q, r, s, :, a, b] = w[:, :, i, j]
        self.conv = nn.Conv2d(4 * cin, 2 * rows * cout, (ka, kb), stride=(rows // 2, 1), bias=conv.bias is not None)
        self.conv.weight.data.copy_(big.reshape(2 * rows * cout, 4 * cin, ka, kb))
        if conv.bias is not None:
            self.conv.bias.data.copy_(conv.bias.detach().repeat_interleave(2 * rows))
        self.rows, self.cout = rows, cout

    def forward(self, x: Tensor) -> Tensor:
        z = self.conv(space_to_depth(x, 2))
        if self.rows == 2:
            return F.pixel_shuffle(z, 2)  # exported as one DepthToSpace
        n, _, h, w = z.shape
        z = z.reshape(n, self.cout, self.rows, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return z.reshape(n, self.cout, self.rows * h, 2 * w)


class SplitDepthwiseConv(nn.Module):
    """A grouped conv with one input and k outputs per group, as k depthwise convs side by side.

    Its output channels come out as (j, group) instead of (group, j); the caller reorders the input
    channels of the dense conv that reads them, so nothing is ever shuffled at run time.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        groups, k = conv.groups, conv.out_channels // conv.groups
        self.convs = nn.ModuleList()
        for j in range(k):
            dw = nn.Conv2d(groups, groups, conv.kernel_size, conv.stride, groups=groups, bias=conv.bias is not None)
            dw.weight.data.copy_(conv.weight.detach()[j::k])
            if conv.bias is not None:
                dw.bias.data.copy_(conv.bias.detach()[j::k])
            self.convs.append(dw)
        #: new channel position -> original channel
        self.order = [g * k + j for j in range(k) for g in range(groups)]

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([dw(x) for dw in self.convs], dim=1)


class BilinearUp2(nn.Module):
    """torch's bilinear x2 upsample (align_corners=False) as a depthwise transposed conv.

    Each output pixel takes 3/4 of the nearer and 1/4 of the farther source pixel in each direction: the
    kernel [1, 3, 3, 1] / 4 at stride 2. The source index clamping at the edges is a replicate pad by 1,
    and transposed-conv padding 3 crops what that pad adds.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
        self.deconv = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=3, groups=channels, bias=False)
        self.deconv.weight.data.copy_(torch.outer(taps, taps).expand(channels, 1, 4, 4))

    def forward(self, x: Tensor) -> Tensor:
        return self.deconv(F.pad(x, (1, 1, 1, 1), mode="replicate"))


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


_PADS = (nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d, nn.Identity)


def _conv_slot(parent: nn.Module, name: str) -> tuple[nn.Module, str] | None:
    """Where the conv that ``parent.<name>`` computes lives: that child itself, or its last child when
    everything before it is padding (MicroAST's ConvLayer); None for anything else."""
    m = parent._modules[name]
    if isinstance(m, nn.Conv2d):
        return parent, name
    kids = list(m.named_children())
    if kids and isinstance(kids[-1][1], nn.Conv2d) and all(isinstance(c, _PADS) for _, c in kids[:-1]):
        return m, kids[-1][0]
    return None


def _split_one_to_many(seq: nn.Sequential) -> int:
    """grouped conv (1 input, k outputs per group) -> ReLUs -> dense conv  ==>  SplitDepthwiseConv, with
    the dense conv's input channels reordered to match."""
    names = list(seq._modules)
    split = 0
    for i, name in enumerate(names):
        slot = _conv_slot(seq, name)
        conv = getattr(*slot) if slot else None
        if conv is None or not (_plain_conv(conv) and 1 < conv.groups == conv.in_channels < conv.out_channels):
            continue
        j = i + 1
        while j < len(names) and isinstance(seq._modules[names[j]], nn.ReLU):
            j += 1
        reader = _conv_slot(seq, names[j]) if j < len(names) else None
        dense = getattr(*reader) if reader else None
        if dense is None or dense.groups != 1:
            continue
        replacement = SplitDepthwiseConv(conv)
        setattr(*slot, replacement)
        dense.weight.data.copy_(dense.weight.detach()[:, replacement.order])
        split += 1
    return split


def _bilinear_to_deconv(seq: nn.Sequential) -> int:
    """Upsample(bilinear, x2, align_corners=False) -> conv  ==>  BilinearUp2 (it needs the channel count)."""
    names = list(seq._modules)
    done = 0
    for i, name in enumerate(names[:-1]):
        up = seq._modules[name]
        if not (isinstance(up, nn.Upsample) and up.mode == "bilinear" and not up.align_corners
                and up.size is None and up.scale_factor in (2, 2.0, (2.0, 2.0))):
            continue
        reader = _conv_slot(seq, names[i + 1])
        if reader is not None:
            seq._modules[name] = BilinearUp2(getattr(*reader).in_channels)
            done += 1
    return done


def cpu_graph(graph: nn.Module, runtime: str = "openvino", factor: int = 4) -> nn.Module:
    """A copy of ``graph`` with the exact rewrites above that pay off on ``runtime`` (the original is
    untouched). ``factor``: frame sides are multiples of it (what the space-to-depth rewrite needs)."""
    if runtime not in CPU_RUNTIMES:
        raise ValueError(f"no CPU rewrites for runtime {runtime!r}")
    g = copy.deepcopy(graph).eval()
    counts = {"zero-pad": 0, "group-sum": 0, "split-depthwise": 0, "space-to-depth": 0, "fold-1x1": 0,
              "nearest-up-conv": 0, "bilinear-deconv": 0}
    for module in list(g.modules()):
        if isinstance(module, nn.Sequential):
            counts["fold-1x1"] += _fold_pointwise_into_next(module)
            counts["nearest-up-conv"] += _fold_upsample_into_conv(module)
            counts["split-depthwise"] += _split_one_to_many(module)
            if runtime == "openvino":
                counts["bilinear-deconv"] += _bilinear_to_deconv(module)
    for module in list(g.modules()):
        for name, child in list(module.named_children()):
            if _is_zero_pad(child):
                setattr(module, name, nn.Identity())
                counts["zero-pad"] += 1
            elif (_plain_conv(child) and 1 < child.groups == child.out_channels < child.in_channels):
                setattr(module, name, GroupSumConv(child))
                counts["group-sum"] += 1
            elif (factor % 2 == 0 and _plain_conv(child) and child.groups == 1 and child.stride == (1, 1)
                  and child.kernel_size[0] == child.kernel_size[1] >= 7 and child.kernel_size[0] % 2 == 1
                  and min(child.in_channels, child.out_channels) < 8):
                rows = 4 if 4 * child.out_channels < 16 and factor % 4 == 0 else 2
                setattr(module, name, SpaceToDepthConv(child, rows))
                counts["space-to-depth"] += 1
    log.debug("CPU graph rewrites for %s: %s", runtime, counts)
    return g.requires_grad_(False)
