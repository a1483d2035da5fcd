"""Training a decoder for a fixed VGG encoder: the paper's objective (Huang & Belongie 2017, section 6).

The maths are small pure functions (taps, losses, the learning-rate schedule, the per-iteration sample
plan); :class:`DecoderTrainer` holds the state of one run (decoder, Adam, iteration, RNG) and knows how
to step it and how to write and read an exact checkpoint. Data loading and the command line live in
``streamer/train.py``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.errors import InputError
from engines.files import Replacing
from engines.models.vgg import VGGAdaIN
from engines.ops import adain, mean_std

#: ends (exclusive module index) of relu1_1, relu2_1, relu3_1, relu4_1 in the normalised VGG layout
RELU_ENDS = {"relu1_1": 4, "relu2_1": 11, "relu3_1": 18, "relu4_1": 31}
CHECKPOINT_FORMAT = 1


def style_layer_ends(encoder: nn.Sequential) -> list[int]:
    """The relu_1 taps an encoder reaches; its last one is the encoder's output (the content layer)."""
    ends = [end for end in RELU_ENDS.values() if end <= len(encoder)]
    if not ends or ends[-1] != len(encoder):
        raise ValueError(f"an encoder of {len(encoder)} modules does not end at a relu_1 layer")
    return ends


def encode_taps(encoder: nn.Sequential, image: Tensor, ends: Sequence[int]) -> list[Tensor]:
    """The encoder's outputs at each of ``ends`` (module indices, increasing), in one pass."""
    feats, x, start = [], image, 0
    for end in ends:
        for module in encoder[start:end]:
            x = module(x)
        feats.append(x)
        start = end
    return feats


def content_loss(output_feat: Tensor, target: Tensor) -> Tensor:
    """MSE between f(g(t)) and t at the encoder's last layer (fp32)."""
    return F.mse_loss(output_feat.float(), target.float())


def style_loss(output_feats: Sequence[Tensor], style_feats: Sequence[Tensor]) -> Tensor:
    """Sum over layers of MSE(channel means) + MSE(channel stds); the statistics of ``engines.ops``."""
    total = torch.zeros((), device=output_feats[0].device)
    for out, sty in zip(output_feats, style_feats, strict=True):
        o_mean, o_std = mean_std(out.float())
        s_mean, s_std = mean_std(sty.float())
        total = total + F.mse_loss(o_mean, s_mean) + F.mse_loss(o_std, s_std)
    return total


def inverse_decay_lr(lr: float, decay: float, iteration: int) -> float:
    """pytorch-AdaIN's schedule: lr / (1 + decay * iteration), iteration counted from 0."""
    return lr / (1.0 + decay * iteration)


