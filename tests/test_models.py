"""Real weights: our split (style code + content graph) equals the authors' formulation, and it stylizes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engines.backends.torch_engine import TorchEngine
from engines.ops import mean_std
from engines.stylizer import Stylizer, to_tensor
from engines.weights import load_state_dict
from streamer.imageio import load_image


def _np_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent of engines.ops: mean and sqrt(unbiased var + 1e-5), in float64."""
    flat = x.double().flatten(2)
    mean = flat.mean(2, keepdim=True)
    var = ((flat - mean) ** 2).sum(2, keepdim=True) / (flat.shape[2] - 1)
    return mean[..., None].float(), (var + 1e-5).sqrt()[..., None].float()


def _ref_adain(c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    cm, cs = _np_stats(c)
    sm, ss = _np_stats(s)
    return (c - cm) / cs * ss + sm


def _conv(x, sd, key, stride=1, groups=1, pad=None):
    w, b = sd[f"{key}.weight"], sd[f"{key}.bias"]
    p = w.shape[-1] // 2 if pad is None else pad
    if p:
        x = F.pad(x, (p, p, p, p), mode="reflect")
    return F.conv2d(x, w, b, stride, groups=groups)


def _microast_reference(weights: Path, content: torch.Tensor, style: torch.Tensor, alpha: float) -> torch.Tensor:
    """MicroAST written from the published description, straight on the state dicts."""
    load = lambda name: load_state_dict(weights / "microast" / f"{name}_iter_160000.pth.tar")  # noqa: E731
    ce, se, mod, dec = load("content_encoder"), load("style_encoder"), load("modulator"), load("decoder")

    def res(x, sd, key, w=None, b=None):
        y1 = _conv(x, sd, f"{key}.conv1.conv_layer")
        if w is None:
            return x + _conv(F.relu(y1), sd, f"{key}.conv2.conv_layer")
        y3 = F.relu(w * y1 + b * x)
        return x + w * _conv(y3, sd, f"{key}.conv2.conv_layer") + b * y3

    def enc(x, sd):
        x = F.relu(_conv(x, sd, "enc1.0.conv_layer"))
        x = F.relu(_conv(x, sd, "enc1.2.conv_layer", stride=2, groups=16))
        x = F.relu(_conv(x, sd, "enc1.4.conv_layer"))
        x = F.relu(_conv(x, sd, "enc1.6.conv_layer", stride=2, groups=32))
        x = F.relu(_conv(x, sd, "enc1.8.conv_layer"))
        f1 = res(x, sd, "enc1.10")
        return f1, res(f1, sd, "enc2.0")

    s1, s2 = enc(style, se)
    gap = lambda x, key: _conv(x, mod, f"{key}.0.conv_layer", groups=64).mean((2, 3), keepdim=True)  # noqa: E731
    w1, b1, w2, b2 = gap(s1, "weight1"), gap(s1, "bias1"), gap(s2, "weight2"), gap(s2, "bias2")
    c1, c2 = enc(content, ce)
    x1 = alpha * _ref_adain(c2, s2) + (1 - alpha) * c2
    x2 = res(x1, dec, "dec1", w2, b2)
    x3 = alpha * _ref_adain(x2, s1) + (1 - alpha) * x2
    x = res(x3, dec, "dec2", w1, b1)
    up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
    x = F.relu(_conv(up(x), dec, "dec3.1.conv_layer", groups=32))
    x = F.relu(_conv(x, dec, "dec3.3.conv_layer"))
    x = F.relu(_conv(up(x), dec, "dec3.6.conv_layer", groups=16))
    x = F.relu(_conv(x, dec, "dec3.8.conv_layer"))
    return _conv(x, dec, "dec3.10.conv_layer").clamp(0, 1)


def _r31_reference(weights: Path, content: torch.Tensor, style: torch.Tensor, alpha: float) -> torch.Tensor:
    enc_sd = load_state_dict(weights / "adain-r31" / "vgg_normalised_conv3_1.pth")
    dec_sd = load_state_dict(weights / "adain-r31" / "feature_invertor_conv3_1.pth")

    def enc(x):
        x = _conv(x, enc_sd, "0", pad=0)
        for key in ("2", "5", "9", "12", "16"):
            x = F.relu(_conv(x, enc_sd, key, pad=1))
            if key in ("5", "12"):
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
        return x

    c, s = enc(content), enc(style)
    t = alpha * _ref_adain(c, s) + (1 - alpha) * c
    up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    x = up(F.relu(_conv(t, dec_sd, "1", pad=1)))
    x = F.relu(_conv(x, dec_sd, "5", pad=1))
    x = up(F.relu(_conv(x, dec_sd, "8", pad=1)))
    x = F.relu(_conv(x, dec_sd, "12", pad=1))
    return _conv(x, dec_sd, "15", pad=1).clamp(0, 1)


@pytest.fixture(scope="module")
def images(media: Path) -> tuple[np.ndarray, np.ndarray]:
    from engines.stylizer import resize_short_side

    content = resize_short_side(load_image(media / "content" / "cornell.jpg"), 128)[:128, :160]
    style = resize_short_side(load_image(media / "style" / "woman_with_hat_matisse.jpg"), 128)[:128, :128]
    return content, style


@pytest.mark.parametrize("alpha", [1.0, 0.6])
@pytest.mark.parametrize("which", ["microast", "adain-r31"])
def test_split_graph_equals_reference(which, alpha, request, weights_dir, images) -> None:
    """Style code computed once + content graph == the whole network run from the formulas (1e-4)."""
    model = request.getfixturevalue(which.replace("-", "_"))
    reference = {"microast": _microast_reference, "adain-r31": _r31_reference}[which]
    content, style = images
    st = Stylizer(model, TorchEngine(model, torch.device("cpu")))
    code = st.encode_style(style, style_size=0)
    if model.alpha_by_code:  # the graph keeps the authors' blend; Stylizer runs it at alpha 1 (tests/test_alpha.py)
        ours = st.engine.run(to_tensor(content), torch.tensor(float(alpha)), model.code_tensors(code))
    else:
        ours = st.stylize_tensor(to_tensor(content), code, alpha)
    with torch.no_grad():
        ref = reference(weights_dir, to_tensor(content), to_tensor(style), alpha)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("which", ["microast", "adain-r31"])
def test_real_stylization_moves_statistics_towards_the_style(which, request, adain_r31, images) -> None:
    model = request.getfixturevalue(which.replace("-", "_"))
    content, style = images
    st = Stylizer(model, TorchEngine(model, torch.device("cpu")))
    out = st.stylize(content, st.encode_style(style, 0), 1.0)
    assert out.shape == content.shape
    assert np.abs(out.astype(int) - content).mean() > 8  # visibly changed

    with torch.no_grad():  # judge in the VGG relu3_1 space, as the paper's style loss does
        stats = lambda img: torch.cat(mean_std(adain_r31.encoder(to_tensor(img))), 1).flatten()  # noqa: E731
        target = stats(style)
        assert (stats(out) - target).norm() < 0.8 * (stats(content) - target).norm()


def test_alpha_zero_reconstructs_and_alpha_grows_the_change(adain_r31, images) -> None:
    content, style = images
    st = Stylizer(adain_r31, TorchEngine(adain_r31, torch.device("cpu")))
    code = st.encode_style(style, 0)
    diffs = [np.abs(st.stylize(content, code, a).astype(int) - content).mean() for a in (0.0, 0.5, 1.0)]
    assert diffs[0] < diffs[1] < diffs[2]
    assert diffs[0] < 16  # the relu3_1 decoder was trained for reconstruction


def test_any_size_comes_back_exactly(microast) -> None:
    st = Stylizer(microast, TorchEngine(microast, torch.device("cpu")))
    code = st.encode_style(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), 0)
    for h, w in [(1, 1), (3, 5), (67, 101), (64, 64)]:
        frame = np.random.default_rng(h).integers(0, 255, (h, w, 3), dtype=np.uint8)
        assert st.stylize(frame, code).shape == (h, w, 3)


def test_adain_relu4_1_files_load_by_layout(tmp_path) -> None:
    """The paper's files have no published sha256: they are accepted or refused by key and shape."""
    from engines.errors import WeightsError
    from engines.models import load_model
    from engines.models.vgg import AdaIN

    folder = tmp_path / "adain"
    folder.mkdir()
    donor = AdaIN()
    vgg = dict(donor.encoder.state_dict())
    vgg["32.weight"], vgg["32.bias"] = torch.zeros(512, 512, 3, 3), torch.zeros(512)  # the full VGG-19 goes on
    torch.save(vgg, folder / "vgg_normalised.pth")
    torch.save(donor.decoder.state_dict(), folder / "decoder.pth")
    model = load_model("adain", tmp_path, download=False)
    torch.testing.assert_close(model.decoder[28].weight, donor.decoder[28].weight)

    bad = dict(donor.decoder.state_dict())
    bad["1.weight"] = torch.zeros(256, 256, 3, 3)
    torch.save(bad, folder / "decoder.pth")
    with pytest.raises(WeightsError, match="1.weight"):
        load_model("adain", tmp_path, download=False)
