"""The AdaIN maths against independent references written from the formulas."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.color import preserve_color, rgb_to_ycbcr
from engines.ops import adain, masked_adain, mean_std, mix_codes


def _np_mean_std(x: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    flat = x.reshape(x.shape[0], x.shape[1], -1).astype(np.float64)
    return flat.mean(axis=2), np.sqrt(flat.var(axis=2, ddof=1) + eps)


def _np_adain(c: np.ndarray, s: np.ndarray) -> np.ndarray:
    cm, cs = _np_mean_std(c)
    sm, ss = _np_mean_std(s)
    return (c - cm[..., None, None]) / cs[..., None, None] * ss[..., None, None] + sm[..., None, None]


def test_mean_std_uses_unbiased_variance_with_eps_inside_sqrt() -> None:
    x = torch.randn(2, 5, 7, 3) * 0.01  # tiny variance: where eps placement matters
    mean, std = mean_std(x)
    ref_mean, ref_std = _np_mean_std(x.numpy())
    np.testing.assert_allclose(mean.squeeze().numpy(), ref_mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(std.squeeze().numpy(), ref_std, rtol=1e-5)
    biased = np.sqrt(x.reshape(2, 5, -1).numpy().var(axis=2) + 1e-5)
    assert np.abs(std.squeeze().numpy() - biased).max() > 1e-6  # the convention is observable


def test_adain_matches_formula() -> None:
    c, s = torch.randn(1, 8, 12, 9) * 3 + 1, torch.randn(1, 8, 6, 5) * 0.5 - 2
    out = adain(c, *mean_std(s))
    np.testing.assert_allclose(out.numpy(), _np_adain(c.numpy(), s.numpy()), rtol=1e-4, atol=1e-4)


def test_mixing_codes_equals_weighted_sum_of_adain() -> None:
    """The paper's interpolation sum_k w_k AdaIN(c, s_k) is the same as AdaIN with mixed statistics."""
    c = torch.randn(1, 4, 10, 10)
    styles = [torch.randn(1, 4, 8, 8) * (k + 1) + k for k in range(3)]
    codes = [dict(zip(("mean", "std"), mean_std(s))) for s in styles]
    weights = [2.0, 1.0, 1.0]
    mixed = mix_codes(codes, weights)
    direct = sum(w / 4.0 * adain(c, code["mean"], code["std"]) for w, code in zip(weights, codes))
    torch.testing.assert_close(adain(c, mixed["mean"], mixed["std"]), direct, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        mix_codes(codes, [0.0, 0.0, 0.0])
    for bad in (float("nan"), float("inf")):  # nan slipped through a `<= 0` check and mixed a flat image
        with pytest.raises(ValueError):
            mix_codes(codes, [bad, 1.0, 1.0])


def test_masked_adain_gives_each_region_its_style() -> None:
    c = torch.randn(1, 3, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :, :4] = True
    masks[1, :, 4:] = True
    means = [torch.full((1, 3, 1, 1), -5.0), torch.full((1, 3, 1, 1), 5.0)]
    stds = [torch.ones(1, 3, 1, 1), torch.full((1, 3, 1, 1), 2.0)]
    out = masked_adain(c, means, stds, masks)
    left, right = out[..., :4], out[..., 4:]
    assert torch.allclose(left.mean(dim=(2, 3)), torch.full((1, 3), -5.0), atol=1e-4)
    assert torch.allclose(right.mean(dim=(2, 3)), torch.full((1, 3), 5.0), atol=1e-4)
    assert torch.allclose(right.reshape(1, 3, -1).std(dim=2), torch.full((1, 3), 2.0), atol=1e-3)


def test_preserve_color_keeps_content_chroma_and_stylized_luma() -> None:
    torch.manual_seed(0)
    content = torch.rand(1, 3, 16, 16) * 0.5 + 0.25
    stylized = torch.rand(1, 3, 16, 16) * 0.5 + 0.25
    out = preserve_color(stylized, content)
    y_out, y_sty, y_con = rgb_to_ycbcr(out), rgb_to_ycbcr(stylized), rgb_to_ycbcr(content)
    torch.testing.assert_close(y_out[:, 0], y_sty[:, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(y_out[:, 1:], y_con[:, 1:], atol=1e-4, rtol=0)
