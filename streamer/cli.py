"""`streamer`: the command line. Each subcommand lives in its own module with add_parser() and run()."""
from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

from engines.backends.machine import reuse_freed_memory
from engines.errors import StreamerError
from streamer.signals import exit_code, signal_number, stop_signals_interrupt, stopped_by

log = logging.getLogger("streamer")

#: subcommand -> module offering ``add_parser(subparsers)`` and ``run(args) -> int``
COMMAND_MODULES = ("render", "live", "models_cmd", "styles_cmd", "cache_cmd", "bench", "evaluate", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamer", description="Live and offline arbitrary style transfer (AdaIN).")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        import_module(f"streamer.{name}").add_parser(sub)
    return parser


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="streamer: %(message)s", stream=sys.stderr, force=True)
    if verbose < 2:
        for noisy in ("torch", "onnxruntime", "PIL", "libav"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    reuse_freed_memory()
    try:
        with stop_signals_interrupt():  # SIGTERM/SIGHUP take Ctrl-C's path (streamer.signals)
            return int(args.run(args) or 0)
    except StreamerError as exc:
        print(f"streamer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        signum = signal_number(exc)
        print(f"streamer: interrupted{stopped_by(signum)}", file=sys.stderr)
        return exit_code(signum)
    except MemoryError:
        print("streamer: error: out of memory; try a smaller --size or another --model", file=sys.stderr)
        return 2
    except Exception as exc:  # never a traceback for users; -vv shows it
        log.debug("internal error", exc_info=True)
        print(f"streamer: internal error: {exc.__class__.__name__}: {exc} (run with -vv for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
