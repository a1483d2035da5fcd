"""The model registry: a name -> how to build the network, the files its weights come from, and filling it
from them."""
from __future__ import annotations

import importlib
import logging
import pkgutil
from pathlib import Path

import torch
from torch import nn

from engines.errors import InputError, WeightsError
from engines.models.base import ModelWeights, StyleCode, StyleModel, WeightFile

log = logging.getLogger(__name__)


def _discover() -> dict[str, type[StyleModel]]:
    """Every model class in this package that declares its weight files, by name: adding a model is
    adding its module here, nothing else."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    found: dict[str, type[StyleModel]] = {}
    todo = list(StyleModel.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith(f"{__name__}.") and "weights" in vars(cls):
            found[cls.name] = cls
    return dict(sorted(found.items()))


#: name -> model class, each declaring its weight files (``StyleModel.weights``)
MODELS: dict[str, type[StyleModel]] = _discover()
MODEL_NAMES = tuple(MODELS)

#: the models whose decoder a user can train and pass as ``--decoder`` -> (its released file, what it is)
DECODER_FILES = {
    name: next((wf.filename, wf.what) for wf in cls.weights.files if wf.module == cls.trainable)
    for name, cls in MODELS.items() if cls.trainable
}


def weight_spec(name: str) -> ModelWeights:
    """The weight files model ``name`` declares (what :mod:`engines.weights` finds, checks and downloads)."""
    try:
        return MODELS[name].weights
    except (KeyError, TypeError):
        raise WeightsError(f"unknown model '{name}': known models are {', '.join(sorted(MODELS))}") from None


def _fill(module: nn.Module, path: Path, what: str) -> None:
    """Load one weights file into ``module`` after checking every key and shape it needs."""
    from engines.weights import check_layout, load_state_dict

    state = load_state_dict(path)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_layout(state, expected, what, path)
    check_finite({k: state[k] for k in expected}, path)
    module.load_state_dict({k: state[k] for k in expected})


def check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity (a diverged training run, a damaged file): they load without
    complaint and render a flat image, so they are as corrupt as a file that does not parse."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise WeightsError(f"weights file is corrupt: {path} holds NaN or infinite values in '{bad[0]}'{more}")


def _load(cls: type[StyleModel], files: dict[str, Path]) -> StyleModel:
    """The model with each declared file loaded into the part it names."""
    model = cls()
    for wf in cls.weights.files:
        _fill(getattr(model, wf.module), files[wf.filename], wf.what)
    return model


def random_weights_model(name: str, seed: int = 0) -> StyleModel:
    """The model's architecture with random weights that keep activations in range (He init, a mid-grey
    final bias), so outputs are varied images rather than a clamped constant: fit for speed and for
    engine-vs-engine agreement, meaningless as art."""
    torch.manual_seed(seed)
    model = MODELS[check_model_name(name)]().eval().requires_grad_(False)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        conv.bias.data.zero_()
    convs[-1].weight.data.mul_(0.1)
    convs[-1].bias.data.fill_(0.5)
    return model


def check_model_name(name: str) -> str:
    if name not in MODELS:
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
    files = resolve_weights(weight_spec(name), weights_dir, download=download)
    if own is not None:
        files = {**files, DECODER_FILES[name][0]: own}
    model = _load(MODELS[name], files)
    model.eval().requires_grad_(False)
    return model


def weights_fingerprint(name: str, weights_dir: str | Path | None = None, decoder: str | Path | None = None) -> str:
    """A short hash of the model's weight files (the user's own decoder included), for cache keys."""
    import hashlib

    from engines.weights import file_sha256, resolve_weights

    files = resolve_weights(weight_spec(name), weights_dir, download=False)
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


__all__ = ["MODELS", "MODEL_NAMES", "DECODER_FILES", "ModelWeights", "WeightFile", "random_weights_model", "StyleCode",
           "StyleModel", "load_model", "default_model", "check_model_name", "check_decoder_option", "weight_spec",
           "weights_fingerprint"]
