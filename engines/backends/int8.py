"""int8 for the OpenVINO engine: post-training quantisation of the content graph, calibrated once.

Which layers: only convolutions whose input is a ReLU, a max-pool or the image itself, i.e. content
activations with a range that does not depend on the style. The conv that reads the AdaIN output (its
range is the style's statistics) and everything elementwise (AdaIN, alpha blend, statistics) stay fp32.
Measured on adain-r31 at 640x360 (2 Zen 4 cores, AVX2): quantising that one conv too costs ~10 dB
(28 dB alone, against fp32), every other conv costs little; with the rule the worst of 75 real
(photo, painting) pairs is 35.8 dB and the median 41.5 dB, at 1.65x the speed of OpenVINO fp32
(tools/int8_quality.py).
MicroAST is not offered: its modulated residual stream leaves few safe convs (worst pair 26 dB at
1.25x), see ``StyleModel.int8_refusal``.

Calibration data is synthetic ("dead leaves": occluding discs, strokes and grain, which share natural
images' edge and scale statistics), for contents and styles alike, so no image has to ship or be chosen
by the user and the result is the same on every machine. Calibrating on real photos instead bought
about 1 dB. The quantised model keeps dynamic H and W and is cached beside the ONNX export; it must be
reshaped to a static frame size before compiling (the engine always does): compiled with dynamic H/W,
OpenVINO 2026.4 runs it wrongly (15 dB).
"""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import torch

from engines.backends.base import require_module
from engines.backends.graph import input_names, onnx_entry
from engines.models.base import StyleModel
from engines.stylizer import to_tensor

log = logging.getLogger(__name__)

#: bump when the calibration data or the layer rule changes, so cached int8 models are rebuilt
INT8_RECIPE = 2
CALIBRATION_SAMPLES = 8
CALIBRATION_SIZES = ((288, 512), (256, 256), (384, 288))
#: graph inputs whose range is the content's own: a conv fed (through pads and reshapes) by these is int8
SAFE_PRODUCERS = frozenset({"Relu", "MaxPool", "Parameter"})
TRANSPARENT = frozenset({"Pad", "Reshape", "Transpose", "DepthToSpace", "SpaceToDepth"})
#: elementwise and layout ops: never quantised (AdaIN statistics, blend, clamp, pixel shuffles)
NEVER_QUANTISED = ("Multiply", "Add", "Subtract", "Divide", "Sqrt", "ReduceMean", "Slice", "Concat", "MaxPool",
                   "Interpolate", "DepthToSpace", "Reshape", "Power", "Clamp")


def dead_leaves(height: int, width: int, rng: np.random.Generator, leaves: int = 600) -> np.ndarray:
    """A synthetic (H, W, 3) uint8 image: discs and ellipses with radii ~ r^-3, strokes, blur and grain."""
    import cv2

    img = np.empty((height, width, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    rmin, rmax = 3.0, max(height, width) / 3
    u = rng.random(leaves)
    radii = (rmin ** -2 + u * (rmax ** -2 - rmin ** -2)) ** -0.5
    for r in sorted(radii, reverse=True):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if rng.random() < 0.7:
            cv2.circle(img, centre, int(r), colour, -1, cv2.LINE_AA)
        else:
            axes = (int(r), max(1, int(r * rng.random())))
            cv2.ellipse(img, centre, axes, rng.random() * 180, 0, 360, colour, -1, cv2.LINE_AA)
    for _ in range(int(rng.integers(5, 40))):
        a, b = rng.integers(0, [width, height], size=(2, 2))
        cv2.line(img, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), tuple(int(v) for v in rng.integers(0, 256, 3)),
                 int(rng.integers(1, 6)), cv2.LINE_AA)
    blurred = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.5)).astype(np.float32)
    grain = rng.normal(0.0, rng.uniform(2.0, 20.0), (height, width, 1)).astype(np.float32)
    return np.clip(blurred + grain, 0, 255).astype(np.uint8)


