"""`streamer styles add`: precompute style codes so the first frame with a style costs nothing."""
from __future__ import annotations

import argparse
import logging

from streamer.job import Job
from streamer.options import add_model_options, build_stylizer, expand_style_paths, load_styles

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("styles", help="precompute style codes")
    ssub = p.add_subparsers(dest="styles_command", metavar="ACTION", required=True)
    add = ssub.add_parser("add", help="compute and cache the style code of images or folders")
    add.add_argument("images", nargs="+", help="style images or folders")
    add.add_argument("--style-size", type=int, default=512, help="as in render/live (default 512)")
    add_model_options(add)
    add.set_defaults(run=run_add)


def run_add(args: argparse.Namespace) -> int:
    paths = expand_style_paths(args.images, args.style_size)
    job = Job.from_args(args)
    stylizer = build_stylizer(job)
    for style in load_styles(paths, stylizer, job.style_size, job.weights_dir):
        print(f"{stylizer.name}: {style.path}")
    return 0
