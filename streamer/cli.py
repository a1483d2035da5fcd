"""`streamer`: the command line. Each subcommand lives in its own module with add_parser() and run()."""
from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

from engines.backends.machine import reuse_freed_memory
from engines.errors import StreamerError
from streamer.fileutil import drop_stdout, flush_stdout
from streamer.signals import exit_code, signal_number, stop_signals_interrupt, stopped_by

log = logging.getLogger("streamer")

#: subcommand -> module offering ``add_parser(subparsers)`` and ``run(args) -> int``
COMMAND_MODULES = ("render", "live", "models_cmd", "styles_cmd", "cache_cmd", "bench", "evaluate", "train",
                   "serve.command")
#: exit status when the reader of stdout goes away (``streamer eval flicker ... --json | head``): 128 + SIGPIPE,
#: what a shell reports for any Unix tool stopped by a closed pipe
EXIT_BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamer", description="Live and offline arbitrary style transfer (AdaIN).")
    _add_verbosity(parser, default=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        import_module(f"streamer.{name}").add_parser(sub)
    _add_verbosity_below(parser)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, default: bool = False) -> None:
    """-v/-q; below the top level their default is SUPPRESS, so an absent flag never resets the top-level one."""
    keep = argparse.SUPPRESS
    parser.add_argument("-v", "--verbose", action="count", default=0 if default else keep,
                        help="more log output, codec libraries' own lines too (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", default=False if default else keep,
                        help="only warnings and errors: no progress bars, no info lines")


def _add_verbosity_below(parser: argparse.ArgumentParser) -> None:
    """-v/-q on every command and sub-command too (``streamer render -q ...``), as users type them."""
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public walk over sub-commands
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in dict.fromkeys(action.choices.values()):  # aliases share one parser
                _add_verbosity(sub)
                _add_verbosity_below(sub)


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="streamer: %(message)s", stream=sys.stderr, force=True)
    if verbose < 2:
        for noisy in ("torch", "onnxruntime", "PIL"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    # codec libraries' own lines (x265's [info] banner; streamer.encoding reads this level): only with -v
    logging.getLogger("libav").setLevel((logging.ERROR, logging.INFO)[verbose] if verbose < 2 else logging.NOTSET)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    reuse_freed_memory()
    try:
        with stop_signals_interrupt():  # SIGTERM/SIGHUP take Ctrl-C's path (streamer.signals)
            code = int(args.run(args) or 0)
            flush_stdout()  # a reader that went away, or a full disk, shows here, not as a traceback at exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except StreamerError as exc:
        _tell(f"streamer: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt as exc:
        signum = signal_number(exc)
        _tell(f"streamer: interrupted{stopped_by(signum)}")
        return exit_code(signum)
    except MemoryError:
        _tell(OUT_OF_MEMORY)
        return 2
    except Exception as exc:  # never a traceback for users; -vv shows it
        if is_out_of_memory(exc):  # torch and OpenVINO raise RuntimeError for it, not MemoryError
            log.debug("out of memory", exc_info=True)
            _tell(OUT_OF_MEMORY)
            return 2
        log.debug("internal error", exc_info=True)
        _tell(f"streamer: internal error: {exc.__class__.__name__}: {exc} (run with -vv for details)")
        return 1


def console_main() -> int:
    """The `streamer` command and `python -m streamer`: :func:`main`, and once a stop signal came, more of them
    stay ignored while the process exits (exit 143, never killed by the second one). In-process callers (the
    Python API, tests) call :func:`main`, which gives their own handlers back."""
    with stop_signals_interrupt(stay_after_stop=True):
        try:
            return main()
        except KeyboardInterrupt as exc:  # before main's own block took over: while the flags were read
            signum = signal_number(exc)
            _tell(f"streamer: interrupted{stopped_by(signum)}")
            return exit_code(signum)


OUT_OF_MEMORY = "streamer: error: out of memory; try a smaller --size or another --model"
#: how the runtimes word an allocation failure they raise as RuntimeError (torch CPU and CUDA, OpenVINO, oneDNN)
_OOM_WORDS = ("out of memory", "bad_alloc", "cannot allocate memory", "failed to allocate", "not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a runtime's way of saying it ran out of memory (its class or its words)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(w in str(exc).lower() for w in _OOM_WORDS)


def _tell(line: str) -> None:
    """The last line on stderr. A stderr that cannot take it (closed, a gone reader, a full disk) must not turn
    the exit code into 1: the line is dropped."""
    if sys.stderr is None:
        return
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        drop_stdout(sys.stderr)


def _stdout_closed() -> int:
    """``| head`` stopped reading: end quietly, like a Unix tool stopped by SIGPIPE, with nothing on stderr."""
    drop_stdout()  # Python's own flush at exit must not fail on the closed pipe again
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
