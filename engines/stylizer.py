"""Frames in, stylized frames out: conversion, padding to the model's factor, the engine, colour.

The Stylizer holds the state (a model and an engine); everything else here is a pure function.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engines.backends.base import Engine
from engines.color import preserve_color
from engines.models.base import StyleCode, StyleModel, padded_size
from engines.ops import mix_codes
from engines.upscale import UPSCALE_METHODS, guided_upscale_tensor, upscale

log = logging.getLogger(__name__)

#: short side of the small copy a frame's own style code is taken from (models with ``alpha_by_code``).
#: MicroAST, a 360 px photo at alpha 0 (tools/alpha_tradeoff.py): mean distance to the content 19.2 at
#: 128, 15.6 at 192, 13.0 at 256, 12.1 at full size; 192 costs about 20-25 ms a 640x360 frame on 2 cores
OWN_CODE_SIZE = 192


def to_tensor(rgb: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 in [0, 1]."""
    if not rgb.flags.writeable or not rgb.flags.c_contiguous:
        rgb = np.array(rgb, copy=True, order="C")  # torch wants a writable, contiguous buffer
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255.0)


def to_uint8(image: Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8, clamped then rounded."""
    return image[0].clamp(0.0, 1.0).mul(255.0).add_(0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def pad_to_multiple(image: Tensor, factor: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad bottom/right so H and W divide by ``factor``; reflection keeps the border natural.

    Tiny images are padded up to ``2 * factor`` (at least 16) so every reflection pad in the network fits.
    """
    h, w = image.shape[-2:]
    ph, pw = (a - b for a, b in zip(padded_size(h, w, factor), (h, w)))
    if ph == 0 and pw == 0:
        return image, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(image, (0, pw, 0, ph), mode=mode), (h, w)


def short_side_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) with the short side at ``short_side`` (0 or already there: unchanged), aspect kept."""
    if short_side <= 0 or min(height, width) == short_side:
        return height, width
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_short_side(rgb: np.ndarray, short_side: int) -> np.ndarray:
    """Resize so the short side is ``short_side`` (0 keeps it), antialiased, aspect kept."""
    h, w = short_side_shape(*rgb.shape[:2], short_side)
    if (h, w) == rgb.shape[:2]:
        return rgb
    from PIL import Image  # here, not at import: GPU check machines may have torch and numpy only

    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.LANCZOS))


def resize_to(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Scale to exactly ``size`` (W, H); the caller picks a size with the right aspect.

    OpenCV (area when shrinking, bilinear when growing): a few ms a frame, for live use, where
    :func:`resize_short_side` (PIL, sharper filters) would cost tens.
    """
    import cv2  # here, not at import: GPU check machines may have torch and numpy only

    if size is None or frame.shape[1::-1] == tuple(size):
        return frame
    shrink = size[0] < frame.shape[1]
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def small_copy(image: Tensor, short_side: int) -> Tensor:
    """A (1, 3, h, w) tensor image with its short side at most ``short_side``, antialiased, aspect kept."""
    h, w = short_side_shape(*image.shape[-2:], min(short_side, min(image.shape[-2:])))
    if (h, w) == tuple(image.shape[-2:]):
        return image
    return F.interpolate(image, size=(h, w), mode="bilinear", antialias=True, align_corners=False)


def back_to_source(stylized: np.ndarray, source: np.ndarray, upscale_method: str = UPSCALE_METHODS[0],
                   keep_color: bool = False) -> np.ndarray:
    """The end of every frame's way: a working-size stylization at ``source``'s size (``--upscale``), then,
    with ``keep_color``, the source's colours at that full size (so they are as sharp as the source's)."""
    out = upscale(stylized, source, upscale_method)
    if keep_color:
        out = to_uint8(preserve_color(to_tensor(out), to_tensor(source)))
    return out


def to_working_size(image: np.ndarray, size: int, fast: bool = False) -> np.ndarray:
    """The first step of every frame's way: short side at ``size`` (0 = as is). ``fast`` (live): OpenCV's area
    filter, a few ms; else Lanczos (stills, videos, the cluster), sharper for tens of ms."""
    if not fast:
        return resize_short_side(image, size)
    h, w = short_side_shape(*image.shape[:2], size)
    return resize_to(image, (w, h))


class FrameFilter(Protocol):
    """A step between the engine and the way back that keeps state across frames (``--temporal``)."""

    def process(self, work: np.ndarray, stylized: np.ndarray) -> np.ndarray: ...


