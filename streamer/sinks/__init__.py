"""Sinks: an encoder and a muxer on their own thread behind a bounded queue, writing a file or a URL.

A sink takes each new frame once with its capture time (``send``) and sound with its capture time
(``send_audio``); both are put on a bounded queue and return at once, so the live output loop never waits
for an encoder, a disk or a network. When the queue is full the frame is dropped and counted.

Time: everything is placed on the capture clock (``time.perf_counter()``), from the sink's first frame. A
picture reaches the sink an engine step after its capture, the sound at once: since both are stamped
with their capture time, the sound is delayed to meet its picture and lips and sound agree.

* A file (:class:`FileTarget`): variable frame rate (each frame at its capture time, in ms), written to a
  hidden ``.part`` and renamed when closed (streamer.fileutil); a failure ends the session.
* A URL (:class:`UrlTarget`): constant frame rate at ``--fps`` (a frame repeated until the next),
  H.264 with a keyframe every 2 s at ``--bitrate``, yuv420p, AAC 48 kHz stereo (Opus for WHIP). A server
  that refuses, goes away or stalls: one warning, then reconnection with back-off, ``retries`` times;
  the other outputs go on, frames meanwhile are dropped and counted.
"""
from streamer.sinks.sink import (AudioChunk, Recording, Sink, stream_sink)  # noqa: F401
from streamer.sinks.targets import DEFAULT_BITRATE, FileTarget, Target, UrlTarget  # noqa: F401
from streamer.sinks.urls import SCHEMES, check_stream_url, safe_url, supported_schemes  # noqa: F401
from streamer.videoio import SOUND_RATE  # noqa: F401

__all__ = ["AudioChunk", "Recording", "Sink", "stream_sink", "DEFAULT_BITRATE", "FileTarget", "Target", "UrlTarget",
           "SCHEMES", "check_stream_url", "safe_url", "supported_schemes", "SOUND_RATE"]
