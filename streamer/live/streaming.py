"""`streamer live`'s streaming and sound flags: --stream URL (repeatable), --bitrate, --stream-retries, --audio,
--audio-delay, --list-audio; checked before anything loads, then turned into sinks and a sound source."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from engines.errors import InputError
from streamer.live.audio import FileSound, SoundSource, has_sound, list_audio, open_microphone
from streamer.sinks import DEFAULT_BITRATE, Sink, check_stream_url, stream_sink, supported_schemes


class _ListAudio(argparse.Action):
    """``--list-audio``: print the inputs and stop (before --style is asked for)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(list_audio(), flush=True)
        parser.exit(0)


def add_stream_options(p: argparse.ArgumentParser) -> None:
    schemes = ", ".join(s + "://" for s in supported_schemes())
    g = p.add_argument_group("streams and sound")
    g.add_argument("--stream", action="append", default=[], metavar="URL",
                   help=f"send the output live to a server (repeatable; with or without --window/--vcam/--record). "
                        f"This FFmpeg sends: {schemes or 'none'} (rtmp(s): FLV H.264 + AAC; whip: H.264 + Opus). "
                        f"Constant --fps, keyframe every 2 s, yuv420p, AAC 48 kHz stereo; e.g. "
                        f"rtmp://live.twitch.tv/app/KEY")
    g.add_argument("--bitrate", type=int, default=DEFAULT_BITRATE, metavar="KBPS",
                   help=f"stream video bitrate in kbit/s (default {DEFAULT_BITRATE}, for 720p30)")
    g.add_argument("--stream-retries", type=int, default=5, metavar="N",
                   help="reconnects to a server that refuses, goes away or stalls, with back-off (default 5); the "
                        "other outputs go on meanwhile")
    g.add_argument("--audio", default=None, metavar="DEVICE|default|none",
                   help="sound for --record/--stream. A file source: its own sound (default), or none. A camera, "
                        "URL or the test pattern: a microphone: default, a PulseAudio/PipeWire input name, or "
                        "alsa:hw:C,D (default: none)")
    g.add_argument("--audio-delay", type=float, default=0.0, metavar="MS",
                   help="move the sound later (positive) or earlier (negative) by MS milliseconds, for a "
                        "microphone or camera with its own delay (default 0)")
    g.add_argument("--list-audio", action=_ListAudio, nargs=0, help="list the sound inputs --audio takes, and stop")


def _is_file_source(text: str) -> bool:
    text = str(text).strip()
    return not (text.lower() == "test" or text.isdigit() or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text))


def check_stream_args(args: argparse.Namespace) -> None:
    """Every stream URL and the sound flags, in one line each, before anything loads."""
    for url in args.stream:
        check_stream_url(url)
    if len(set(args.stream)) != len(args.stream):
        raise InputError("the same --stream URL is given twice")
    if not 100 <= args.bitrate <= 50_000:
        raise InputError(f"--bitrate is in kbit/s, between 100 and 50000, not {args.bitrate}")
    if args.stream_retries < 0:
        raise InputError("--stream-retries must be 0 or more")
    if abs(args.audio_delay) > 5000:
        raise InputError("--audio-delay must be within -5000..5000 ms")
    audio = args.audio
    if audio is not None and audio.lower() != "none" and _is_file_source(args.source):
        raise InputError(f"--audio {audio}: a file source plays its own sound and its own clock; a microphone "
                         "goes with a camera, a URL or the test pattern (--audio none silences the file)")


def open_sound(args: argparse.Namespace) -> SoundSource | None:
    """The sound for the recording and streams: a file source's own, a microphone, or none."""
    if not (args.record or args.stream):
        if args.audio not in (None, "none"):
            raise InputError("--audio goes into --record or --stream: name one of them")
        return None
    if args.audio is not None and args.audio.lower() == "none":
        return None
    if args.audio is None:
        if _is_file_source(args.source) and Path(args.source).is_file() and has_sound(args.source):
            return FileSound(str(args.source))
        return None
    return open_microphone(args.audio)


def stream_outputs(args: argparse.Namespace, width: int, height: int) -> list[Sink]:
    """One sink a ``--stream``, connecting at once on its own thread (the first frames need not wait for it)."""
    sinks = [stream_sink(url, width, height, args.fps, bitrate_kbps=args.bitrate, retries=args.stream_retries,
                         audio_delay=args.audio_delay / 1000) for url in args.stream]
    for sink in sinks:
        sink.start()
    return sinks

