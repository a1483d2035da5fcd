"""A one-connection RTMP server for tests: FFmpeg's listen mode through PyAV, saving what it receives.

    python tests/rtmp_server.py rtmp://127.0.0.1:PORT/live/key OUT.mkv

Accepts one publisher, copies its packets into OUT.mkv (each stamped with the wall time it arrived in
OUT.mkv.arrivals, one "pts_seconds arrival_time" line per video packet) and exits when the stream ends.
"""
from __future__ import annotations

import sys
import time

import av


def main(url: str, out_path: str) -> int:
    inp = av.open(url, format="flv", options={"listen": "1", "analyzeduration": "200000", "probesize": "32768"},
                  timeout=60)  # a short probe: packets are stamped when they come, not after seconds of probing
    with av.open(out_path, "w", format="matroska") as out, open(out_path + ".arrivals", "w") as arrivals:
        mapping = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        for packet in _packets(inp):
            if packet.dts is None or packet.stream.index not in mapping:
                continue
            if packet.stream.type == "video" and packet.pts is not None:
                arrivals.write(f"{float(packet.pts * packet.time_base):.4f} {time.time():.4f}\n")
                arrivals.flush()
            packet.stream = mapping[packet.stream.index]
            out.mux(packet)
    inp.close()
    return 0


def _packets(inp):
    """The publisher's packets until it hangs up (its last close reads as an I/O error here)."""
    try:
        yield from inp.demux()
    except (av.error.OSError, EOFError):
        return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
