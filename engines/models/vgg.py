"""AdaIN with the normalised VGG-19 encoder: the paper's relu4_1 model and the relu3_1 variant.

Module indices match the published PyTorch files (``vgg_normalised.pth``, ``decoder.pth``, and the
deep-transfer relu3_1 pair) so their state dicts load as they are.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from engines.models.base import ModelWeights, StyleCode, StyleModel, WeightFile
from engines.ops import adain, blend, masked_adain, mean_std

_ADAIN_URL = "https://github.com/naoto0804/pytorch-AdaIN/releases/download/v0.0.0/"
_R31_URL = "https://github.com/pietrocarbo/deep-transfer/raw/master/models/autoencoder_vgg19/vgg19_3/"

# A compact layer spec: ("c", in, out, k) conv, "p" reflection pad 1, "r" ReLU, "m" max-pool 2 (ceil), "u" nearest x2.
_VGG_TO_RELU4_1: list = [
    ("c", 3, 3, 1), "p", ("c", 3, 64, 3), "r",  # relu1_1
    "p", ("c", 64, 64, 3), "r", "m",
    "p", ("c", 64, 128, 3), "r",  # relu2_1
    "p", ("c", 128, 128, 3), "r", "m",
    "p", ("c", 128, 256, 3), "r",  # relu3_1 (18 modules)
    "p", ("c", 256, 256, 3), "r", "p", ("c", 256, 256, 3), "r", "p", ("c", 256, 256, 3), "r", "m",
    "p", ("c", 256, 512, 3), "r",  # relu4_1 (31 modules)
]
_RELU3_1_LEN = 18

_DECODER_RELU4_1: list = [
    "p", ("c", 512, 256, 3), "r", "u",
    "p", ("c", 256, 256, 3), "r", "p", ("c", 256, 256, 3), "r", "p", ("c", 256, 256, 3), "r",
    "p", ("c", 256, 128, 3), "r", "u",
    "p", ("c", 128, 128, 3), "r", "p", ("c", 128, 64, 3), "r", "u",
    "p", ("c", 64, 64, 3), "r", "p", ("c", 64, 3, 3),
]

_DECODER_RELU3_1: list = [
    "p", ("c", 256, 128, 3), "r", "u",
    "p", ("c", 128, 128, 3), "r", "p", ("c", 128, 64, 3), "r", "u",
    "p", ("c", 64, 64, 3), "r", "p", ("c", 64, 3, 3),
]


def build_sequential(spec: Sequence) -> nn.Sequential:
    layers: list[nn.Module] = []
    for item in spec:
        if isinstance(item, tuple):
            _, cin, cout, k = item
            layers.append(nn.Conv2d(cin, cout, k))
        elif item == "p":
            layers.append(nn.ReflectionPad2d(1))
        elif item == "r":
            layers.append(nn.ReLU())
        elif item == "m":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        elif item == "u":
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        else:
            raise ValueError(f"unknown layer spec {item!r}")
    return nn.Sequential(*layers)


class _VGGContentGraph(nn.Module):
    def __init__(self, model: "VGGAdaIN") -> None:
        super().__init__()
        self.encoder = model.encoder
        self.decoder = model.decoder

    def forward(self, image: Tensor, alpha: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        feat = self.encoder(image)
        target = blend(adain(feat, mean, std), feat, alpha)
        return self.decoder(target).clamp(0.0, 1.0)


class VGGAdaIN(StyleModel):
    """Encoder (frozen VGG prefix) -> AdaIN -> decoder."""

    code_names = ("mean", "std")

    def __init__(self, encoder_spec: Sequence, decoder_spec: Sequence) -> None:
        super().__init__()
        self.encoder = build_sequential(encoder_spec)
        self.decoder = build_sequential(decoder_spec)

    def encode_style(self, style: Tensor) -> StyleCode:
        mean, std = mean_std(self.encoder(style))
        return {"mean": mean, "std": std}

    def content_graph(self) -> nn.Module:
        return _VGGContentGraph(self)

    def stylize_masked(self, image: Tensor, codes: Sequence[StyleCode], masks: Tensor, alpha: float) -> Tensor:
        feat = self.encoder(image)
        small = F.interpolate(masks[None].float(), size=feat.shape[2:], mode="nearest")[0]
        target = masked_adain(feat, [c["mean"] for c in codes], [c["std"] for c in codes], small)
        return self.decoder(blend(target, feat, alpha)).clamp(0.0, 1.0)


class AdaIN(VGGAdaIN):
    """The paper's model: VGG-19 to relu4_1 and its trained decoder."""

    name = "adain"
    factor = 8
    weights = ModelWeights(
        model="adain",
        files=(
            WeightFile("vgg_normalised.pth", _ADAIN_URL + "vgg_normalised.pth", None,
                       "encoder", "the normalised VGG-19 encoder (relu4_1)"),
            WeightFile("decoder.pth", _ADAIN_URL + "decoder.pth", None, "decoder", "the AdaIN relu4_1 decoder"),
        ),
        license="MIT",
        source="AdaIN (Huang & Belongie, ICCV 2017), relu4_1 encoder/decoder from the PyTorch port "
               "github.com/naoto0804/pytorch-AdaIN (release v0.0.0)",
    )
    trainable = "decoder"

    def __init__(self) -> None:
        super().__init__(_VGG_TO_RELU4_1, _DECODER_RELU4_1)


class AdaINR31(VGGAdaIN):
    """The same encoder cut at relu3_1, with a decoder trained for reconstruction (milder style)."""

    name = "adain-r31"
    factor = 4
    weights = ModelWeights(
        model="adain-r31",
        files=(
            WeightFile("vgg_normalised_conv3_1.pth", _R31_URL + "vgg_normalised_conv3_1.pth",
                       "ff8506173d3a17e7b0fbfbff242c00b6827cfbcd7c21852b46806ae6a3fd7b09",
                       "encoder", "the normalised VGG-19 encoder (relu3_1)"),
            WeightFile("feature_invertor_conv3_1.pth", _R31_URL + "feature_invertor_conv3_1.pth",
                       "f32bc7bd366ff027936b3d90a98bc3f8667ba3f2762df916261a0586c5e30ab5",
                       "decoder", "the relu3_1 decoder"),
        ),
        license="Apache-2.0",
        source="normalised VGG-19 encoder and decoder at relu3_1 from github.com/pietrocarbo/deep-transfer "
               "(models/autoencoder_vgg19/vgg19_3)",
    )
    trainable = "decoder"

    def __init__(self) -> None:
        super().__init__(_VGG_TO_RELU4_1[:_RELU3_1_LEN], _DECODER_RELU3_1)

