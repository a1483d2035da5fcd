"""The one interface every inference backend offers: run the content graph on a frame."""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from importlib import import_module
from types import ModuleType
from typing import Generic, TypeVar

import torch
from torch import Tensor

from engines.errors import DeviceError
from engines.models.base import StyleModel

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Engine(ABC):
    """Runs a model's content side. Style codes and alpha are inputs, so no style ever rebuilds it."""

    name: str = "base"
    #: frames one run() may take stacked as (N, 3, H, W); exports with a fixed batch take 1
    max_batch: int = 1

    def __init__(self, model: StyleModel, device: torch.device, precision: str = "fp32") -> None:
        reason = self.unavailable_reason(device, precision)
        if reason:
            raise DeviceError(reason)
        self.model = model
        self.device = device
        self.precision = precision

    @abstractmethod
    def run(self, image: Tensor, alpha: Tensor, code: tuple[Tensor, ...]) -> Tensor:
        """(N, 3, H, W) RGB in [0, 1] (N <= ``max_batch``; float32, or the dtype the engine takes), H and W
        multiples of ``model.factor`` -> (N, 3, H, W) float32, clamped."""

    def describe(self) -> str:
        return f"{self.name} {self.precision} on {self.device}"

    # -- optional: engines that build per shape or hold native resources override these ----------------
    @classmethod
    def unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        """None if this engine can run ``precision`` on ``device`` here, else one line saying why not."""
        return None

    @classmethod
    def is_built(cls, model: StyleModel, device: torch.device, precision: str, weights_id: str | None = None,
                 shape_hint: tuple[int, int] | None = None) -> bool:
        """Whether this engine's slow first-time work (an export, a calibration, a TensorRT build, a checked
        compile) is in the engine cache already, so building it now takes about a second. Nothing to build:
        True. Looks only; builds nothing."""
        return True

    def prepare(self, height: int, width: int) -> None:
        """Build whatever a (H, W) input needs now, so the first frame of that size is not slow."""

    def close(self) -> None:
        """Release sessions, compiled models or GPU memory; the engine is not used afterwards."""


T = TypeVar("T")


class PerShape(Generic[T]):
    """What an engine builds for each exact frame size (a session, a compiled model), the last few kept.

    Building happens under a lock, so two threads asking for a new size build it once.
    """

    def __init__(self, build: Callable[[int, int], T], keep: int = 4) -> None:
        self._build, self._keep = build, keep
        self._built: OrderedDict[tuple[int, int], T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, height: int, width: int) -> T:
        key = (height, width)
        with self._lock:
            if key in self._built:
                self._built.move_to_end(key)
            else:
                self._built[key] = self._build(height, width)
                while len(self._built) > self._keep:
                    self._built.popitem(last=False)
            return self._built[key]

    def clear(self) -> None:
        with self._lock:
            self._built.clear()


def require_module(module: str, engine: str) -> ModuleType:
    """Import an engine's runtime, or say in one line which package to install."""
    try:
        return import_module(module)
    except ImportError:
        raise DeviceError(f"--engine {engine} needs the {module} package: pip install {module}") from None
