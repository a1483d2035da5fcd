"""`streamer render`: a still image here; folders (streamer.folder), videos (streamer.video) and the cluster
(streamer.cluster) from here."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from engines.errors import InputError
from streamer import video
from streamer.encoding import Encoding
from streamer.fileutil import AtomicOutput, refuse_same_file
from streamer.folder import render_folder
from streamer.job import Job
from streamer.imageio import check_output_path, check_output_size, image_size, is_image_path, load_mask, save_image
from streamer.options import (add_engine_wait_option, add_model_options, add_style_options, add_upscale_option,
                              alpha_value, build_stylizer, check_short_side, check_style_weights, expand_style_paths,
                              load_styles, mixed_code, run_inputs)
from streamer.stills import check_regions, render_file

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
    add_upscale_option(p)
    p.add_argument("--mask", default=None,
                   help="still images: a binary or label mask; region k (darkest first) gets style k")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    video.add_video_options(p)
    add_model_options(p)
    add_engine_wait_option(p)
    from streamer.cluster import add_cluster_options

    add_cluster_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    src, dst = Path(args.input), Path(args.output)
    args.alpha = alpha_value(args.alpha)
    check_short_side(args.size, "--size")
    if not src.exists():
        raise InputError(f"input not found: {src}")
    if getattr(args, "cluster", None):
        from streamer.cluster import render_on_cluster

        return render_on_cluster(args)
    if video.is_video_path(src):
        return video.render_video(args)
    style_paths = expand_style_paths(args.style, args.style_size)
    if getattr(args, "temporal", False):
        log.warning("--temporal smooths video over time; still images have no previous frame, so it is ignored")
    if args.mask and args.style_weights:
        raise InputError("--mask places styles by region; it does not combine with --style-weights")
    if not args.mask:
        check_style_weights(args.style_weights, len(style_paths))
    if src.is_dir():
        if args.mask:
            raise InputError("--mask works with a single image, not a folder")
        return render_folder(Job.from_args(args), src, dst, style_paths, Encoding.from_args(args),
                             overwrite=args.overwrite, max_frames=args.max_frames)
    if not is_image_path(src):
        raise InputError(f"unsupported input type '{src.suffix}': give an image, a folder or a video")
    width, height = image_size(src, "input image")  # a broken or oversized input fails before any model loads
    if args.mask:
        check_regions(len(load_mask(args.mask, (height, width))[0]), len(style_paths))
    if dst.is_dir():
        dst = dst / f"{src.stem}.png"
    check_output_size(check_output_path(dst), width, height)
    job = Job.from_args(args)
    refuse_same_file([dst], [("input image", src), *run_inputs(job, style_paths)])
    output = AtomicOutput(dst, overwrite=args.overwrite)  # fail now: exists, busy, read-only
    try:
        stylizer = build_stylizer(job)
        styles = load_styles(style_paths, stylizer, job.style_size, job.weights_dir)
        code = None if job.mask else mixed_code(styles, job.style_weights)
        out, alpha_channel = render_file(stylizer, src, code, size=job.size, alpha=job.alpha, upscale=job.upscale,
                                         keep_color=job.preserve_color, styles=styles, mask=job.mask)
        save_image(dst, out, alpha_channel, output=output)
    finally:
        output.discard()  # a no-op once saved
    log.info("wrote %s (%dx%d)", dst, out.shape[1], out.shape[0])
    return 0
