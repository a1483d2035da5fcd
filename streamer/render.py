"""`streamer render`: still images, folders of images, and (via streamer.video) video files."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engines.errors import InputError
from engines.stylizer import Stylizer, resize_back, resize_short_side
from streamer import video
from streamer.imageio import (check_output_path, is_image_path, list_images, load_image_with_alpha, load_mask,
                              save_image)
from streamer.options import (Style, add_model_options, add_style_options, alpha_value, build_stylizer,
                              expand_style_paths, load_styles, mixed_code)

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="stylize an image, a folder of images, or a video file",
                       description="Stylize an image, a folder of images (into a folder), or a video file.")
    p.add_argument("input", help="image, folder of images, or video")
    p.add_argument("output", help="output image, folder, or video")
    add_style_options(p, several_means="interpolated (see --style-weights), or placed by --mask")
    p.add_argument("--size", type=int, default=0,
                   help="stylize with the content's short side at N px, then return to the input's size "
                        "(0 = original size; default 0)")
    p.add_argument("--mask", default=None,
                   help="still images: a binary or label mask; region k (darkest first) gets style k")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    video.add_video_options(p)
    add_model_options(p)
    from streamer.cluster import add_cluster_options

    add_cluster_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    src, dst = Path(args.input), Path(args.output)
    args.alpha = alpha_value(args.alpha)
    if args.size < 0:
        raise InputError("--size must be 0 (original) or a positive number of pixels")
    if not src.exists():
        raise InputError(f"input not found: {src}")
    if getattr(args, "cluster", None):
        from streamer.cluster import render_on_cluster

        return render_on_cluster(args)
    if video.is_video_path(src):
        return video.render_video(args)
    style_paths = expand_style_paths(args.style)
    if src.is_dir():
        jobs = folder_jobs(src, dst)
    else:
        if not is_image_path(src):
            raise InputError(f"unsupported input type '{src.suffix}': give an image, a folder or a video")
        if dst.is_dir():
            dst = dst / f"{src.stem}.png"
        jobs = [(src, check_output_path(dst))]
    if not args.overwrite:
        existing = [d for _, d in jobs if d.exists()]
        if existing and not src.is_dir():
            raise InputError(f"output exists: {existing[0]} (use --overwrite to replace it)")
    mask_regions = None
    if args.mask:
        if src.is_dir():
            raise InputError("--mask works with a single image, not a folder")
        if args.style_weights:
            raise InputError("--mask places styles by region; it does not combine with --style-weights")
    stylizer = build_stylizer(args)
    styles = load_styles(style_paths, stylizer, args.style_size, args.weights_dir)
    code = None if args.mask else mixed_code(styles, args.style_weights)
    for in_path, out_path in tqdm(jobs, desc="render", unit="img", disable=len(jobs) < 2):
        rgb, alpha_channel = load_image_with_alpha(in_path, "input image")
        if args.mask:
            mask_regions = load_mask(args.mask, rgb.shape[:2])[0]
            out = render_masked(stylizer, rgb, styles, mask_regions, args)
        else:
            out = render_image(stylizer, rgb, code, args)
        save_image(out_path, out, alpha_channel)
        log.info("wrote %s (%dx%d)", out_path, out.shape[1], out.shape[0])
    return 0


def folder_jobs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """Every image in ``src`` -> the same name in ``dst`` (created); existing outputs are kept unless asked."""
    images = list_images(src)
    if not images:
        raise InputError(f"no images in folder {src}")
    if dst.exists() and not dst.is_dir():
        raise InputError(f"output for a folder must be a folder: {dst}")
    dst.mkdir(parents=True, exist_ok=True)
    return [(p, dst / p.name) for p in images]


def render_image(stylizer: Stylizer, rgb: np.ndarray, code, args: argparse.Namespace) -> np.ndarray:
    work = resize_short_side(rgb, args.size)
    out = stylizer.stylize(work, code, args.alpha, keep_color=args.preserve_color)
    return resize_back(out, *rgb.shape[:2])


def render_masked(stylizer: Stylizer, rgb: np.ndarray, styles: list[Style], regions: np.ndarray,
                  args: argparse.Namespace) -> np.ndarray:
    """Spatial control. With one style and a two-region mask, the style goes where the mask is light."""
    work = resize_short_side(rgb, args.size)
    small = regions if work.shape[:2] == rgb.shape[:2] else load_mask(args.mask, work.shape[:2])[0]
    if len(styles) == 1 and len(small) == 2:
        stylized = stylizer.stylize(work, styles[0].code, args.alpha, keep_color=args.preserve_color)
        keep = small[0][..., None]
        out = np.where(keep, work, stylized)
    elif len(styles) == len(small):
        out = stylizer.stylize_masked(work, [s.code for s in styles], small, args.alpha, args.preserve_color)
    else:
        raise InputError(f"the mask has {len(small)} regions but {len(styles)} styles were given: "
                         "give one style per region (darkest region first)")
    return resize_back(out, *rgb.shape[:2])
