"""Choosing and creating an inference engine for a model's content side."""
from __future__ import annotations

import logging

import torch

from engines.backends.base import DTYPES, PRECISIONS, Engine
from engines.errors import DeviceError

log = logging.getLogger(__name__)

ENGINE_NAMES = ("auto", "torch", "tensorrt", "onnxruntime")


def create_engine(kind: str, model, device: torch.device, precision: str = "fp32",
                  weights_id: str | None = None, shape_hint: tuple[int, int] | None = None) -> Engine:
    """Build the engine ``kind`` for ``model``; ``auto`` picks the fastest available and logs which.

    ``weights_id`` keys on-disk engine caches; ``shape_hint`` (H, W) is the expected frame size, used by
    engines that optimise for a shape range.
    """
    from engines.backends.torch_engine import TorchEngine

    if kind in ("auto", "torch"):
        engine: Engine = TorchEngine(model, device, precision)
    else:
        raise DeviceError(f"engine '{kind}' is not available yet")
    log.info("engine: %s", engine.describe())
    return engine


__all__ = ["DTYPES", "ENGINE_NAMES", "PRECISIONS", "Engine", "create_engine"]