def adain_losses(model: VGGAdaIN, content: Tensor, style: Tensor,
                 ends: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """(content loss, style loss, g(t)) for a batch: t = AdaIN(f(c), f(s)), the encoder frozen."""
    with torch.no_grad():
        style_feats = encode_taps(model.encoder, style, ends)
        content_feat = model.encoder(content)
        s_mean, s_std = mean_std(style_feats[-1].float())
        target = adain(content_feat.float(), s_mean, s_std)
    output = model.decoder(target.to(content_feat.dtype))
    output_feats = encode_taps(model.encoder, output, ends)
    return content_loss(output_feats[-1], target), style_loss(output_feats, style_feats), output


@dataclass(frozen=True)
class SamplePlan:
    """Which images and where to crop them, for one iteration."""

    content: np.ndarray  # (B,) indices into the content list
    style: np.ndarray  # (B,) indices into the style list
    crops: np.ndarray  # (2, B, 2) crop offsets as fractions in [0, 1): [content|style][item][y, x]


def sample_plan(seed: int, iteration: int, n_content: int, n_style: int, batch: int) -> SamplePlan:
    """A pure function of (seed, iteration): a resumed run draws exactly what an uninterrupted one would."""
    rng = np.random.default_rng([seed, iteration])
    return SamplePlan(rng.integers(0, n_content, batch), rng.integers(0, n_style, batch), rng.random((2, batch, 2)))


def crop_at(rgb: np.ndarray, size: int, frac: Sequence[float]) -> np.ndarray:
    """A ``size`` x ``size`` crop whose top-left corner sits at ``frac`` of the free range."""
    h, w = rgb.shape[:2]
    y = min(int(frac[0] * (h - size + 1)), h - size)
    x = min(int(frac[1] * (w - size + 1)), w - size)
    return rgb[y:y + size, x:x + size]


def batch_tensor(crops: Sequence[np.ndarray]) -> Tensor:
    """(H, W, 3) uint8 crops -> (B, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255.0)


def reset_decoder(decoder: nn.Module, seed: int) -> None:
    """Fresh PyTorch default initialisation, reproducible from ``seed``."""
    gen_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in decoder.modules():
            if isinstance(module, nn.Conv2d):
                module.reset_parameters()
    finally:
        torch.set_rng_state(gen_state)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save into a temp file beside ``path``, then rename: a crash never leaves half a file."""
    with Replacing(path) as tmp:
        torch.save(obj, tmp.path)


@dataclass(frozen=True)
class StepLosses:
    iteration: int  # the iteration these losses belong to (0-based)
    content: float
    style: float
    total: float
    lr: float


class DecoderTrainer:
    """One training run's state: the decoder, Adam (with a GradScaler for fp16), the iteration, the RNG."""

    def __init__(self, model: VGGAdaIN, device: torch.device, lr: float = 1e-4, lr_decay: float = 5e-5,
                 style_weight: float = 10.0, seed: int = 0, mixed_precision: bool | None = None) -> None:
        self.model = model.to(device)
        self.model.encoder.eval().requires_grad_(False)
        self.model.decoder.train().requires_grad_(True)
        self.device = device
        self.ends = style_layer_ends(model.encoder)
        self.lr, self.lr_decay, self.style_weight, self.seed = lr, lr_decay, style_weight, seed
        self.optimizer = torch.optim.Adam(model.decoder.parameters(), lr=lr)
        if mixed_precision is None:
            mixed_precision = device.type == "cuda"
        self.amp_dtype: torch.dtype | None = None
        if mixed_precision and device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.iteration = 0  # the number of completed steps

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def step(self, content: Tensor, style: Tensor) -> StepLosses:
        """One Adam step on a batch; the learning rate follows the inverse decay of the iteration."""
        lr = inverse_decay_lr(self.lr, self.lr_decay, self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        content = content.to(self.device, non_blocking=True)
        style = style.to(self.device, non_blocking=True)
        with self._autocast():
            loss_c, loss_s, _ = adain_losses(self.model, content, style, self.ends)
        total = loss_c + self.style_weight * loss_s
        if not torch.isfinite(total):
            raise InputError(f"the loss is not finite at iteration {self.iteration + 1} "
                             f"(content {float(loss_c):g}, style {float(loss_s):g}): try a smaller --lr")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        done = StepLosses(self.iteration, float(loss_c.detach()), float(loss_s.detach()), float(total.detach()), lr)
        self.iteration += 1
        return done

    @torch.no_grad()
    def render(self, content: Tensor, style: Tensor) -> Tensor:
        """g(AdaIN(f(c), f(s))) clamped to [0, 1], in eval mode, for previews (the CPU tensor back)."""
        self.model.decoder.eval()
        try:
            with self._autocast():
                feat = self.model.encoder(content.to(self.device))
                s_mean, s_std = mean_std(self.model.encoder(style.to(self.device)).float())
                out = self.model.decoder(adain(feat.float(), s_mean, s_std).to(feat.dtype))
        finally:
            self.model.decoder.train()
        return out.float().clamp(0.0, 1.0).cpu()

    # -- checkpoints ---------------------------------------------------------------------------------
    def state(self, config: dict[str, Any]) -> dict[str, Any]:
        """Everything an exact resume needs (loads with ``weights_only=True``)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"format": CHECKPOINT_FORMAT, "model": self.model.name, "config": dict(config),
                "iteration": self.iteration, "decoder": self.decoder_state(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng}

    def decoder_state(self) -> dict[str, Tensor]:
        """The decoder's weights on the CPU, keyed like the released decoder files."""
        return {k: v.detach().cpu().clone() for k, v in self.model.decoder.state_dict().items()}

    def save(self, path: Path, config: dict[str, Any], **extra: Any) -> None:
        atomic_torch_save({**self.state(config), **extra}, path)

    def load(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`'s output exactly where it stopped."""
        self.model.decoder.load_state_dict(state["decoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)


def read_checkpoint(path: Path, model_name: str) -> dict[str, Any]:
    """A checkpoint written by :meth:`DecoderTrainer.save`, or one clear line why it cannot be used."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated, not a torch file, disallowed types
        raise InputError(f"checkpoint {path} is corrupt or not a streamer training checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"checkpoint {path} is not a streamer training checkpoint (format {CHECKPOINT_FORMAT})")
    if state.get("model") != model_name:
        raise InputError(f"checkpoint {path} trains model '{state.get('model')}', not '{model_name}': "
                         f"pass --model {state.get('model')}")
    return state


__all__ = ["RELU_ENDS", "style_layer_ends", "encode_taps", "content_loss", "style_loss", "inverse_decay_lr",
           "adain_losses", "SamplePlan", "sample_plan", "crop_at", "batch_tensor", "reset_decoder",
           "atomic_torch_save", "StepLosses", "DecoderTrainer", "read_checkpoint"]
