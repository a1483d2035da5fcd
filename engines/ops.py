"""The maths of AdaIN as small pure functions.

Conventions follow the trained weights (see shared/weights/README.md): per-channel mean over H*W and
std = sqrt(unbiased variance + eps) with eps = 1e-5 inside the square root.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

EPS = 1e-5


def mean_std(feat: Tensor, eps: float = EPS) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of an (N, C, H, W) feature map, each (N, C, 1, 1).

    Written with keep-dim reductions and elementwise ops only: a reshape to (N, C, H*W) in the exported
    graph makes OpenVINO convert the features to a planar layout and back around it. Computed and
    returned in fp32 whatever ``feat`` is (a no-op for fp32 features): in fp16 the squared deviations
    overflow once |x - mean| > 256, and VGG's relu4_1 features get there.
    """
    feat = feat.float()
    mean = feat.mean(dim=(2, 3), keepdim=True)
    centred = feat - mean
    count = feat.shape[2] * feat.shape[3]
    var = (centred * centred).mean(dim=(2, 3), keepdim=True) * (count / (count - 1)) + eps
    return mean, var.sqrt()


def adain(content: Tensor, style_mean: Tensor, style_std: Tensor, eps: float = EPS) -> Tensor:
    """AdaIN(x, y) = sigma(y) * (x - mu(x)) / sigma(x) + mu(y), with the style side precomputed.

    The statistics and the normalisation run in fp32 and the result comes back in the content's dtype,
    so an fp16/bf16 graph keeps its activations low and its AdaIN exact (fp32 graphs: unchanged ops).
    """
    x = content.float()
    c_mean, c_std = mean_std(x, eps)
    return ((x - c_mean) / c_std * style_std.float() + style_mean.float()).to(content.dtype)


def blend(stylized: Tensor, original: Tensor, alpha: Tensor | float) -> Tensor:
    """The paper's content/style trade-off: alpha * t + (1 - alpha) * f(c).

    A 0-d ``alpha`` (an engine input) is given the features' rank first: broadcasting a scalar made
    OpenVINO run this blend, and every elementwise op after it, in a planar layout (a reorder around
    each conv: 2.3 ms of MicroAST's 100).
    """
    if isinstance(alpha, Tensor):
        if alpha.dim() == 0:
            alpha = alpha.reshape([1] * stylized.dim())
        alpha = alpha.to(stylized.dtype)  # an fp32 alpha must not promote an fp16 graph to fp32
    return alpha * stylized + (1.0 - alpha) * original


def masked_mean_std(feat: Tensor, mask: Tensor, eps: float = EPS) -> tuple[Tensor, Tensor]:
    """Mean/std of the pixels where ``mask`` (N, 1, H, W, in {0, 1}) is set; unbiased like :func:`mean_std`."""
    n, c = feat.shape[:2]
    flat = feat.float().reshape(n, c, -1)
    m = mask.reshape(n, 1, -1).to(feat.dtype)
    count = m.sum(dim=2).clamp_min(2.0)
    mean = (flat * m).sum(dim=2) / count
    var = ((flat - mean.unsqueeze(2)) ** 2 * m).sum(dim=2) / (count - 1.0) + eps
    return mean.reshape(n, c, 1, 1), var.sqrt().reshape(n, c, 1, 1)


def masked_adain(content: Tensor, style_means: Sequence[Tensor], style_stds: Sequence[Tensor],
                 masks: Tensor, eps: float = EPS) -> Tensor:
    """Spatial control (paper section 7): region k is normalised by its own statistics and given style k's.

    ``masks`` is (K, H, W) with one-hot regions at the feature map's resolution.
    """
    out = torch.zeros_like(content)
    for k, (s_mean, s_std) in enumerate(zip(style_means, style_stds)):
        m = masks[k].reshape(1, 1, *masks.shape[1:]).to(content.dtype)
        if float(m.sum()) == 0.0:
            continue
        c_mean, c_std = masked_mean_std(content, m, eps)
        out = out + m * ((content - c_mean) / c_std * s_std + s_mean)
    return out


def mix_codes(codes: Sequence[dict[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
    """Style interpolation: a weighted mean of style codes.

    For AdaIN this is exactly the paper's sum_k w_k AdaIN(c, s_k), because AdaIN is affine in the style
    mean and std; for MicroAST the modulation vectors are mixed the same way.
    """
    if len(codes) != len(weights) or not codes:
        raise ValueError("one weight per style code is needed")
    total = float(sum(weights))
    if not 0 < total < float("inf"):  # also nan, which no comparison would stop
        raise ValueError("style weights must be finite and sum to more than zero")
    return {key: sum(w / total * code[key] for w, code in zip(weights, codes)) for key in codes[0]}


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1] (inf when equal): how engines are compared."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)
