"""uint8 frames between the host and a GPU without stalling it: pinned buffers, a copy stream, events.

A frame crosses the bus as uint8 (a quarter of float32), from and into page-locked memory, so the
copies are DMA transfers that overlap the engine: uploads run on their own stream (the compute stream
waits for them with an event, not the CPU), and each download records an event the consumer waits on
when it needs the pixels, so ``depth`` batches can be in flight. On a CPU device every call is a
plain tensor hand-over, so the same code path runs (and is tested) without a GPU.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Pending:
    """A download in flight: ``result()`` waits for its event, then returns the frames as numpy."""

    host: Tensor
    event: object | None = None

    def ready(self) -> bool:
        return self.event is None or self.event.query()

    def result(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy().copy()  # the pinned buffer is reused ``depth`` downloads later


class FrameMover:
    """Uploads (N, H, W, 3) uint8 batches to ``device`` and downloads results, ``depth`` in flight."""

    def __init__(self, device: torch.device, depth: int = 3) -> None:
        self.device = torch.device(device)
        self.depth = max(1, depth)
        self.cuda = self.device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._up: dict[tuple, deque] = {}
        self._down: dict[tuple, deque] = {}

    def _slot(self, pool: dict[tuple, deque], shape: tuple[int, ...]) -> tuple[list, Tensor]:
        """A host buffer of this shape no transfer in flight uses: a new one until ``depth`` exist (those made
        so far may all be in flight), then the oldest, once its last transfer has finished. Pinned on a GPU."""
        ring = pool.setdefault(shape, deque())
        if len(ring) < self.depth:
            entry = [torch.empty(shape, dtype=torch.uint8, pin_memory=self.cuda), None]
        else:
            entry = ring.popleft()
            if entry[1] is not None:
                entry[1].synchronize()
        ring.append(entry)  # the newest at the end, the next to reuse at the front
        return entry, entry[0]

    def upload(self, frames: np.ndarray | Tensor) -> Tensor:
        """Host uint8 frames -> the same on the device; the current stream will wait for the copy."""
        t = torch.as_tensor(frames)
        if not self.cuda:
            return t
        entry, buf = self._slot(self._up, tuple(t.shape))
        buf.copy_(t)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.copy_stream):
            dev = buf.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        entry[1] = done  # the pinned buffer is free once this copy has run
        compute.wait_event(done)
        dev.record_stream(compute)  # the allocator must not hand dev's memory to the copy stream early
        return dev

    def download(self, frames: Tensor) -> Pending:
        """Device uint8 frames -> a Pending holding them in pinned host memory once its event fires.

        Its buffer is reused ``depth`` downloads (of this shape) later: call ``result()`` before then.
        """
        if not self.cuda:
            return Pending(frames.contiguous())
        entry, host = self._slot(self._down, tuple(frames.shape))
        host.copy_(frames, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        entry[1] = done
        return Pending(host, done)
