"""Reading and writing still images the way a user expects: any mode, EXIF rotation, atomic writes."""
from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engines.errors import InputError
from streamer.fileutil import AtomicOutput, existing_file, write_error

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: the longest side we accept: larger images are almost always a mistake and exhaust memory
MAX_SIDE = 16384
MAX_PIXELS = 100_000_000

log = logging.getLogger(__name__)

Image.MAX_IMAGE_PIXELS = None  # we apply our own, clearer limit below


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def check_pixels(width: int, height: int, what: str, fix: str = "shrink it first") -> None:
    """The one size limit for every image and every size a user asks for (MAX_SIDE a side, MAX_PIXELS)."""
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise InputError(f"{what} is too large ({width}x{height}); the limit is {MAX_SIDE} px a side and "
                         f"{MAX_PIXELS // 1_000_000} megapixels: {fix}")


def parse_size(text: str | None, what: str = "size", square: bool = False) -> tuple[int, int] | None:
    """The one parser of a frame size a user types: ``"640x360"`` -> (640, 360) (width first, as people say it),
    with ``square`` also ``"512"`` -> (512, 512); ``None``, ``""`` or ``"auto"`` -> None. At least 16 px a side,
    within :func:`check_pixels`; ``what`` names the flag in the one-line error."""
    if text is None or text.strip() in ("", "auto"):
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX*,]\s*(\d+)\s*)?", text)
    if m and m[2] is None and not square:
        m = None
    if not m or int(m[1]) < 16 or int(m[2] or m[1]) < 16:
        shape = "640x360 or 512" if square else "640x360"
        raise InputError(f"{what} must look like {shape} (width x height, at least 16 each), not '{text}'")
    width, height = int(m[1]), int(m[2] or m[1])
    check_pixels(width, height, what, fix=f"use a smaller {what}")
    return width, height


def image_size(path: str | Path, what: str = "image") -> tuple[int, int]:
    """(width, height) as displayed (EXIF rotation applied), from the header only: a cheap check before work."""
    path = existing_file(path, what, "an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                w, h = img.size
                turned = img.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF orientations that swap the sides
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot read {what} {path}: not a supported or intact image ({exc.__class__.__name__})")
    check_pixels(w, h, what)
    return (h, w) if turned else (w, h)


def _to_rgb8(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Any PIL mode -> (H, W, 3) uint8 RGB, plus the alpha channel when there is one."""
    alpha = None
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F" and arr.max() <= 1.0:
            top = 1.0  # floating point pixels in 0..1 (scientific and HDR tools write them so)
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2), None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3].copy()
        return np.asarray(rgba.convert("RGB")).copy(), alpha
    return np.asarray(img.convert("RGB")).copy(), None


def load_image_with_alpha(path: str | Path, what: str = "image") -> tuple[np.ndarray, np.ndarray | None]:
    """Load an image as upright uint8 RGB (EXIF rotation applied) and its alpha channel if any."""
    path = existing_file(path, what, "an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                check_pixels(*img.size, what)
                frames = getattr(img, "n_frames", 1)
                if frames > 1:
                    log.warning("%s %s holds %d pages or frames; only the first is used", what, path.name, frames)
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb8(img)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot read {what} {path}: not a supported or intact image ({exc.__class__.__name__})")


def load_image(path: str | Path, what: str = "image") -> np.ndarray:
    return load_image_with_alpha(path, what)[0]


def load_mask(path: str | Path, size: tuple[int, int]) -> tuple[np.ndarray, list[int]]:
    """A binary or label mask -> (K, H, W) bool regions at ``size`` (H, W), one per distinct value.

    Values are sorted, so in a black/white mask region 0 is black and region 1 is white. Grey levels
    from JPEG artefacts are snapped to the nearest of the few dominant values.
    """
    rgb = load_image(path, "mask")
    mh, mw = rgb.shape[:2]
    if abs(mh * size[1] / mw - size[0]) > max(1.0, 0.01 * size[0]):  # more than rounding: it would be stretched
        raise InputError(f"the mask is {mw}x{mh} but the image is {size[1]}x{size[0]}: a mask must have the "
                         "image's aspect ratio (it would be stretched); crop or resize it to match")
    gray = np.asarray(Image.fromarray(rgb).convert("L").resize((size[1], size[0]), Image.Resampling.NEAREST))
    values, counts = np.unique(gray, return_counts=True)
    major = values[counts >= max(1, gray.size // 1000)]
    if len(major) > 16:
        raise InputError(f"mask {path} has {len(major)} levels; use a binary or label mask with a few flat values")
    labels = np.abs(gray[..., None].astype(int) - major[None, None].astype(int)).argmin(axis=2)
    return np.stack([labels == k for k in range(len(major))]), [int(v) for v in major]


#: output formats with a smaller side limit than ours (MAX_SIDE): WebP's is 16383 px, JPEG's 65535
FORMAT_MAX_SIDE = {".webp": 16383, ".jpg": 65535, ".jpeg": 65535}


def check_output_size(path: str | Path, width: int, height: int) -> None:
    """Fail before any work when the output's format cannot hold an image this large."""
    path = Path(path)
    limit = FORMAT_MAX_SIDE.get(path.suffix.lower())
    if limit is not None and max(width, height) > limit:
        raise InputError(f"a {path.suffix} image can be at most {limit} px a side, and {path.name} would be "
                         f"{width}x{height}: use .png or .tif, or a smaller input")


def check_output_path(path: str | Path) -> Path:
    """Fail before any work when the output cannot be written as an image."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"unsupported output type '{path.suffix or path.name}': use one of {', '.join(IMAGE_SUFFIXES)}")
    if not path.parent.exists():
        raise InputError(f"output folder does not exist: {path.parent}")
    return path


def save_image(path: str | Path, rgb: np.ndarray, alpha: np.ndarray | None = None,
               output: AtomicOutput | None = None) -> None:
    """Write atomically (streamer.fileutil.AtomicOutput): a crash, a signal or a full disk never leaves a
    half-written image. ``output``: ``path`` taken (locked) earlier, before the heavy work."""
    path = Path(path)
    img = Image.fromarray(rgb)
    if alpha is not None and path.suffix.lower() in (".png", ".webp", ".tif", ".tiff"):
        img.putalpha(Image.fromarray(alpha))
    fmt = Image.registered_extensions().get(path.suffix.lower())
    output = output if output is not None else AtomicOutput(path)
    try:
        check_output_size(path, img.width, img.height)
        save_kwargs = {"quality": 95} if fmt == "JPEG" else {}
        with output.file() as f:
            img.save(f, format=fmt, **save_kwargs)
        output.commit()
    except OSError as exc:
        output.discard()
        raise write_error(path, exc) from None
    finally:
        output.discard()  # a no-op after commit


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_path(p) and not p.name.startswith("."))


def not_files(folder: Path) -> list[tuple[Path, str]]:
    """Entries of ``folder`` named like images that are no image file: a dangling link, a FIFO, a socket or a
    device, with what each is. Found by their status alone: opening a FIFO would wait for a writer forever."""
    odd = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not is_image_path(p) or p.is_file() or p.is_dir():
            continue
        odd.append((p, "a link to nothing" if p.is_symlink() and not p.exists() else "not a regular file"))
    return odd
