"""The Python API: build once, add styles, call per image or frame.

    from streamer import StyleTransfer

    st = StyleTransfer(["starry.jpg", "la_muse.jpg"], model="microast", size=256)
    out = st(photo)                     # numpy (H, W, 3) uint8 RGB or a PIL image; the same type back
    st.use("la_muse", alpha=0.6)        # switch style (by name or index) and controls; a style switch is instant
    st.use("starry", "la_muse", weights=[0.3, 0.7])   # style interpolation
    for frame in st.frames(frames): ... # frames in order: --temporal's state carries from one to the next
    st.render("in.mp4", "out.mp4")      # files, folders and videos: the render command, with these options

Every frame goes through the one frame chain the commands use (:func:`engines.stylizer.stylize_frame`); the
model and engine are built once by the same code as the commands' (:func:`streamer.options.build_stylizer`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import InputError
from engines.models.base import StyleCode
from engines.stylizer import Stylizer, stylize_frame
from streamer.job import Job
from engines.ops import mix_codes
from streamer.options import Style, build_stylizer, expand_style_paths, load_styles

Image = Any  # a numpy (H, W, 3) uint8 RGB array or a PIL image


def _as_rgb(image: Image) -> tuple[np.ndarray, bool]:
    """(H, W, 3) uint8 RGB, and whether the caller gave a PIL image (to give one back)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"an image must be (H, W, 3) uint8 RGB, not {image.dtype} {image.shape}")
        return np.ascontiguousarray(image), False
    if hasattr(image, "convert") and hasattr(image, "size"):
        return np.asarray(image.convert("RGB")), True
    raise InputError(f"an image must be a numpy array or a PIL image, not {type(image).__name__}")


def _back(rgb: np.ndarray, as_pil: bool) -> Image:
    if not as_pil:
        return rgb
    from PIL import Image as PILImage

    return PILImage.fromarray(rgb)


