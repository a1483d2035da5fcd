"""One still image through the model: at the working size (``--size``), back to its own size, optionally with a
mask that places styles by region. Used by `render` (one image, a folder) and by the cluster's workers."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from engines.errors import InputError
from engines.stylizer import Stylizer, back_to_source, stylize_frame, to_working_size
from streamer.imageio import load_image_with_alpha, load_mask
from streamer.options import Style, fit_short_side

log = logging.getLogger(__name__)


def render_image(stylizer: Stylizer, rgb: np.ndarray, code, *, size: int, alpha: float, upscale: str,
                 keep_color: bool) -> np.ndarray:
    """``rgb`` stylized at the working size (``size`` clamped to the image, said once) and returned at its size."""
    return stylize_frame(stylizer, rgb, code, alpha=alpha, size=fit_short_side(size, *rgb.shape[:2]),
                         upscale_method=upscale, keep_color=keep_color)


def render_masked(stylizer: Stylizer, rgb: np.ndarray, styles: list[Style], regions: np.ndarray, mask: Path, *,
                  size: int, alpha: float, upscale: str, keep_color: bool) -> np.ndarray:
    """Spatial control. With one style and a two-region mask, the style goes where the mask is light (the rest is
    the input's own pixels, at its full size)."""
    work = to_working_size(rgb, fit_short_side(size, *rgb.shape[:2]))
    small = regions if work.shape[:2] == rgb.shape[:2] else load_mask(mask, work.shape[:2])[0]
    if len(styles) == 1 and len(small) == 2:
        stylized = back_to_source(stylizer.stylize(work, styles[0].code, alpha), rgb, upscale, keep_color)
        return np.where(regions[0][..., None], rgb, stylized)
    if len(styles) != len(small):
        check_regions(len(small), len(styles))
    log.info("--mask with %d styles: the model's own torch graph on the CPU (the engines' graphs take one style "
             "code; per-region statistics are not in them)", len(styles))
    out = stylizer.stylize_masked(work, [s.code for s in styles], small, alpha)
    return back_to_source(out, rgb, upscale, keep_color)


def check_regions(regions: int, styles: int) -> None:
    """One style per mask region, or one style for a black/white mask (styled where white)."""
    if regions != styles and not (styles == 1 and regions == 2):
        raise InputError(f"the mask has {regions} regions but {styles} styles were given: "
                         "give one style per region (darkest region first)")


def render_file(stylizer: Stylizer, path: Path, code, *, size: int, alpha: float, upscale: str, keep_color: bool,
                styles: list[Style] | None = None, mask: Path | None = None):
    """One image file -> (stylized RGB at its exact size, its alpha channel or None); ``mask``: by region."""
    rgb, alpha_channel = load_image_with_alpha(path, "input image")
    look = {"size": size, "alpha": alpha, "upscale": upscale, "keep_color": keep_color}
    if mask:
        return render_masked(stylizer, rgb, styles or [], load_mask(mask, rgb.shape[:2])[0], mask, **look), \
            alpha_channel
    return render_image(stylizer, rgb, code, **look), alpha_channel
