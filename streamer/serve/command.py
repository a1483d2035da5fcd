"""`streamer serve`: the flags, their checks before anything loads, then the model, the styles and the server."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import threading
import time
import webbrowser
from typing import Any
from pathlib import Path

from engines.errors import DeviceError, InputError
from streamer.fileutil import AtomicOutput
from streamer.imageio import parse_size
from streamer.live.capture import open_source
from streamer.job import Job
from streamer.live.command import add_vcam_record_options, check_record, refuse_record_over_inputs
from streamer.live.sizing import working_size
from streamer.live.outputs import VirtualCamera
from streamer.options import (add_model_options, add_style_options, add_upscale_option, alpha_value, build_stylizer,
                              check_live_precision, expand_style_paths, pick_device)
from streamer.signals import STOP_SIGNALS, Interrupted, note_stop_signal
from streamer.temporal import TemporalStabilizer, add_temporal_options, check_strength

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="a browser studio: the live stream in a web page, a style gallery, every control, "
                      "and the browser's own camera over WebRTC",
        description="Serve the live session to a web page (http://127.0.0.1:8765/ by default): the stylized video, "
                    "a gallery of styles (drop new ones in), alpha, colours, temporal, motion, working size, "
                    "bypass, snapshots, and the window's keys. Two sources: this machine's (--source, watched by "
                    "any number of tabs) and the browser's own camera (sent up over WebRTC, stylized here, sent "
                    "back). Bound to 127.0.0.1 unless --host says otherwise; any other address needs the token "
                    "printed in the page's address, and is served over https.")
    n = p.add_argument_group("server")
    n.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only). Any other needs the token")
    n.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free one)")
    n.add_argument("--token", default=None,
                   help="the token a non-loopback server asks for (default: a new random one each start)")
    n.add_argument("--tls-cert", default=None, metavar="PEM", help="https certificate (with --tls-key)")
    n.add_argument("--tls-key", default=None, metavar="PEM", help="its private key")
    n.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
    n.add_argument("--camera-sessions", type=int, default=1, metavar="N",
                   help="browser cameras stylized at once (default 1; the next one is told the server is busy)")
    n.add_argument("--max-upload-mb", type=float, default=16.0, help="largest style file taken (default 16 MB)")
    n.add_argument("--max-upload-megapixels", type=float, default=40.0,
                   help="largest style picture taken (default 40 megapixels)")
    s = p.add_argument_group("the server's source")
    s.add_argument("--source", default="test",
                   help="camera number, video file, URL/stream, 'test' (a moving pattern; the default), or 'none' "
                        "(browser cameras only)")
    s.add_argument("--capture-size", default=None, metavar="WxH", help="as for live")
    s.add_argument("--fps", type=float, default=30.0, help="camera rate, test pattern rate and stream rate (default 30)")
    s.add_argument("--loop", action="store_true", help="file source: start again at the end")
    s.add_argument("--size", default=None, metavar="N|auto",
                   help="working short side as for live (default: auto on a CPU, the capture size on a GPU)")
    s.add_argument("--target-fps", type=float, default=None, help="the engine rate --size auto holds (as for live)")
    s.add_argument("--motion", default="auto", choices=("auto", "on", "off"),
                   help="frames between engine frames carried along the motion (as for live; auto: on with a CPU)")
    add_upscale_option(s)
    o = p.add_argument_group("the server's source: outputs (as for live; the page records too, see its button)")
    add_vcam_record_options(p, o, with_sound=" (pictures only); recorded from the start, watched or not, "
                                             "finished on Ctrl-C/SIGTERM or at the source's end")
    add_style_options(p, several_means="shown in the page's gallery")
    add_model_options(p)
    add_temporal_options(p)
    p.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> dict:
    args.alpha = alpha_value(args.alpha)
    working_size(args.size)
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be 0..65535, not {args.port}")
    if not 0 < args.fps <= 240:
        raise InputError(f"--fps must be greater than 0 and at most 240, not {args.fps:g}")
    if args.target_fps is not None and not 0 < args.target_fps <= 240:
        raise InputError(f"--target-fps must be greater than 0 and at most 240, not {args.target_fps:g}")
    if args.camera_sessions < 0:
        raise InputError("--camera-sessions must be 0 (none) or more")
    if not args.max_upload_mb > 0 or not args.max_upload_megapixels > 0:
        raise InputError("--max-upload-mb and --max-upload-megapixels must be greater than 0")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise InputError("--tls-cert and --tls-key go together")
    for flag in ("tls_cert", "tls_key"):
        if getattr(args, flag) and not Path(getattr(args, flag)).is_file():
            raise InputError(f"--{flag.replace('_', '-')} file not found: {getattr(args, flag)}")
    if args.token is not None and len(args.token) < 8:
        raise InputError("--token must be at least 8 characters")
    if args.style_weights:
        raise InputError("--style-weights mixes styles for render; serve shows each style in its gallery")
    check_strength(args.temporal_strength)
    if (args.record or args.vcam) and args.source == "none":
        raise InputError("--record and --vcam take the server's source: name one with --source (not none)")
    return check_record(args)  # the recording's encoder options


def run(args: argparse.Namespace) -> int:
    from streamer.serve.security import Guard, is_loopback, new_token

    encoder = _check_args(args)
    try:
        import aiohttp  # noqa: F401
        import aiortc  # noqa: F401
    except ImportError as exc:
        raise DeviceError(f"streamer serve needs aiohttp and aiortc ({exc.name} is missing): "
                          "pip install -e '.[serve]' (or STREAMER_EXTRAS=serve ./run.sh)") from None
    _check_port(args.host, args.port)  # before the model: a port in use fails in a second
    loopback = is_loopback(args.host)
    token = None if loopback else (args.token or new_token())
    tls = _tls_context(args, loopback)
    style_paths = expand_style_paths(args.style, args.style_size)
    capture_size = parse_size(args.capture_size, "--capture-size")
    out_size = parse_size(args.out_size, "--out-size")
    job = Job.from_args(args)  # its size stays 0: each session sizes itself (live's rules)
    refuse_record_over_inputs(args, job, style_paths)
    # the recording's file (and its lock) first: a read-only folder or another run on it fails before the model
    record_output = AtomicOutput(args.record, overwrite=args.overwrite) if args.record else None
    source = None
    outputs: list = []
    try:
        source = None if args.source == "none" else open_source(args.source, capture_size, args.fps, loop=args.loop)
        if args.vcam:  # before the model: a missing driver fails in a second
            w, h = out_size or (source.width, source.height)
            outputs.append(VirtualCamera(w, h, args.fps, args.vcam_backend, args.vcam_device))
        return _serve(args, job, source, style_paths, Guard(loopback, token, "https" if tls else "http"), tls,
                      outputs, record_output, encoder, out_size)
    except BaseException:
        if record_output is not None:
            record_output.discard()  # a no-op once the recording owns it (finished or aborted by its session)
        for out in outputs:  # only those no session took (Studio.start empties the list): no frame, no file
            out.abort()
        raise
    finally:
        if source is not None:
            source.release()  # a no-op once its session released it


def _check_port(host: str, port: int) -> None:
    """DeviceError when ``host:port`` cannot be listened on (in use, not this machine's address)."""
    import socket

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InputError(f"--host {host}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise DeviceError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (another program, or another "
                              "streamer serve? try --port)") from None


def _tls_context(args: argparse.Namespace, loopback: bool) -> ssl.SSLContext | None:
    """https with the given certificate, or (beyond loopback) one made on first use: browsers give a camera only
    to https pages (or localhost)."""
    cert, key = args.tls_cert, args.tls_key
    if not cert and loopback:
        return None
    if not cert:
        import platformdirs

        from streamer.serve.security import self_signed

        cert, key = self_signed(Path(platformdirs.user_cache_dir("streamer")) / "serve-tls", args.host)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise InputError(f"cannot use the certificate {cert} with the key {key}: {exc}") from None
    return context


def _serve(args: argparse.Namespace, job: Job, source, style_paths: list[Path], guard, tls, outputs: list,
           record_output, encoder: dict, out_size) -> int:
    import platformdirs
    from streamer.imageio import load_image
    from streamer.serve import rtc
    from streamer.serve.server import Limits, Studio, load_entry
    from streamer.serve.studio import SessionPlan, SharedStylizer, StyleBook
    from streamer.live.sizing import target_rate

    gpu = pick_device(job.device).type == "cuda"
    size = working_size(args.size)
    shape_hint = None
    if source is not None and isinstance(size, int) and size:
        from engines.stylizer import short_side_shape

        shape_hint = short_side_shape(source.height, source.width, size)
    stylizer = build_stylizer(job, shape_hint=shape_hint, use="live")
    book = StyleBook()
    t0 = time.perf_counter()
    for path in style_paths:
        book.add(load_entry(path, stylizer, job.style_size, job.weights_dir))
    stylizer = SharedStylizer(check_live_precision(stylizer, job, lambda: load_image(style_paths[0], "style image"),
                                                   book[0].code, shape_hint))
    log.info("%d style%s ready in %.1f s", len(book), "s" if len(book) > 1 else "", time.perf_counter() - t0)
    engine = getattr(stylizer, "engine", None)
    plan = SessionPlan(stylizer=stylizer, book=book, model=getattr(stylizer, "name", "?"), fps=args.fps,
                       size=size, target_fps=target_rate(args.target_fps, args.fps, gpu), gpu=gpu,
                       alpha=job.alpha, keep_color=job.preserve_color,
                       motion=args.motion == "on" or (args.motion == "auto" and not gpu), upscale=job.upscale,
                       temporal_on=job.temporal, make_temporal=lambda: TemporalStabilizer(job.temporal_strength))
    info = {"model": plan.model, "engine": f"{engine.name} {engine.precision}" if engine is not None else "",
            "source": source.describe() if source is not None else "none (browser cameras only)",
            "device": "GPU" if gpu else "CPU", "token_needed": guard.token is not None}
    if record_output is not None:  # after the model: nothing to throw away if it fails to load
        from streamer.sinks import Recording

        w, h = out_size or (source.width, source.height)
        outputs.append(Recording(args.record, w, h, args.fps, args.overwrite, output=record_output, **encoder))
    limits = Limits(int(args.max_upload_mb * 1e6), int(args.max_upload_megapixels * 1e6), args.camera_sessions)
    studio = Studio(plan, guard, info, Path(platformdirs.user_cache_dir("streamer")) / "serve-styles",
                    job.style_size, job.weights_dir, limits, source, outputs=outputs)
    rtc.keep_ice_on(args.host)
    if args.verbose < 2:  # aioice logs every ICE check at INFO
        for noisy in ("aioice", "aiortc", "aiohttp.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        asyncio.run(_main(studio, args, tls))
    finally:
        studio.stop()
    return 0


async def _main(studio, args, tls) -> None:
    from aiohttp import web

    from streamer.serve.peers import close_peers
    from streamer.serve.server import make_app

    runner = web.AppRunner(make_app(studio), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, ssl_context=tls)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise DeviceError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the port picked for --port 0
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"{'https' if tls else 'http'}://{host}:{port}/"
    if studio.guard.token:
        url += f"?token={studio.guard.token}"
    studio.start()  # once the port is ours: a port in use fails before any session starts
    print(f"streamer serve: open {url}", flush=True)
    if not args.no_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    stopped = await _until_stopped()
    try:
        await asyncio.wait_for(close_peers(runner.app), 10.0)
    except asyncio.TimeoutError:
        log.warning("WebRTC connections did not close in time")
    await runner.cleanup()
    raise Interrupted(stopped)


async def _until_stopped() -> int:
    """Wait for Ctrl-C, SIGTERM or SIGHUP, so the server closes its connections in order rather than being cut
    inside the loop; the signal's number. From the first one on, more are ignored (``note_stop_signal``) while
    the connections close and ``--record`` is finished. SIGTERM/SIGHUP get a plain Python handler, not the
    loop's: the loop's removal puts the default back (a second SIGTERM then killed the process mid-finish)."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future = loop.create_future()

    def stopping(signum: int, _frame=None) -> None:
        note_stop_signal(signum)
        loop.call_soon_threadsafe(lambda: stop.done() or stop.set_result(signum))

    previous: dict[int, Any] = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup's SIGHUP stays ignored
            previous[signum] = signal.signal(signum, stopping)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        loop.add_signal_handler(signal.SIGINT, stopping, signal.SIGINT)
    try:
        return await stop
    finally:
        for signum, handler in previous.items():  # streamer.signals' handler: it ignores them from now on
            signal.signal(signum, handler)