def calibration_feeds(model: StyleModel, samples: int = CALIBRATION_SAMPLES, seed: int = 0) -> list[dict]:
    """Graph inputs for calibration: a synthetic frame and the code of another synthetic image as style."""
    rng = np.random.default_rng(seed)
    names = input_names(model)
    feeds = []
    for i in range(samples):
        with torch.inference_mode():
            style = to_tensor(dead_leaves(256, 256, rng))
            code = [t.float().contiguous().numpy() for t in model.code_tensors(model.encode_style(style))]
        h, w = CALIBRATION_SIZES[i % len(CALIBRATION_SIZES)]
        alpha = np.array(1.0 if i % 4 else 0.5, np.float32)
        feeds.append({names[0]: to_tensor(dead_leaves(h, w, rng)).numpy(), names[1]: alpha, **dict(zip(names[2:], code))})
    return feeds


def _producer(op):
    src = op.input_value(0).get_node()
    while src.get_type_name() in TRANSPARENT:
        src = src.input_value(0).get_node()
    return src


def fp32_convs(ov_model) -> list[str]:
    """Names of the convs that stay fp32: those whose input range depends on the style (see module doc)."""
    return [op.get_friendly_name() for op in ov_model.get_ordered_ops()
            if op.get_type_name() in ("Convolution", "GroupConvolution")
            and _producer(op).get_type_name() not in SAFE_PRODUCERS]


def quantize(model: StyleModel, onnx_path: Path):
    """The int8 OpenVINO model of ``onnx_path`` (an export of ``model``'s content graph)."""
    nncf = require_module("nncf", "openvino --precision int8")
    ov = require_module("openvino", "openvino")
    fp_model = ov.Core().read_model(str(onnx_path))
    keep = fp32_convs(fp_model)
    feeds = calibration_feeds(model)
    log.debug("int8: %d convs kept in fp32: %s", len(keep), keep)
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    # activation ranges from quantiles, not min/max: a few extreme activations no longer stretch the scale
    # (worst real pair 31.8 -> 34.2 dB; full bias correction or 16 samples at up to 720p changed nothing)
    ranges = nncf.AdvancedQuantizationParameters(
        activations_range_estimator_params=RangeEstimatorParametersSet.MEAN_QUANTILE)
    return nncf.quantize(
        fp_model, nncf.Dataset(feeds), preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(feeds),
        fast_bias_correction=True, advanced_parameters=ranges,
        ignored_scope=nncf.IgnoredScope(names=keep, types=list(NEVER_QUANTISED), validate=False))


def write_model_file(ov_model, path: Path) -> None:
    """One file for the cache: an uncompressed zip of the IR's model.xml and model.bin."""
    ov = require_module("openvino", "openvino")
    tmp = path.with_name(path.name + ".ir")
    tmp.mkdir(exist_ok=True)
    try:
        ov.save_model(ov_model, str(tmp / "model.xml"), compress_to_fp16=False)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            z.write(tmp / "model.xml", "model.xml")
            z.write(tmp / "model.bin", "model.bin")
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


def read_model_file(core, path: Path):
    """The OpenVINO model stored by :func:`write_model_file`."""
    ov = require_module("openvino", "openvino")
    with zipfile.ZipFile(path) as z:
        xml = z.read("model.xml").decode()
        weights = np.frombuffer(z.read("model.bin"), np.uint8)
    return core.read_model(xml, ov.Tensor(weights))


def int8_entry(model: StyleModel, weights_id: str | None, cache=None):
    """The cache entry of the int8 model for (model, weights, recipe, library versions): built once (~10-20 s)
    from the ONNX export (itself rebuilt if it fails to load), read with ``.load(read_model_file)``."""
    from engines.backends.cache import CacheEntry, EngineCache, build_progress, graph_weights_id, quiet_build

    ov = require_module("openvino", "openvino")
    cache = cache or EngineCache()
    onnx = onnx_entry(model, weights_id, "openvino", cache=cache)
    key = {
        "kind": "openvino-int8", "model": model.name, "weights": weights_id or graph_weights_id(model),
        "onnx": onnx.path.name, "recipe": INT8_RECIPE, "openvino": ov.__version__,
    }

    def build(path: Path) -> None:
        # NNCF logs every step at INFO and draws its own progress bars: keep only its errors
        with build_progress(f"calibrating int8 {model.name}"), quiet_build(("nncf",), hide_warnings=False):
            write_model_file(onnx.load(lambda onnx_path: quantize(model, onnx_path)), path)

    return CacheEntry(cache, f"{model.name}-int8", key, "zip", build)

