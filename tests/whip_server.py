"""A one-publisher WHIP endpoint for tests: aiohttp answers the offer with aiortc, on 127.0.0.1 only.

    python tests/whip_server.py PORT REPORT.json

POST /whip (an SDP offer) -> 201 Created, the answer and a Location; the tracks it receives are decoded and
counted; DELETE of that Location (the publisher's end) writes REPORT.json and exits. The report: video frames
and a middle one (REPORT.json.npy, RGB), audio frames, samples and peak, the codecs, and the ICE candidates and
the pair the media used. ICE stays on 127.0.0.1 as the studio's does (streamer.serve.rtc.keep_ice_on).
"""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
from aiohttp import web
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamer.serve.rtc import keep_ice_on, new_peer  # noqa: E402 - after the path

SETTLE = 0.5  # seconds after DELETE for the last packets in the jitter buffer to come out


class Endpoint:
    def __init__(self, report: Path) -> None:
        self.report = report
        self.pc = None
        self.video: list[np.ndarray] = []
        self.audio_frames = 0
        self.audio_samples = 0
        self.audio_peak = 0.0
        self.audio_rate = 0
        self.done = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    async def offer(self, request: web.Request) -> web.Response:
        if self.pc is not None or request.content_type != "application/sdp":
            return web.Response(status=409 if self.pc is not None else 415)
        offer = await request.text()
        self.pc = pc = new_peer()

        @pc.on("track")
        def on_track(track) -> None:
            self.tasks.append(asyncio.ensure_future(self.receive(track)))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.Response(status=201, text=pc.localDescription.sdp, content_type="application/sdp",
                            headers={"Location": "/whip/session"})

    async def receive(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                self.video.append(frame.to_ndarray(format="rgb24"))
            else:
                samples = frame.to_ndarray()
                scale = 32768.0 if samples.dtype == np.int16 else 1.0
                self.audio_frames += 1
                self.audio_samples += frame.samples
                self.audio_rate = frame.sample_rate
                self.audio_peak = max(self.audio_peak, float(np.abs(samples).max()) / scale)

    async def delete(self, request: web.Request) -> web.Response:
        await asyncio.sleep(SETTLE)
        self.write_report()
        self.done.set()
        return web.Response(status=200)

    def write_report(self) -> None:
        ice = self.pc.getTransceivers()[0].receiver.transport.transport
        pair = ice._connection._nominated.get(1)  # noqa: SLF001 - aiortc offers no public view of the pair in use
        if self.video:
            np.save(str(self.report) + ".npy", self.video[len(self.video) // 2])
        self.report.write_text(json.dumps({
            "state": self.pc.connectionState,
            "video_frames": len(self.video),
            "video_size": list(self.video[0].shape[1::-1]) if self.video else None,
            "audio_frames": self.audio_frames, "audio_samples": self.audio_samples,
            "audio_rate": self.audio_rate, "audio_peak": self.audio_peak,
            "local_candidates": [c.ip for c in ice.iceGatherer.getLocalCandidates()],
            "remote_candidates": [c.ip for c in ice.getRemoteCandidates()],
            "pair": [pair.local_addr[0], pair.remote_addr[0]] if pair is not None else None,
            "codecs": [line.split()[1] for line in self.pc.localDescription.sdp.splitlines()
                       if line.startswith("a=rtpmap:")],
        }))


async def serve(port: int, report: Path) -> None:
    keep_ice_on("127.0.0.1")
    endpoint = Endpoint(report)
    app = web.Application()
    app.router.add_post("/whip", endpoint.offer)
    app.router.add_delete("/whip/session", endpoint.delete)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await endpoint.done.wait()
    await asyncio.sleep(0.1)  # the DELETE's answer goes out
    await endpoint.pc.close()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), Path(sys.argv[2])))
