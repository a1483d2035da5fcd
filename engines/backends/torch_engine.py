"""Plain PyTorch eager execution: the reference every faster engine is checked against."""
from __future__ import annotations

import copy

import torch
from torch import Tensor

from engines.backends.base import DTYPES, Engine
from engines.models.base import StyleModel


class TorchEngine(Engine):
    name = "torch"
    max_batch = 16  # eager: AdaIN statistics are per sample, the style code broadcasts

    @classmethod
    def unavailable_reason(cls, device: torch.device, precision: str) -> str | None:
        if device.type == "cuda" and not torch.cuda.is_available():
            return "--device cuda was asked for, but no CUDA GPU is visible to PyTorch; use --device cpu"
        if precision not in DTYPES:
            return f"the torch engine does not run {precision}; int8 runs on --engine openvino"
        return None

    def __init__(self, model: StyleModel, device: torch.device, precision: str = "fp32",
                 weights_id: str | None = None, shape_hint: tuple[int, int] | None = None) -> None:
        """``weights_id`` and ``shape_hint`` are taken as every engine takes them, and unused: eager torch caches
        nothing on disk and runs any shape as it comes."""
        super().__init__(model, device, precision)
        self.dtype = DTYPES[precision]
        graph = model.content_graph()
        if device.type != "cpu" or self.dtype != torch.float32:
            # a copy: the content side may share modules with the style side (VGG), which stays fp32 on the CPU
            graph = copy.deepcopy(graph)
        self.graph = graph.to(device=device, dtype=self.dtype).eval()

    @torch.inference_mode()
    def run(self, image: Tensor, alpha: Tensor, code: tuple[Tensor, ...]) -> Tensor:
        cast = [t.to(self.device, self.dtype) for t in (image, alpha, *code)]
        return self.graph(*cast).float()
