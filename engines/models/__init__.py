"""The model registry: a name -> how to build the network and fill it from its weight files."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from engines.errors import InputError
from engines.models.base import StyleCode, StyleModel
from engines.models.microast import MicroAST
from engines.models.vgg import AdaIN, AdaINR31

log = logging.getLogger(__name__)

MODEL_NAMES = ("adain", "adain-r31", "microast")


def _fill(module: nn.Module, path: Path, what: str) -> None:
    """Load one weights file into ``module`` after checking every key and shape it needs."""
    from engines.weights import check_layout, load_state_dict

    state = load_state_dict(path)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_layout(state, expected, what, path)
    module.load_state_dict({k: state[k] for k in expected})


#: the models whose decoder a user can train and pass as ``--decoder`` -> (its released file, what it is)
DECODER_FILES = {
    "adain": ("decoder.pth", "the AdaIN relu4_1 decoder"),
    "adain-r31": ("feature_invertor_conv3_1.pth", "the relu3_1 decoder"),
}


def _load_adain(files: dict[str, Path]) -> StyleModel:
    model = AdaIN()
    _fill(model.encoder, files["vgg_normalised.pth"], "the normalised VGG-19 encoder (relu4_1)")
    _fill(model.decoder, files["decoder.pth"], DECODER_FILES["adain"][1])
    return model


def _load_adain_r31(files: dict[str, Path]) -> StyleModel:
    model = AdaINR31()
    _fill(model.encoder, files["vgg_normalised_conv3_1.pth"], "the normalised VGG-19 encoder (relu3_1)")
    _fill(model.decoder, files["feature_invertor_conv3_1.pth"], DECODER_FILES["adain-r31"][1])
    return model


def _load_microast(files: dict[str, Path]) -> StyleModel:
    model = MicroAST()
    _fill(model.content_encoder, files["content_encoder_iter_160000.pth.tar"], "the MicroAST content encoder")
    _fill(model.style_encoder, files["style_encoder_iter_160000.pth.tar"], "the MicroAST style encoder")
    _fill(model.modulator, files["modulator_iter_160000.pth.tar"], "the MicroAST modulator")
    _fill(model.decoder, files["decoder_iter_160000.pth.tar"], "the MicroAST decoder")
    return model


_LOADERS: dict[str, Callable[[dict[str, Path]], StyleModel]] = {
    "adain": _load_adain,
    "adain-r31": _load_adain_r31,
    "microast": _load_microast,
}


def check_model_name(name: str) -> str:
    if name not in _LOADERS:
        raise InputError(f"unknown model '{name}': choose one of {', '.join(MODEL_NAMES)}")
    return name


def check_decoder_option(name: str, decoder: str | Path | None) -> Path | None:
    """``--decoder PATH``: a file, for a model with a trainable decoder; None when not given."""
    if decoder is None or str(decoder) == "":
        return None
    if name not in DECODER_FILES:
        raise InputError(f"--decoder replaces the decoder of {' or '.join(DECODER_FILES)}, not of '{name}': "
                         f"pass --model {' or --model '.join(DECODER_FILES)}")
    path = Path(decoder).expanduser()
    if not path.is_file():
        raise InputError(f"--decoder file not found: {path}" if not path.exists() else
                         f"--decoder must be a file, not a folder: {path}")
    return path


def load_model(name: str, weights_dir: str | Path | None = None, download: bool = True,
               decoder: str | Path | None = None) -> StyleModel:
    """Build ``name`` with its real weights (downloaded on first use), in eval mode, on the CPU.

    ``decoder``: a decoder of the user's own (``streamer train``) in place of the released one, checked
    key by key and shape by shape like the released files.
    """
    from engines.weights import resolve_weights

    own = check_decoder_option(check_model_name(name), decoder)
    files = resolve_weights(name, weights_dir, download=download)
    if own is not None:
        files = {**files, DECODER_FILES[name][0]: own}
    model = _LOADERS[name](files)
    model.eval().requires_grad_(False)
    return model


def weights_fingerprint(name: str, weights_dir: str | Path | None = None, decoder: str | Path | None = None) -> str:
    """A short hash of the model's weight files (the user's own decoder included), for cache keys."""
    import hashlib

    from engines.weights import file_sha256, resolve_weights

    files = resolve_weights(name, weights_dir, download=False)
    own = check_decoder_option(name, decoder)
    if own is not None:
        files = {**files, DECODER_FILES[name][0]: own}
    digest = hashlib.sha256("|".join(f"{k}:{file_sha256(p)}" for k, p in sorted(files.items())).encode())
    return digest.hexdigest()[:16]


def default_model(cuda_available: bool | None = None) -> str:
    """``--model auto``: the paper's model where a GPU makes it real-time, the tiny one on a CPU."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    return "adain" if cuda_available else "microast"


__all__ = ["MODEL_NAMES", "DECODER_FILES", "StyleCode", "StyleModel", "load_model", "default_model",
           "check_model_name", "check_decoder_option", "weights_fingerprint"]
