"""Plain PyTorch eager execution: the reference every faster engine is checked against."""
from __future__ import annotations

import torch
from torch import Tensor

from engines.backends.base import DTYPES, Engine
from engines.models.base import StyleModel


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, model: StyleModel, device: torch.device, precision: str = "fp32") -> None:
        super().__init__(model, device, precision)
        self.dtype = DTYPES[precision]
        self.graph = model.content_graph().to(device=device, dtype=self.dtype).eval()

    @torch.inference_mode()
    def run(self, image: Tensor, alpha: Tensor, code: tuple[Tensor, ...]) -> Tensor:
        cast = [t.to(self.device, self.dtype) for t in (image, alpha, *code)]
        return self.graph(*cast).float()
