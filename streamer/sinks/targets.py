"""What a sink writes into: a video file (streamer.videoio's writer) or a live stream to a server."""
from __future__ import annotations

import contextlib
import datetime
import fractions
import re
import tempfile
from pathlib import Path
from typing import Protocol

import av
import numpy as np

from streamer.sinks.urls import check_stream_url
from streamer.videoio import VideoWriter, add_sound_stream, even_padding, pad_edges, sound_frame

DEFAULT_BITRATE = 2500  # kbit/s: what Twitch and YouTube suggest for 720p at 30 fps
KEYFRAME_SECONDS = 2.0
SOUND_BITRATE = 128_000
NETWORK_TIMEOUT = 5.0  # seconds a connect or a write may take before the server counts as gone


class Target(Protocol):
    """An open container: pictures at ``pts`` in ``time_base``, sound at sample ``pts``."""

    time_base: fractions.Fraction
    has_sound: bool

    def write(self, rgb: np.ndarray, pts: int) -> None: ...

    def write_audio(self, samples: np.ndarray, pts: int) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class UrlTarget:
    """A live stream to a server: H.264 CBR-ish at ``bitrate``, keyframe every 2 s, AAC 48 kHz stereo."""

    has_sound = True

    def __init__(self, url: str, width: int, height: int, fps: float, bitrate_kbps: int = DEFAULT_BITRATE) -> None:
        fmt = check_stream_url(url)
        scheme = url.split(":", 1)[0].lower()
        target = re.sub(r"^whips?", "https" if scheme == "whips" else "http", url) if fmt == "whip" else url
        self.fps = fractions.Fraction(fps).limit_denominator(1001)
        self.time_base = 1 / self.fps
        self.pad_w, self.pad_h = even_padding(width, height, "yuv420p")
        self.priming_shift, self._priming = fmt == "flv", None
        # each packet to the network at once (no 32 KB buffer in the delay), and never held long waiting for
        # the other stream's packets to interleave with
        options = {"flush_packets": "1", "max_interleave_delta": "500000"}
        if fmt == "flv":
            options["flvflags"] = "no_duration_filesize"  # a live server cannot seek back to fill them in
        if fmt == "rtsp":
            options["rtsp_transport"] = "tcp"
        whip_keys = tempfile.TemporaryDirectory(prefix="streamer-whip-") if fmt == "whip" else contextlib.nullcontext()
        with whip_keys as folder:  # the key is read during the DTLS handshake, then removed
            if folder is not None:
                options["cert_file"], options["key_file"] = dtls_certificate(Path(folder))
            self.container = av.open(target, "w", format=fmt, options=options,
                                     timeout=(NETWORK_TIMEOUT, NETWORK_TIMEOUT))
            try:
                self._add_streams(fmt, scheme, bitrate_kbps, width + self.pad_w, height + self.pad_h)
                self.container.start_encoding()  # WHIP: the offer, ICE and the DTLS handshake
            except BaseException:
                self.abort()
                raise

    def _add_streams(self, fmt: str, scheme: str, bitrate_kbps: int, width: int, height: int) -> None:
        gop = max(1, round(float(self.fps) * KEYFRAME_SECONDS))
        bits = bitrate_kbps * 1000
        stream = self.container.add_stream("libx264", rate=self.fps, options={
            "preset": "veryfast", "tune": "zerolatency", "g": str(gop), "keyint_min": str(gop),
            "sc_threshold": "0", "maxrate": str(bits), "bufsize": str(2 * bits), "b": str(bits),
            # WebRTC's H.264 is Constrained Baseline (RFC 7742; what aiortc and browsers take): x264's default,
            # High, makes a WHIP endpoint refuse the offer
            **({"profile": "baseline"} if fmt == "whip" else {})})
        ctx = stream.codec_context
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = self.time_base
        ctx.framerate = self.fps
        stream.time_base = self.time_base
        ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range = 1, 1, 1, 1
        self.stream = stream
        self.sound = add_sound_stream(self.container, f"{scheme}://", "libopus" if fmt == "whip" else "aac",
                                      SOUND_BITRATE)

    def write(self, rgb: np.ndarray, pts: int) -> None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pad_edges(rgb, self.pad_w, self.pad_h)), "rgb24")
        frame = frame.reformat(format="yuv420p", dst_colorspace="itu709", dst_color_range="MPEG")
        frame.pts, frame.time_base = pts, self.time_base
        self.container.mux(self.stream.encode(frame))

    def write_audio(self, samples: np.ndarray, pts: int) -> None:
        self._mux_sound(self.sound.encode(sound_frame(samples, pts, self.sound.codec_context.format.name)))

    def _mux_sound(self, packets: list[av.Packet]) -> None:
        """FLV has no field for the encoder's priming (AAC: 1024 samples before the first, at pts -1024) and
        players play it: measured 21 ms early on a 127.0.0.1 stream; so the packets move later by it."""
        for packet in packets:
            if self._priming is None:
                self._priming = max(0, -(packet.pts or 0)) if self.priming_shift else 0
            if self._priming:
                packet.pts, packet.dts = packet.pts + self._priming, packet.dts + self._priming
            self.container.mux(packet)

    def close(self) -> None:
        try:
            self.container.mux(self.stream.encode(None))
            self._mux_sound(self.sound.encode(None))
        finally:
            self.container.close()

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - a connection already gone
            pass


def dtls_certificate(folder: Path) -> tuple[str, str]:
    """A self-signed ECDSA P-256 certificate and its key (PEM files in ``folder``) for a WHIP stream's DTLS. The
    key FFmpeg makes itself with GnuTLS (PyAV's wheels) is on P-224, which OpenSSL (aiortc) refuses mid-handshake
    ("A TLS fatal alert has been received"); P-256 is the curve WebRTC's own stacks use. Only the fingerprint in
    the offer authenticates it: self-signed is what WebRTC expects."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    key_path.touch(0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_path), str(key_path)


class FileTarget:
    """A video file with sound: streamer.videoio's writer (``.part`` then rename), timestamps in ms."""

    time_base = fractions.Fraction(1, 1000)  # every container holds ms exactly (WebM/Matroska count in ms)

    def __init__(self, path: Path, width: int, height: int, fps: float, sound: bool, **encoder) -> None:
        self.writer = VideoWriter(path, width, height, fps, time_base=self.time_base, realtime=True, sound=sound,
                                  **encoder)
        self.has_sound = sound

    def write(self, rgb: np.ndarray, pts: int) -> None:
        self.writer.write(rgb, pts=pts)

    def write_audio(self, samples: np.ndarray, pts: int) -> None:
        self.writer.write_audio(samples, pts)

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()
