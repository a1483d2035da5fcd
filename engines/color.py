"""Colour preservation as a per-frame post-process.

We keep the stylized image's luminance and take the chroma (Cb, Cr of BT.601 YCbCr) from the content:
the luminance-only transfer of Gatys et al. (2016), applied after the network. Unlike matching the
style image's colours to each frame, it needs no new style code per frame, costs a few element-wise
operations, and follows the content's own colours, which are stable from frame to frame in a video.
"""
from __future__ import annotations

import torch
from torch import Tensor

_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_FROM_YCBCR = torch.linalg.inv(_TO_YCBCR)


def rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """(N, 3, H, W) RGB -> YCbCr, Cb/Cr centred on 0."""
    return torch.einsum("ij,njhw->nihw", _TO_YCBCR.to(rgb), rgb)


def ycbcr_to_rgb(ycc: Tensor) -> Tensor:
    return torch.einsum("ij,njhw->nihw", _FROM_YCBCR.to(ycc), ycc)


def preserve_color(stylized: Tensor, content: Tensor) -> Tensor:
    """Stylized luminance with the content's chroma, clamped to [0, 1]."""
    ycc = torch.cat([rgb_to_ycbcr(stylized)[:, :1], rgb_to_ycbcr(content)[:, 1:]], dim=1)
    return ycbcr_to_rgb(ycc).clamp(0.0, 1.0)
