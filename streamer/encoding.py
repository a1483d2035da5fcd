"""What a video output can be, checked before any model loads: containers, codecs and the encoders' options.

The suffix names the muxer (a ``.part`` temp file cannot), ``--codec auto`` picks H.264 (VP9 for WebM), and
an encoder is opened once on a small file in memory with the writer's settings, so a refusal is one line
at the start rather than a failure after the model loaded. :class:`streamer.videoio.VideoWriter` uses the same
settings.
"""
from __future__ import annotations

import argparse
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import av

from engines.errors import InputError

#: output suffix -> FFmpeg muxer name; the temp file's ".part" suffix means we must name the muxer
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
#: container -> video codec used by ``codec="auto"``
AUTO_CODEC = {"webm": "libvpx-vp9"}
#: encoder-specific quality and speed options, keyed by encoder name
#: encoders with x264-style presets; "veryfast" leaves the CPU to the network (see streamer.video)
X264_PRESETS = ("libx264", "libx264rgb", "libx265")
PRESET_NAMES = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
#: x264 speed/size trade-off: "veryfast" encodes 640x360 in ~7 ms a frame on one core ("medium": ~20 ms), so
#: the encoder takes little from the engine; at --crf 18 the picture is the same, the file ~30% larger
DEFAULT_PRESET = "veryfast"
_CRF_CODECS = {"libx264", "libx264rgb", "libx265", "libvpx-vp9", "libvpx", "libaom-av1", "libsvtav1"}


def container_format(path: Path) -> str:
    """The FFmpeg muxer for ``path``'s suffix; an unknown suffix is the user's error."""
    fmt = CONTAINERS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"unsupported video output type '{path.suffix or path.name}': use one of "
                         f"{', '.join(CONTAINERS)}")
    return fmt


def resolve_codec(path: Path, codec: str) -> str:
    """``auto`` -> H.264, or VP9 for WebM (which allows nothing else)."""
    if codec != "auto":
        return codec
    return AUTO_CODEC.get(container_format(path), "libx264")


def check_output(path: Path, codec: str = "auto") -> str:
    """Fail early (before any model loads) when ``path`` cannot hold ``codec`` video; returns the encoder name."""
    path = Path(path)
    fmt = container_format(path)
    codec = resolve_codec(path, codec)
    try:
        encoder = av.Codec(codec, "w")
    except (av.FFmpegError, ValueError):
        raise InputError(f"video codec '{codec}' is not available in this PyAV/FFmpeg build") from None
    if encoder.type != "video":
        raise InputError(f"'{codec}' is not a video codec")
    with av.open(io.BytesIO(), "w", format=fmt) as probe:
        if encoder.name not in probe.supported_codecs:
            other = "" if fmt == "matroska" else " or container (e.g. .mkv)"
            raise InputError(f"a {path.suffix} file cannot hold {codec} video; use another codec (--codec){other}")
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    return codec


def check_encoder(path: Path, codec: str, crf: int = 18, preset: str | None = None, pix_fmt: str = "yuv420p") -> None:
    """Open ``codec`` once, with the settings a writer will give it, on a small file in memory: an encoder that
    refuses them (MJPEG wants full-range YUV, a CRF beyond x264's 51, a GPU encoder without its GPU) fails here,
    before any model loads, in one line."""
    fmt = container_format(Path(path))
    try:
        with av.open(io.BytesIO(), "w", format=fmt) as probe:
            stream = probe.add_stream(codec, rate=25, options=encoder_settings(codec, crf, preset))
            stream.codec_context.width, stream.codec_context.height = 64, 64
            stream.codec_context.pix_fmt = pix_fmt
            probe.start_encoding()
    except (av.FFmpegError, ValueError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0] or exc.__class__.__name__
        quality = f", --crf {crf}" if codec in _CRF_CODECS else ""
        raise InputError(f"the {codec} encoder cannot write this output ({pix_fmt} video{quality}, into a "
                         f"{Path(path).suffix} file: {reason}); use another --codec, e.g. libx264") from None


def encoder_settings(codec: str, crf: int, preset: str | None, realtime: bool = False) -> dict[str, str]:
    """The encoder's private options for the quality and speed flags, keyed by what each encoder understands."""
    options: dict[str, str] = {}
    if codec in _CRF_CODECS:
        options["crf"] = str(crf)
    if codec.startswith("libvpx"):
        options.update({"b": "0", "deadline": "realtime" if realtime else "good",
                        "cpu-used": "8" if realtime else "4", "row-mt": "1"})
    if codec in X264_PRESETS:
        options["preset"] = preset or DEFAULT_PRESET
    if codec == "libx265":  # x265 prints its banner and [info] lines straight to stderr, past FFmpeg's log
        options["x265-params"] = f"log-level={codec_log_level()}"
    return options


def codec_log_level() -> str:
    """Codec libraries' own verbosity, from the "libav" logger's level (streamer.cli: ERROR unless -v)."""
    lg = logging.getLogger("libav")
    return "info" if lg.isEnabledFor(logging.INFO) else "warning" if lg.isEnabledFor(logging.WARNING) else "error"


@dataclass(frozen=True)
class Encoding:
    """How a video output is encoded (``--codec``, ``--crf``, ``--preset``): the same for render, a folder's
    videos, a cluster's chunks and live's ``--record``; picklable, so a cluster worker gets it as it is."""

    codec: str = "auto"
    crf: int = 18
    preset: str = DEFAULT_PRESET

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Encoding:
        return cls(args.codec, args.crf, args.preset)

    def for_output(self, dst: Path) -> dict:
        """The writer's options for ``dst``, checked against its container before any model loads:
        {codec (auto resolved: H.264, or VP9 for WebM), crf, preset}."""
        if self.crf < 0 or self.crf > 63:
            raise InputError("--crf must be between 0 and 63 (x264: 0-51)")
        codec = check_output(dst, self.codec)
        check_encoder(dst, codec, self.crf, self.preset)
        return {"codec": codec, "crf": self.crf, "preset": self.preset}


def add_encoder_options(g: argparse._ActionsContainer) -> None:
    """--codec, --crf, --preset (:class:`Encoding`): render's video options and live's ``--record``."""
    g.add_argument("--codec", default="auto",
                   help="video encoder: libx264 (H.264), libx265, libvpx-vp9, ffv1, ... "
                        "(default auto = libx264, or libvpx-vp9 for .webm)")
    g.add_argument("--crf", type=int, default=18,
                   help="quality for x264/x265/VP9: lower is better and bigger; 18 looks lossless (default 18)")
    g.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESET_NAMES,
                   help=f"x264/x265 speed preset: ultrafast ... veryslow; slower = smaller file, same quality "
                        f"(default {DEFAULT_PRESET}, chosen to leave the CPU to the network)")
