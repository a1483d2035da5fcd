"""Back from the working size to the output size: edge-aware (a guided filter) or plain bicubic.

A network that works at 152 px and is scaled up bicubically to 640x360 gives a smear: every edge is as
soft as the working size. The source frame at the output size still has those edges, so the way back
fits, in each small window of the working-size frame, a linear model from the source's luma to each
channel of the stylization, smooths the models, scales them up and applies them to the full-size
luma: the fast guided filter (He & Sun, "Fast Guided Filter", 2015; He et al., "Guided Image
Filtering", ECCV 2010). Colours come from the stylization, edges from the source. The part of the
stylization the local model cannot explain (brush strokes that are not in the photo) is added back at
:data:`STROKES` of its strength, so the picture stays a painting rather than a recoloured photo.

Measured on 72 frames of the real clip, la_muse and brushstrokes, microast at 152 px against the
full-size render (``python -m tools.upscale_quality``; the figures are in the README): the radius,
eps and strokes below were chosen there, with the strips looked at.

Two forms, the same maths: numpy/OpenCV for frames on the CPU, torch for frames that stay on the
GPU (:func:`guided_upscale_tensor`, no round trip to the host).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: ``--upscale`` choices: the first is the default
UPSCALE_METHODS = ("guided", "bicubic")
#: window radius of the local linear models, in working-size pixels (the network's strokes scale with it)
RADIUS = 4
#: regulariser of the models (values in [0, 1]): smaller follows the source's edges more closely
EPS = 1e-4
#: how much of the stylization's own detail that the source's luma cannot explain is kept (0..1)
STROKES = 0.3
#: BT.601 luma weights (OpenCV's RGB2GRAY, the Y of engines.color)
_LUMA = (0.299, 0.587, 0.114)


# -- OpenCV: frames on the CPU ---------------------------------------------------------------------------
def guided_coefficients(guide: np.ndarray, target: np.ndarray, radius: int = RADIUS, eps: float = EPS,
                        strokes: float = STROKES) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed local models ``target ~ a * guide + b`` at the working size: (a, b), each (h, w, C).

    ``guide`` (the luma, repeated in each of the C channels) and ``target`` are (h, w, C) float32 in [0, 1].
    ``b`` carries ``strokes`` times the residual the models leave, so applying them gives back that much of
    the target's own detail. OpenCV's arithmetic throughout: on these small frames it costs about half of
    numpy's broadcasting.
    """
    import cv2  # here, not at import: GPU check machines may have torch and numpy only

    r = max(1, min(radius, (min(guide.shape[:2]) - 1) // 2))  # a window no larger than the frame
    size = (2 * r + 1, 2 * r + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.blur(x, size, borderType=cv2.BORDER_REPLICATE)

    mean_g, mean_t = box(guide), box(target)
    var_g = cv2.subtract(box(cv2.multiply(guide, guide)), cv2.multiply(mean_g, mean_g))
    cov = cv2.subtract(box(cv2.multiply(guide, target)), cv2.multiply(mean_g, mean_t))
    a = cv2.divide(cov, cv2.add(cv2.max(var_g, 0.0), eps))
    a, b = box(a), box(cv2.subtract(mean_t, cv2.multiply(a, mean_g)))
    if strokes:  # b + strokes * (target - (a * guide + b))
        b = cv2.addWeighted(b, 1.0 - strokes, cv2.subtract(target, cv2.multiply(a, guide)), strokes, 0.0)
    return a, b


def guided_upscale(stylized: np.ndarray, source: np.ndarray, radius: int = RADIUS, eps: float = EPS,
                   strokes: float = STROKES) -> np.ndarray:
    """A working-size stylization (h, w, 3) uint8 at ``source``'s size (H, W), its edges taken from ``source``.

    The low-resolution guide is the source's luma scaled down by area (on the clip, a little closer to the
    full-size render than the luma of the frame the network saw). At full size it is a few OpenCV passes: the
    luma, two bilinear resizes and one multiply-add that rounds and saturates into uint8 (about 5 ms of CPU at
    640x360 and 21 ms at 1280x720 on one Zen 4 core; bicubic: 1 and 2).
    """
    import cv2

    height, width = source.shape[:2]
    h, w = stylized.shape[:2]
    if (h, w) == (height, width):
        return stylized
    luma = cv2.cvtColor(np.ascontiguousarray(source), cv2.COLOR_RGB2GRAY)  # BT.601, uint8
    small = cv2.resize(luma, (w, h), interpolation=cv2.INTER_AREA)
    guide = cv2.merge([small, small, small]).astype(np.float32) * np.float32(1 / 255)
    a, b = guided_coefficients(guide, stylized.astype(np.float32) * np.float32(1 / 255), radius, eps, strokes)
    a = cv2.resize(a, (width, height), interpolation=cv2.INTER_LINEAR)
    b = cv2.resize(b, (width, height), interpolation=cv2.INTER_LINEAR)
    a_luma = cv2.multiply(a, cv2.merge([luma, luma, luma]), dtype=cv2.CV_32F)  # a * luma in 0..255
    return cv2.addWeighted(a_luma, 1.0, b, 255.0, 0.0, dtype=cv2.CV_8U)


def bicubic_upscale(stylized: np.ndarray, height: int, width: int) -> np.ndarray:
    """The plain way back (OpenCV bicubic, 1-2 ms at 640x360): every edge as soft as the working size."""
    import cv2

    if stylized.shape[:2] == (height, width):
        return stylized
    return cv2.resize(stylized, (width, height), interpolation=cv2.INTER_CUBIC)


def upscale(stylized: np.ndarray, source: np.ndarray, method: str = UPSCALE_METHODS[0]) -> np.ndarray:
    """``stylized`` at ``source``'s size by ``method`` (``guided`` or ``bicubic``); unchanged if already there.

    A stylization larger than the source (never the case for ``--size``) is scaled down by area.
    """
    import cv2

    height, width = source.shape[:2]
    if stylized.shape[:2] == (height, width):
        return stylized
    if stylized.shape[0] > height:
        return cv2.resize(stylized, (width, height), interpolation=cv2.INTER_AREA)
    if method == "guided":
        return guided_upscale(stylized, source)
    if method == "bicubic":
        return bicubic_upscale(stylized, height, width)
    raise ValueError(f"unknown upscale method {method!r}: one of {', '.join(UPSCALE_METHODS)}")


# -- torch: frames that stay on the device ----------------------------------------------------------------
def _box_tensor(x: Tensor, radius: int) -> Tensor:
    """Window means with the border repeated (OpenCV's BORDER_REPLICATE), one direction at a time."""
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.avg_pool2d(x, (1, 2 * radius + 1), stride=1)
    return F.avg_pool2d(x, (2 * radius + 1, 1), stride=1)


def _luma_tensor(rgb: Tensor) -> Tensor:
    """(N, 3, H, W) -> (N, 1, H, W)."""
    weights = torch.tensor(_LUMA, dtype=rgb.dtype, device=rgb.device).reshape(1, 3, 1, 1)
    return (rgb * weights).sum(dim=1, keepdim=True)


def guided_upscale_tensor(stylized: Tensor, source: Tensor, radius: int = RADIUS, eps: float = EPS,
                          strokes: float = STROKES) -> Tensor:
    """:func:`guided_upscale` on (N, 3, h, w) and (N, 3, H, W) float tensors in [0, 1], on their device, clamped."""
    height, width = source.shape[-2:]
    h, w = stylized.shape[-2:]
    if (h, w) == (height, width):
        return stylized
    target = stylized.float()
    luma = _luma_tensor(source.float())
    small = F.interpolate(luma, size=(h, w), mode="area")
    r = max(1, min(radius, (min(h, w) - 1) // 2))
    mean_g, mean_t = _box_tensor(small, r), _box_tensor(target, r)
    var_g = _box_tensor(small * small, r) - mean_g * mean_g
    cov = _box_tensor(small * target, r) - mean_g * mean_t
    a = cov / (var_g.clamp_min(0.0) + eps)
    b = mean_t - a * mean_g
    a, b = _box_tensor(a, r), _box_tensor(b, r)
    if strokes:
        b = b + strokes * (target - (a * small + b))
    a = F.interpolate(a, size=(height, width), mode="bilinear", align_corners=False)
    b = F.interpolate(b, size=(height, width), mode="bilinear", align_corners=False)
    return (a * luma + b).clamp_(0.0, 1.0).to(stylized.dtype)
