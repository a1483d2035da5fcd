"""`streamer render`: still images, folders of images, and (via streamer.video) video files."""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from engines.backends.switch import EngineSpans, current_label
from engines.errors import InputError
from engines.progress import tqdm_disable
from engines.stylizer import Stylizer, back_to_source, stylize_frame, to_working_size
from streamer import video
from streamer.fileutil import AtomicOutput, FolderLock, make_output_folder, refuse_same_file
from streamer.imageio import (check_output_path, check_output_size, image_size, is_image_path, list_images,
                              load_image_with_alpha, load_mask, not_files, save_image)
from streamer.options import (Style, add_engine_wait_option, add_model_options, add_style_options, add_upscale_option,
                              alpha_value, build_stylizer, check_short_side, check_style_weights, expand_style_paths,
                              finish_background_build, fit_short_side, load_styles, mixed_code, run_inputs)
from streamer.signals import exit_code, signal_number, stopped_by

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
        return render_folder(args, src, dst, style_paths)
    if not is_image_path(src):
        raise InputError(f"unsupported input type '{src.suffix}': give an image, a folder or a video")
    width, height = image_size(src, "input image")  # a broken or oversized input fails before any model loads
    if args.mask:
        check_regions(len(load_mask(args.mask, (height, width))[0]), len(style_paths))
    if dst.is_dir():
        dst = dst / f"{src.stem}.png"
    check_output_size(check_output_path(dst), width, height)
    refuse_same_file([dst], [("input image", src), *run_inputs(args, style_paths)])
    output = AtomicOutput(dst, overwrite=args.overwrite)  # fail now: exists, busy, read-only
    try:
        stylizer = build_stylizer(args)
        styles = load_styles(style_paths, stylizer, args.style_size, args.weights_dir)
        code = None if args.mask else mixed_code(styles, args.style_weights)
        out, alpha_channel = render_file(stylizer, src, styles, code, args)
        save_image(dst, out, alpha_channel, output=output)
    finally:
        output.discard()  # a no-op once saved
    log.info("wrote %s (%dx%d)", dst, out.shape[1], out.shape[0])
    return 0


def render_file(stylizer: Stylizer, path: Path, styles: list[Style], code, args: argparse.Namespace):
    """One image file -> (stylized RGB at its exact size, its alpha channel or None)."""
    rgb, alpha_channel = load_image_with_alpha(path, "input image")
    if args.mask:
        return render_masked(stylizer, rgb, styles, load_mask(args.mask, rgb.shape[:2])[0], args), alpha_channel
    return render_image(stylizer, rgb, code, args), alpha_channel


def render_folder(args: argparse.Namespace, src: Path, dst: Path, style_paths: list[Path]) -> int:
    """Every image of ``src`` into ``dst``. An unreadable file is skipped with a warning and the rest rendered;
    the end says how many, and exits 2 if any was skipped. Ctrl-C/SIGTERM keep the images finished so far."""
    jobs = folder_jobs(src, dst)
    check_folder_outputs(jobs, dst, args)
    created = make_output_folder(dst)
    lock = FolderLock(dst)  # a second folder render into dst refuses
    done: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    spans = EngineSpans("images")  # which engine made which images (the fast one may take over part way)
    for path, what in not_files(src):  # never opened: a FIFO would block the render
        log.warning("skipped: %s is %s", path, what)
        skipped.append((path, what))
    total = len(jobs) + len(skipped)
    stylizer = None
    try:
        stylizer = build_stylizer(args, background=True)  # a folder: the first images on torch while OpenVINO builds
        styles = load_styles(style_paths, stylizer, args.style_size, args.weights_dir)
        code = mixed_code(styles, args.style_weights)
        with logging_redirect_tqdm():  # log lines (a skipped file) on their own line, not through the bar
            bar = tqdm(jobs, desc="render", unit="img", disable=tqdm_disable(len(jobs) > 1))
            for in_path, out_path in bar:
                output = AtomicOutput(out_path, overwrite=args.overwrite)
                try:
                    check_output_size(out_path, *image_size(in_path, "input image"))
                    out, alpha_channel = render_file(stylizer, in_path, styles, code, args)
                except InputError as exc:  # this file only: say so, go on with the others
                    log.warning("skipped: %s", exc)
                    skipped.append((in_path, str(exc)))
                    continue
                else:
                    save_image(out_path, out, alpha_channel, output=output)
                    spans.note(current_label(stylizer))
                finally:
                    output.discard()  # a no-op once saved
                done.append(out_path)
                log.info("wrote %s (%dx%d)", out_path, out.shape[1], out.shape[0])
    except KeyboardInterrupt as exc:
        signum = signal_number(exc)
        kept = f"{len(done)} of {total} images are in {dst}" if done else "no image was finished"
        finish_background_build(stylizer, wait=False)
        print(f"streamer: interrupted{stopped_by(signum)}: {kept}", file=sys.stderr)
        return exit_code(signum)
    except BaseException:
        finish_background_build(stylizer, wait=False)
        raise
    finally:
        lock.close()
        if created and not done:
            with contextlib.suppress(OSError):
                dst.rmdir()  # nothing written: leave no empty folder behind
    if skipped:
        finish_background_build(stylizer, wait=False)
        raise InputError(skipped_summary([p.name for p, _ in skipped], total, len(done), dst))
    log.info("wrote %d images into %s; engine %s", len(done), dst, spans.text())
    finish_background_build(stylizer)
    return 0


