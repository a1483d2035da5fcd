"""What every model offers: a style side (image -> style code) and a content side (frame + code -> image),
and the files its weights come from.

The content side is one graph whose style code and alpha are plain tensor inputs, so an engine can
export or compile it once and use it with any style and any strength.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

StyleCode = dict[str, Tensor]


@dataclass(frozen=True)
class WeightFile:
    """One published weights file, and which part of its model it fills."""

    filename: str  # e.g. "decoder_iter_160000.pth.tar"
    url: str  # public download address
    sha256: str | None  # None: verified by key/shape layout by the model loader instead
    module: str = ""  # the model's attribute the file loads into ("decoder", "style_encoder", ...)
    what: str = ""  # what it is, in messages ("the MicroAST decoder")


@dataclass(frozen=True)
class ModelWeights:
    """All files one model needs, with their license and provenance (shown by ``streamer models list``).

    What :mod:`engines.weights` finds, verifies and downloads: it is handed this spec, never a model name."""

    model: str  # "adain" | "adain-r31" | "microast": also the folder its files live in
    files: tuple[WeightFile, ...]
    license: str
    source: str  # one-line human description of where they come from


def min_side(factor: int) -> int:
    """The smallest frame side a network with this downsampling factor takes: every reflection pad fits."""
    return max(2 * factor, 16)


def padded_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """The (H, W) a frame is padded to before the network: each side up to a multiple of ``factor``, and
    at least :func:`min_side`. The one rule that the stylizer's padding and the engines' shapes follow."""
    least = -(-min_side(factor) // factor) * factor

    def up(n: int) -> int:
        return max(-(-n // factor) * factor, least)

    return up(height), up(width)


class StyleModel(nn.Module, ABC):
    """A style-transfer network split at the style code."""

    name: ClassVar[str]
    #: its published weight files, each naming the attribute (sub-module) it fills; a file without a
    #: sha256 is checked key by key and shape by shape when it loads (``engines.weights.check_layout``)
    weights: ClassVar[ModelWeights]
    #: the attribute a user can train and pass as ``--decoder`` (``streamer train``); None: not offered
    trainable: ClassVar[str | None] = None
    #: input height and width must be multiples of this (the encoder's downsampling)
    factor: ClassVar[int]
    #: the order in which the content graph takes the style code's tensors
    code_names: ClassVar[tuple[str, ...]]
    #: None if int8 (engines/backends/int8.py) keeps this model's output close to fp32, else why not
    int8_refusal: ClassVar[str | None] = None
    #: how alpha < 1 is made. False: the content graph blends features with ``alpha`` (the paper's
    #: alpha * AdaIN(c, s) + (1 - alpha) * c; exact for AdaIN). True: the graph runs at alpha 1 with the
    #: style code mixed with the frame's own code (:meth:`engines.stylizer.Stylizer.alpha_inputs`), for
    #: networks whose decoder cannot take a feature-space blend (MicroAST's modulated one saturates)
    alpha_by_code: ClassVar[bool] = False

    @abstractmethod
    def encode_style(self, style: Tensor) -> StyleCode:
        """(1, 3, H, W) RGB in [0, 1] -> the style code, a few (1, C, 1, 1) tensors."""

    @abstractmethod
    def content_graph(self) -> nn.Module:
        """A module with ``forward(image, alpha, *code) -> image``: RGB in [0, 1] in and out (clamped)."""

    @abstractmethod
    def stylize_masked(self, image: Tensor, codes: Sequence[StyleCode], masks: Tensor, alpha: float) -> Tensor:
        """Spatial control: ``masks`` (K, H, W) one-hot at image resolution picks style k for region k."""

    def code_tensors(self, code: StyleCode) -> tuple[Tensor, ...]:
        """The style code in the content graph's input order."""
        return tuple(code[name] for name in self.code_names)
