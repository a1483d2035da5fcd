"""--precision auto: a pure function of device, use and CPU flags; a CPU's bf16 held to fp32 before live uses it."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from engines.backends.torch_engine import TorchEngine
from engines.precision import BF16_MIN_PSNR_DB, auto_precision, check_bf16, native_bf16
from engines.stylizer import Stylizer
from streamer.job import Job
from streamer.options import build_stylizer, check_live_precision

ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "amx_bf16", "amx_tile"})
AVX2_ONLY = frozenset({"avx2", "fma"})


@pytest.mark.parametrize("flags,live,render", [
    (ZEN4, "bf16", "fp32"),
    (SAPPHIRE_RAPIDS, "bf16", "fp32"),
    (AVX2_ONLY, "fp32", "fp32"),
    (frozenset(), "fp32", "fp32"),  # not Linux, or no flags: nothing optional
])
def test_cpu_choice_follows_the_reported_capabilities(flags, live, render):
    assert auto_precision("cpu", "live", flags)[0] == live
    assert auto_precision("cpu", "render", flags)[0] == render
    assert native_bf16(flags) == (live == "bf16")


def test_gpu_takes_fp16_and_unknown_uses_are_refused():
    assert auto_precision("cuda", "live", ZEN4) == ("fp16", "NVIDIA GPU: tensor cores")
    assert auto_precision("cuda", "render", AVX2_ONLY)[0] == "fp16"
    with pytest.raises(ValueError):
        auto_precision("cpu", "train", ZEN4)


class NoisyEngine:
    """A stand-in 'bf16' engine: the fp32 result plus noise of a chosen size."""

    name = "openvino"
    precision = "bf16"
    max_batch = 1
    device = torch.device("cpu")

    def __init__(self, model, noise: float) -> None:
        self.inner = TorchEngine(model, torch.device("cpu"), "fp32")
        self.noise = noise
        self.closed = False

    def run(self, image, alpha, code):
        out = self.inner.run(image, alpha, code)
        g = torch.Generator().manual_seed(0)
        return (out + self.noise * torch.randn(out.shape, generator=g)).clamp(0, 1)

    def describe(self) -> str:
        return f"stand-in bf16 noise {self.noise}"

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def picture(media):
    from engines.stylizer import resize_to
    from streamer.imageio import load_image

    return resize_to(load_image(media / "style" / "la_muse.jpg", "style"), (160, 96))


@pytest.mark.parametrize("noise,usable", [(0.002, True), (0.08, False)])
def test_bf16_is_held_to_fp32_and_the_verdict_is_cached(microast, picture, tmp_path, noise, usable):
    from engines.backends.cache import EngineCache

    stylizer = Stylizer(microast, NoisyEngine(microast, noise), "w1")
    code = stylizer.encode_style(picture, 128)
    cache = EngineCache(tmp_path)
    calls = []

    def make():
        calls.append(1)
        return picture

    ok, db = check_bf16(stylizer, make, code, cache)
    assert ok is usable and (db >= BF16_MIN_PSNR_DB) is usable
    assert check_bf16(stylizer, make, code, cache) == (ok, db) and len(calls) == 1  # measured once, then cached


def test_live_falls_back_to_fp32_when_bf16_misses_the_bar(microast, picture, caplog):
    stylizer = Stylizer(microast, noisy := NoisyEngine(microast, 0.08), "w2")
    code = stylizer.encode_style(picture, 128)
    with caplog.at_level(logging.WARNING, logger="streamer.options"):
        job = Job(precision="auto", engine="torch")
        checked = check_live_precision(stylizer, job, lambda: picture, code, (96, 160))
    assert noisy.closed and checked.engine.precision == "fp32" and checked.engine.name == "torch"
    assert "using fp32" in caplog.text
    explicit = Job(precision="bf16", engine="torch")  # asked for by name: never second-guessed
    assert check_live_precision(stylizer, explicit, lambda: picture, code) is stylizer


def test_auto_bf16_on_a_cpu_without_it_is_fp32_in_one_line(weights_dir, monkeypatch, caplog):
    """A CPU that claims bf16 but whose runtime cannot build it (this one, emulated): one warning, fp32."""
    import engines.precision as precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: ZEN4)
    job = Job(device="cpu", model="microast", weights_dir=str(weights_dir), engine="auto", precision="auto")
    with caplog.at_level(logging.INFO):
        live = build_stylizer(job, shape_hint=(96, 160), use="live")
        render = build_stylizer(job, shape_hint=(96, 160))
    assert render.engine.precision == "fp32"
    if live.engine.precision == "bf16":  # a CPU with native bf16 after all
        assert "precision: bf16" in caplog.text
    else:
        assert "could not be built" in caplog.text and live.engine.precision == "fp32"
    assert np.isfinite(float(live.engine.run(torch.zeros(1, 3, 96, 160), torch.tensor(1.0),
                                             microast_code(live)).mean()))


def microast_code(stylizer):
    code = stylizer.encode_style(np.full((64, 64, 3), 128, np.uint8), 64)
    return stylizer.model.code_tensors(code)