class StyleTransfer:
    """A model and engine built once, its styles encoded once each, and the controls of the current look."""

    def __init__(self, styles: Sequence[str | Path] = (), **options: Any) -> None:
        """``options``: the commands' flags as keyword arguments (:class:`streamer.job.Job`: ``model``, ``engine``,
        ``device``, ``precision``, ``weights_dir``, ``decoder``, ``size``, ``alpha``, ``preserve_color``, ``upscale``,
        ``style_size``, ``temporal``, ``temporal_strength``)."""
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(Job)})
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(unknown)}")
        self.job = Job(**options)
        self.stylizer: Stylizer = build_stylizer(self.job)
        self._styles: dict[str, StyleCode] = {}
        self._files: dict[str, Path] = {}  # the styles added from files, for render()
        self._selection: tuple[list[str], list[float] | None] = ([], None)
        self._code: StyleCode | None = None
        self._temporal = None
        for path in expand_style_paths([str(p) for p in styles], self.job.style_size):
            self.add_style(path)

    # -- styles ----------------------------------------------------------------------------------
    @property
    def styles(self) -> list[str]:
        """The names of the styles added, in order."""
        return list(self._styles)

    def add_style(self, image: str | Path | Image, name: str | None = None) -> str:
        """Encode a style (an image file, cached on disk like the commands', or an image); the first one added
        becomes the current style. Returns its name."""
        if isinstance(image, (str, Path)):
            (style,) = load_styles([Path(image)], self.stylizer, self.job.style_size, self.job.weights_dir)
            code, name = style.code, name or style.name
            self._files[name] = Path(image)
        else:
            rgb, _ = _as_rgb(image)
            code, name = self.stylizer.encode_style(rgb, self.job.style_size), name or f"style{len(self._styles) + 1}"
        self._styles[name] = code
        if self._code is None:
            self._code, self._selection = code, ([name], None)
        return name

    def use(self, *names: str | int, weights: Sequence[float] | None = None, **controls: Any) -> None:
        """Switch to a style (by name or index), or mix several with ``weights``; ``controls`` change ``alpha``,
        ``preserve_color``, ``size``, ``upscale`` (checked like the flags)."""
        if names:
            codes = [self._style(n) for n in names]
            if weights is not None and len(weights) != len(codes):
                raise InputError(f"{len(codes)} styles need {len(codes)} weights, not {len(weights)}")
            self._code = codes[0] if len(codes) == 1 else mix_codes(codes, list(weights or [1.0] * len(codes)))
            self._selection = ([n if isinstance(n, str) else self.styles[n] for n in names],
                               list(weights) if weights is not None else None)
            if self._temporal is not None:
                self._temporal.reset()  # a new look starts without the old one's texture
        if controls:
            allowed = {"alpha", "preserve_color", "size", "upscale"}
            if set(controls) - allowed:
                raise TypeError(f"use() changes {', '.join(sorted(allowed))} only")
            self.job = dataclasses.replace(self.job, **controls)

    def _style(self, name: str | int) -> StyleCode:
        if isinstance(name, int):
            if not 0 <= name < len(self._styles):
                raise InputError(f"style index {name} is out of range (0..{len(self._styles) - 1})")
            return list(self._styles.values())[name]
        if name not in self._styles:
            raise InputError(f"no style named {name!r}: {', '.join(self._styles) or 'none added yet'}")
        return self._styles[name]

    # -- stylizing -------------------------------------------------------------------------------
    def __call__(self, image: Image) -> Image:
        """One image, stylized at ``size`` and returned at its own size (the same type as given)."""
        return self._one(image, temporal=None)

    def frames(self, frames: Iterable[Image]) -> Iterator[Image]:
        """Frames in order; with ``temporal=True`` each is steadied against the one before (as ``--temporal``)."""
        if self.job.temporal:
            from streamer.temporal import TemporalStabilizer

            self._temporal = TemporalStabilizer(self.job.temporal_strength)
        try:
            for frame in frames:
                yield self._one(frame, temporal=self._temporal)
        finally:
            self._temporal = None

    def _one(self, image: Image, temporal) -> Image:
        if self._code is None:
            raise InputError("add a style first (StyleTransfer([...]) or add_style())")
        rgb, as_pil = _as_rgb(image)
        size = self.job.size if self.job.size < min(rgb.shape[:2]) else 0  # never upscale before stylizing
        out = stylize_frame(self.stylizer, rgb, self._code, alpha=self.job.alpha, size=size,
                            upscale_method=self.job.upscale, keep_color=self.job.preserve_color, temporal=temporal)
        return _back(out, as_pil)

    def render(self, source: str | Path, output: str | Path, *, styles: Sequence[str | Path] | None = None,
               overwrite: bool = False, extra: Sequence[str] = ()) -> int:
        """An image, folder or video file through ``streamer render`` with this object's options and the current
        style's files (or ``styles``); the command's exit code (0 = written)."""
        from streamer.cli import main

        names, weights = self._selection
        if styles is not None:
            files, weights = [str(s) for s in styles], None
        elif all(n in self._files for n in names) and names:
            files = [str(self._files[n]) for n in names]
        else:
            raise InputError("render() needs style files: the current style was given as an image; pass styles=[...]")
        mix = ["--style-weights", *map(str, weights)] if weights else []
        return main(["render", str(source), str(output), "--style", *files, *mix, *self._flags(),
                     *(["--overwrite"] if overwrite else []), *extra])

    def _flags(self) -> list[str]:
        job, flags = self.job, []
        for name in ("model", "device", "engine", "precision", "style_size", "alpha", "size", "upscale"):
            flags += [f"--{name.replace('_', '-')}", str(getattr(job, name))]
        for name in ("weights_dir", "decoder"):
            if getattr(job, name):
                flags += [f"--{name.replace('_', '-')}", str(getattr(job, name))]
        if job.preserve_color:
            flags.append("--preserve-color")
        if job.temporal:
            flags += ["--temporal", "--temporal-strength", str(job.temporal_strength)]
        return flags


__all__ = ["Style", "StyleTransfer", "Job"]