def check_folder_outputs(jobs: list[tuple[Path, Path]], folder: Path, args: argparse.Namespace) -> None:
    """Before any work: no output is an input (an image of the folder itself, a style, the mask...), whatever
    ``--overwrite`` says, and none is there already unless ``--overwrite``."""
    inputs = [*(("input image", s) for s, _ in jobs), *run_inputs(args, expand_style_paths(args.style))]
    refuse_same_file([d for _, d in jobs], inputs)
    refuse_existing([d for _, d in jobs], folder, args.overwrite)


def refuse_existing(outputs: list[Path], folder: Path, overwrite: bool) -> None:
    """A folder render stops before any work if an output is there already, unless ``--overwrite``."""
    existing = [] if overwrite else [d for d in outputs if d.exists()]
    if existing:
        more = f" and {len(existing) - 1} more in {folder}" if len(existing) > 1 else ""
        raise InputError(f"output exists: {existing[0]}{more} (use --overwrite to replace them)")


def skipped_summary(skipped: list[str], total: int, done: int, dst: Path, what: str = "images") -> str:
    """The last line of a folder render that skipped files it could not read."""
    names = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
    rest = f"{done} rendered into {dst}" if done else "nothing was written"
    return f"{len(skipped)} of {total} {what} could not be read and were skipped ({names}); {rest}"


def folder_jobs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """Every image in ``src`` -> the same name in ``dst``; checks only (the folder is made when rendering)."""
    images = list_images(src)
    if not images:
        raise InputError(f"no images in folder {src}")
    if dst.exists() and not dst.is_dir():
        raise InputError(f"output for a folder must be a folder: {dst}")
    if not dst.exists() and (is_image_path(dst) or video.is_video_path(dst)):
        raise InputError(f"output for a folder must be a folder, not a file name: {dst} (give a folder name, "
                         "e.g. without the extension)")
    return [(p, dst / p.name) for p in images]


def render_image(stylizer: Stylizer, rgb: np.ndarray, code, args: argparse.Namespace) -> np.ndarray:
    return stylize_frame(stylizer, rgb, code, alpha=args.alpha, size=fit_short_side(args.size, *rgb.shape[:2]),
                         upscale_method=args.upscale, keep_color=args.preserve_color)


def render_masked(stylizer: Stylizer, rgb: np.ndarray, styles: list[Style], regions: np.ndarray,
                  args: argparse.Namespace) -> np.ndarray:
    """Spatial control. With one style and a two-region mask, the style goes where the mask is light (the rest is
    the input's own pixels, at its full size)."""
    work = to_working_size(rgb, fit_short_side(args.size, *rgb.shape[:2]))
    small = regions if work.shape[:2] == rgb.shape[:2] else load_mask(args.mask, work.shape[:2])[0]
    if len(styles) == 1 and len(small) == 2:
        stylized = back_to_source(stylizer.stylize(work, styles[0].code, args.alpha), rgb, args.upscale,
                                  args.preserve_color)
        return np.where(regions[0][..., None], rgb, stylized)
    if len(styles) != len(small):
        check_regions(len(small), len(styles))
    log.info("--mask with %d styles: the model's own torch graph on the CPU (the engines' graphs take one style "
             "code; per-region statistics are not in them)", len(styles))
    out = stylizer.stylize_masked(work, [s.code for s in styles], small, args.alpha)
    return back_to_source(out, rgb, args.upscale, args.preserve_color)


def check_regions(regions: int, styles: int) -> None:
    """One style per mask region, or one style for a black/white mask (styled where white)."""
    if regions != styles and not (styles == 1 and regions == 2):
        raise InputError(f"the mask has {regions} regions but {styles} styles were given: "
                         "give one style per region (darkest region first)")