def stylize_frame(stylizer: Stylizer, image: np.ndarray, code: StyleCode, *, alpha: float = 1.0, size: int = 0,
                  upscale_method: str = UPSCALE_METHODS[0], keep_color: bool = False,
                  temporal: FrameFilter | None = None, fast: bool = False) -> np.ndarray:
    """The one frame chain: to the working size, the engine, ``temporal``, back to ``image``'s size, colours.

    Stills, live and the Python API call it whole; the video pipeline (and the cluster, which runs it) calls
    the same steps on three threads: :func:`to_working_size` when decoding, the engine and ``temporal`` when
    stylizing, :func:`back_to_source` when encoding.
    """
    work = to_working_size(image, size, fast)
    out = stylizer.stylize(work, code, alpha)
    if temporal is not None:
        out = temporal.process(work, out)
    return back_to_source(out, image, upscale_method, keep_color)


# -- the same steps on tensors, for frames that stay on the GPU ----------------------------------------
def frames_to_input(frames: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(N, H, W, 3) or (H, W, 3) uint8 RGB on any device -> (N, 3, H, W) in [0, 1].

    The arithmetic of :func:`to_tensor` (fp32, divide by 255), so on the CPU it is bit-for-bit the same;
    other dtypes are cast from that fp32 result.
    """
    if frames.dim() == 3:
        frames = frames[None]
    x = frames.permute(0, 3, 1, 2).float().div_(255.0)
    return x if dtype == torch.float32 else x.to(dtype)


def output_to_frames(image: Tensor) -> Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8 on the same device: :func:`to_uint8`'s arithmetic."""
    return image.float().clamp(0.0, 1.0).mul(255.0).add_(0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def resize_tensor(image: Tensor, height: int, width: int) -> Tensor:
    """(N, 3, H, W) float resized with bicubic + antialias (torch's, on the frame's device), clamped.

    Not PIL's LANCZOS/BICUBIC: on real frames it is within a few uint8 levels of it (mean |diff| < 1,
    tested), and it costs a fraction of a millisecond on a GPU instead of 40-50 ms on a CPU core.
    """
    if tuple(image.shape[-2:]) == (height, width):
        return image
    x = F.interpolate(image.float(), size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp_(0.0, 1.0).to(image.dtype)


@torch.inference_mode()
def encode_style(model: StyleModel, style_rgb: np.ndarray, style_size: int = 512) -> StyleCode:
    """The style code of an image, computed in fp32 on the CPU: it is done once per style, needs no engine."""
    image = to_tensor(resize_short_side(style_rgb, style_size))
    image, _ = pad_to_multiple(image, model.factor)
    code = model.encode_style(image)
    return {k: v.float().contiguous() for k, v in code.items()}


class Stylizer:
    """A model's style side plus an engine for its content side."""

    def __init__(self, model: StyleModel, engine: Engine, weights_id: str | None = None) -> None:
        self.model = model
        self.engine = engine
        #: the hash of the weight files in use (a custom decoder's too), for cache keys; None if unknown
        self.weights_id = weights_id
        self.device = engine.device

    @property
    def name(self) -> str:
        return self.model.name

    def encode_style(self, style_rgb: np.ndarray, style_size: int = 512) -> StyleCode:
        """The style code of an image (:func:`encode_style`)."""
        return encode_style(self.model, style_rgb, style_size)

    @torch.inference_mode()
    def own_code(self, image: Tensor) -> StyleCode:
        """A frame's own style code, from a copy with the short side at :data:`OWN_CODE_SIZE` (fp32, CPU)."""
        small, _ = pad_to_multiple(small_copy(image.float().cpu(), OWN_CODE_SIZE), self.model.factor)
        return self.model.encode_style(small)

    def alpha_inputs(self, image: Tensor, codes: Sequence[StyleCode], alpha: float) -> tuple[list[StyleCode], float]:
        """The codes and alpha the engine runs with for a content/style trade-off of ``alpha``.

        Models with ``alpha_by_code`` run at alpha 1 with each code mixed as ``(1 - alpha) * own + alpha *
        code``, ``own`` being the frame's own code taken from ``image``; the others get the paper's
        feature blend. alpha 1 costs nothing extra either way.
        """
        if alpha >= 1.0 or not self.model.alpha_by_code:
            return list(codes), alpha
        own = self.own_code(image)
        return [mix_codes([own, code], [1.0 - alpha, alpha]) for code in codes], 1.0

    def stylize_tensor(self, image: Tensor, code: StyleCode, alpha: float) -> Tensor:
        (code,), alpha = self.alpha_inputs(image, [code], alpha)
        padded, (h, w) = pad_to_multiple(image, self.model.factor)
        alpha_t = torch.tensor(float(alpha), dtype=torch.float32)
        out = self.engine.run(padded, alpha_t, self.model.code_tensors(code))
        return out[..., :h, :w]

    def stylize(self, frame_rgb: np.ndarray, code: StyleCode, alpha: float = 1.0,
                keep_color: bool = False) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> stylized (H, W, 3) uint8 RGB of the same size."""
        image = to_tensor(frame_rgb)
        out = self.stylize_tensor(image, code, alpha).cpu()
        if keep_color:
            out = preserve_color(out, image)
        return to_uint8(out)

    def _device_style(self, code: StyleCode, alpha: float) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Alpha and the style code on the engine's device, uploaded again only when they change."""
        cached = getattr(self, "_style_on_device", None)
        if cached is not None and cached[0] is code and cached[1] == alpha:
            return cached[2], cached[3]
        alpha_t = torch.tensor(float(alpha), dtype=torch.float32, device=self.device)
        code_t = tuple(t.to(self.device) for t in self.model.code_tensors(code))
        self._style_on_device = (code, alpha, alpha_t, code_t)
        return alpha_t, code_t

    @torch.inference_mode()
    def stylize_frames(self, frames: Tensor, code: StyleCode, alpha: float = 1.0, keep_color: bool = False,
                       size: int = 0, upscale_method: str = UPSCALE_METHODS[0]) -> Tensor:
        """(N, H, W, 3) uint8 RGB -> stylized (N, H, W, 3) uint8, all on the engine's device.

        Normalise, resize (``size`` = short side, 0 keeps it), pad, the engine in batches of its
        ``max_batch``, the way back to the frames' size (``upscale_method``, as :func:`back_to_source`) and
        colour preservation all run where the frames are. On the CPU with ``size`` 0 it is :meth:`stylize`
        within one uint8 level on a few pixels (tested: the same arithmetic, but torch's conv kernels may round
        differently for another memory layout or batch size).
        For ``alpha_by_code`` models at alpha < 1 each frame mixes in its own code, one engine run a frame.
        """
        frames = frames.to(self.device, non_blocking=True)
        if frames.dim() == 3:
            frames = frames[None]
        h0, w0 = frames.shape[1:3]
        source = frames_to_input(frames)
        image = resize_tensor(source, *short_side_shape(h0, w0, size))
        padded, (h, w) = pad_to_multiple(image, self.model.factor)
        if alpha < 1.0 and self.model.alpha_by_code:  # each frame mixes in its own code: one engine run a frame
            outs = []
            for i in range(padded.shape[0]):
                (mixed,), run_alpha = self.alpha_inputs(image[i:i + 1], [code], alpha)
                alpha_t = torch.tensor(float(run_alpha), dtype=torch.float32, device=self.device)
                code_t = tuple(t.to(self.device) for t in self.model.code_tensors(mixed))
                outs.append(self.engine.run(padded[i:i + 1], alpha_t, code_t))
        else:
            alpha_t, code_t = self._device_style(code, alpha)
            step = max(1, self.engine.max_batch)
            outs = [self.engine.run(padded[i:i + step], alpha_t, code_t) for i in range(0, padded.shape[0], step)]
        out = (outs[0] if len(outs) == 1 else torch.cat(outs))[..., :h, :w]
        if (h, w) != (h0, w0):
            out = guided_upscale_tensor(out, source) if upscale_method == "guided" and h < h0 else \
                resize_tensor(out, h0, w0)
        if keep_color:
            out = preserve_color(out, source)
        return output_to_frames(out)

    @torch.inference_mode()
    def stylize_masked(self, frame_rgb: np.ndarray, codes: Sequence[StyleCode], masks: np.ndarray,
                       alpha: float = 1.0, keep_color: bool = False) -> np.ndarray:
        """Spatial control: ``masks`` (K, H, W) bool, one region per style, at the frame's size."""
        image = to_tensor(frame_rgb)
        codes, alpha = self.alpha_inputs(image, codes, alpha)
        padded, (h, w) = pad_to_multiple(image, self.model.factor)
        m = torch.from_numpy(masks.astype(np.float32))
        m, _ = pad_to_multiple(m[None], self.model.factor)
        out = self.model.stylize_masked(padded, codes, m[0], float(alpha))[..., :h, :w]
        if keep_color:
            out = preserve_color(out, image)
        return to_uint8(out)
