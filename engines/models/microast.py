"""MicroAST (Wang et al., AAAI 2023): a tiny arbitrary-style network with AdaIN and filter modulation.

Layer names match the published state dicts (``enc1.0.conv_layer.weight`` ...). Everything a style
contributes is a handful of 64-vectors: the mean/std of both style features and the modulator outputs.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from engines.models.base import ModelWeights, StyleCode, StyleModel, WeightFile
from engines.ops import adain, blend, masked_adain, mean_std

_MICROAST_URL = "https://github.com/EndyWon/MicroAST/raw/main/models/"


class ConvLayer(nn.Module):
    """Reflection-pad by k//2, then convolve (the reference's building block)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv_layer = nn.Conv2d(cin, cout, kernel, stride, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_layer(self.pad(x))


class Residual(nn.Module):
    """x + conv2(relu(conv1(x))), optionally with the style's filter modulation."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3)
        self.conv2 = ConvLayer(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))

    def modulated(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        y1 = self.conv1(x)
        y3 = F.relu(weight * y1 + bias * x)
        y5 = weight * self.conv2(y3) + bias * y3
        return x + y5


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(
            ConvLayer(3, 16, 9), nn.ReLU(),
            ConvLayer(16, 32, 3, stride=2, groups=16), nn.ReLU(),
            ConvLayer(32, 32, 1), nn.ReLU(),
            ConvLayer(32, 64, 3, stride=2, groups=32), nn.ReLU(),
            ConvLayer(64, 64, 1), nn.ReLU(),
            Residual(64),
        )
        self.enc2 = nn.Sequential(Residual(64))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f1 = self.enc1(x)
        return f1, self.enc2(f1)


class Modulator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for name in ("weight1", "bias1", "weight2", "bias2"):
            setattr(self, name, nn.Sequential(ConvLayer(64, 64, 3, groups=64), nn.AdaptiveAvgPool2d(1)))

    def forward(self, f1: Tensor, f2: Tensor) -> StyleCode:
        return {"w1": self.weight1(f1), "b1": self.bias1(f1), "w2": self.weight2(f2), "b2": self.bias2(f2)}


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dec1 = Residual(64)
        self.dec2 = Residual(64)
        self.dec3 = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            ConvLayer(64, 32, 3, groups=32), nn.ReLU(),
            ConvLayer(32, 32, 1), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            ConvLayer(32, 16, 3, groups=16), nn.ReLU(),
            ConvLayer(16, 16, 1), nn.ReLU(),
            ConvLayer(16, 3, 9),
        )


class _MicroASTContentGraph(nn.Module):
    def __init__(self, model: "MicroAST") -> None:
        super().__init__()
        self.encoder = model.content_encoder
        self.decoder = model.decoder

    def forward(self, image: Tensor, alpha: Tensor, mean0: Tensor, std0: Tensor, mean1: Tensor, std1: Tensor,
                w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        c1, c2 = self.encoder(image)
        x1 = blend(adain(c2, mean1, std1), c2, alpha)
        x2 = self.decoder.dec1.modulated(x1, w2, b2)
        x3 = blend(adain(x2, mean0, std0), x2, alpha)
        x4 = self.decoder.dec2.modulated(x3, w1, b1)
        return self.decoder.dec3(x4).clamp(0.0, 1.0)


class MicroAST(StyleModel):
    name = "microast"
    factor = 4
    code_names = ("mean0", "std0", "mean1", "std1", "w1", "b1", "w2", "b2")
    weights = ModelWeights(
        model="microast",
        files=tuple(
            WeightFile(name, _MICROAST_URL + name, sha, module, what)
            for name, sha, module, what in (
                ("content_encoder_iter_160000.pth.tar",
                 "c8d895c0eec52507c157e102fab217c37f0c399ef3e168ef8b0b2677714660a4",
                 "content_encoder", "the MicroAST content encoder"),
                ("style_encoder_iter_160000.pth.tar",
                 "94f6b3fa386828692c20809a0af8bd0eba9c04e90a7d8842086976e4d223c5af",
                 "style_encoder", "the MicroAST style encoder"),
                ("modulator_iter_160000.pth.tar",
                 "8588055baf7d5ad8398d595d5518c6f030e3ff8dbb6007a7c1779776e11da28b",
                 "modulator", "the MicroAST modulator"),
                ("decoder_iter_160000.pth.tar",
                 "32e04a46b953fd9f94ec9e20f351511305a5260e000c18f9aef6570d5f1e23d9",
                 "decoder", "the MicroAST decoder"),
            )
        ),
        license="MIT (Copyright (c) 2022 Zhizhong Wang)",
        source="MicroAST (Wang et al., AAAI 2023), github.com/EndyWon/MicroAST (models/)",
    )
    int8_refusal = ("int8 is not offered for microast: its modulated layers lose too much (worst real image "
                    "26 dB against fp32, bar 33 dB) for 1.25x; use --precision fp32")
    # The authors' feature blend (alpha * AdaIN + (1 - alpha) * c before each modulated block) drives the
    # decoder out of range: at alpha 0.5 every pixel of a real photo comes out (0, 255, 255). Mixing the
    # style's code with the frame's own code (its style encoder on a small copy) trades smoothly instead.
    alpha_by_code = True

    def __init__(self) -> None:
        super().__init__()
        self.content_encoder = Encoder()
        self.style_encoder = Encoder()
        self.modulator = Modulator()
        self.decoder = Decoder()

    def encode_style(self, style: Tensor) -> StyleCode:
        s1, s2 = self.style_encoder(style)
        mean0, std0 = mean_std(s1)
        mean1, std1 = mean_std(s2)
        return {"mean0": mean0, "std0": std0, "mean1": mean1, "std1": std1, **self.modulator(s1, s2)}

    def content_graph(self) -> nn.Module:
        return _MicroASTContentGraph(self)

    def stylize_masked(self, image: Tensor, codes: Sequence[StyleCode], masks: Tensor, alpha: float) -> Tensor:
        c1, c2 = self.content_encoder(image)
        small = F.interpolate(masks[None].float(), size=c2.shape[2:], mode="nearest")[0]  # (K, h, w)

        def spatial(key: str) -> Tensor:  # a per-pixel modulation map mixing each region's vector
            return sum(code[key] * small[k][None, None] for k, code in enumerate(codes))

        x1 = blend(masked_adain(c2, [c["mean1"] for c in codes], [c["std1"] for c in codes], small), c2, alpha)
        x2 = self.decoder.dec1.modulated(x1, spatial("w2"), spatial("b2"))
        x3 = blend(masked_adain(x2, [c["mean0"] for c in codes], [c["std0"] for c in codes], small), x2, alpha)
        x4 = self.decoder.dec2.modulated(x3, spatial("w1"), spatial("b1"))
        return self.decoder.dec3(x4).clamp(0.0, 1.0)
