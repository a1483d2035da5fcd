"""`streamer models list|download`: what weights there are, and fetching them ahead of time."""
from __future__ import annotations

import argparse

from engines.models import MODEL_NAMES, check_model_name, weight_spec


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list models and download their weights")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    lst = msub.add_parser("list", help="each model and whether its weights are ready")
    lst.add_argument("--weights-dir", default=None)
    lst.set_defaults(run=run_list)
    dl = msub.add_parser("download", help="download (and verify) a model's weights into the cache")
    dl.add_argument("name", help=f"one of {', '.join(MODEL_NAMES)}, or 'all'")
    dl.add_argument("--weights-dir", default=None)
    dl.set_defaults(run=run_download)


def run_list(args: argparse.Namespace) -> int:
    from engines.weights import model_status

    for name in MODEL_NAMES:
        spec = weight_spec(name)
        print(f"{name:<10} {model_status(spec, args.weights_dir):<8}  {spec.source}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from engines.weights import download_model

    names = MODEL_NAMES if args.name == "all" else (check_model_name(args.name),)
    for name in names:
        files = download_model(weight_spec(name), args.weights_dir)
        for path in files.values():
            print(path)
    return 0
