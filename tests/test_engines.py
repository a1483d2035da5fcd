"""Engines: every fast engine reproduces PyTorch fp32 on real weights and real images, handles any frame
size, caches its builds safely, and says clearly in one line when it cannot run here."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.backends import create_engine, engine_class, usable_engines
from engines.backends.cache import EngineCache, graph_weights_id
from engines.backends.cpu_rewrites import cpu_graph
from engines.backends.graph import example_inputs, export_program, padded_shape
from engines.errors import DeviceError
from engines.ops import psnr
from engines.stylizer import Stylizer, pad_to_multiple, to_tensor
from streamer.imageio import load_image

CPU = torch.device("cpu")
HAS_CUDA = torch.cuda.is_available()


def _available(kind: str, precision: str = "fp32", device: torch.device = CPU) -> bool:
    return engine_class(kind).unavailable_reason(device, precision) is None


FAST_CPU_ENGINES = [pytest.param(k, marks=pytest.mark.skipif(not _available(k), reason=f"{k} not installed"))
                    for k in ("onnxruntime", "openvino")]


def _frame(media: Path, name: str, height: int, width: int) -> torch.Tensor:
    from PIL import Image

    rgb = np.asarray(Image.fromarray(load_image(media / "content" / name, "content")).resize((width, height)))
    return to_tensor(rgb)


def _code(model, media: Path, name: str = "brushstrokes.jpg") -> tuple[torch.Tensor, ...]:
    stylizer = Stylizer(model, create_engine("torch", model, CPU))
    return model.code_tensors(stylizer.encode_style(load_image(media / "style" / name, "style"), 128))


@pytest.fixture(scope="session", params=["microast", "adain_r31"])
def real_model(request):
    return request.getfixturevalue(request.param)


# -- correctness on real weights --------------------------------------------------------------------
@pytest.mark.parametrize("kind", FAST_CPU_ENGINES)
def test_fast_engines_match_torch_fp32_on_real_weights(real_model, media, kind):
    """PSNR >= 45 dB against eager fp32, on a real photo and a real style, at two frame sizes in a row
    (the same engine instance: sizes change when a new video starts)."""
    model = real_model
    torch_engine = create_engine("torch", model, CPU)
    engine = create_engine(kind, model, CPU, "fp32")
    code = _code(model, media)
    alpha = torch.tensor(1.0)
    for (h, w), photo in (((96, 128), "golden_gate.jpg"), ((72, 112), "lenna.jpg")):
        image, _ = pad_to_multiple(_frame(media, photo, h, w), model.factor)
        ref = torch_engine.run(image, alpha, code)
        out = engine.run(image, alpha, code)
        assert out.shape == ref.shape and out.dtype == torch.float32
        assert psnr(out, ref) >= 45.0, f"{kind} {model.name} at {w}x{h}: {psnr(out, ref):.1f} dB"
    # alpha is an input too: a weaker style changes the output and still matches
    half = torch.tensor(0.5)
    assert psnr(engine.run(image, half, code), torch_engine.run(image, half, code)) >= 45.0
    assert psnr(engine.run(image, half, code), ref) < 40.0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_torch_stays_close(adain_r31, media, precision):
    model = adain_r31
    image, _ = pad_to_multiple(_frame(media, "golden_gate.jpg", 64, 96), model.factor)
    code, alpha = _code(model, media), torch.tensor(1.0)
    ref = create_engine("torch", model, CPU).run(image, alpha, code)
    out = create_engine("torch", model, CPU, precision).run(image, alpha, code)
    assert psnr(out, ref) >= 33.0
    # the style side stays fp32 on the CPU (VGG shares its encoder with the content side)
    assert next(model.encoder.parameters()).dtype == torch.float32


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_openvino_where_the_cpu_has_it(microast, media, precision):
    if not _available("openvino", precision):
        pytest.skip(engine_class("openvino").unavailable_reason(CPU, precision))
    image, _ = pad_to_multiple(_frame(media, "golden_gate.jpg", 64, 96), microast.factor)
    code, alpha = _code(microast, media), torch.tensor(1.0)
    ref = create_engine("torch", microast, CPU).run(image, alpha, code)
    assert psnr(create_engine("openvino", microast, CPU, precision).run(image, alpha, code), ref) >= 33.0


@pytest.mark.parametrize("kind", FAST_CPU_ENGINES)
def test_adain_relu4_1_random_weights_match(kind):
    """The relu4_1 weights are not on this machine: the engines are checked on random weights of its
    architecture (speed and graph fidelity only; the images mean nothing)."""
    from engines.models import random_weights_model

    model = random_weights_model("adain")
    example = example_inputs(model, 48, 64)
    ref = create_engine("torch", model, CPU).run(example[0], example[1], example[2:])
    out = create_engine(kind, model, CPU).run(example[0], example[1], example[2:])
    assert 0.02 < float(ref.std())  # not a constant (fully clamped) image
    assert psnr(out, ref) >= 45.0


def test_engine_used_from_a_worker_thread(microast):
    """The live and render pipelines call run() from a dedicated engine thread."""
    kind = "openvino" if _available("openvino") else "onnxruntime"
    engine = create_engine(kind, microast, CPU)
    example = example_inputs(microast, 32, 48)
    results = {}
    t = threading.Thread(target=lambda: results.setdefault("out", engine.run(example[0], example[1], example[2:])))
    t.start()
    t.join()
    ref = create_engine("torch", microast, CPU).run(example[0], example[1], example[2:])
    assert psnr(results["out"], ref) >= 45.0


# -- the graph every engine starts from ---------------------------------------------------------------
def test_cpu_rewrites_are_exact(microast, adain_r31):
    from engines.backends.cpu_rewrites import (BilinearUp2, GroupSumConv, NearestUpConv, SpaceToDepthConv,
                                               SplitDepthwiseConv)

    for runtime in ("openvino", "onnxruntime"):
        for model, size in ((microast, (36, 52)), (adain_r31, (40, 56))):
            graph = model.content_graph()
            fast = cpu_graph(graph, runtime, model.factor)
            example = example_inputs(model, *size)
            with torch.no_grad():
                assert torch.allclose(fast(*example), graph(*example), atol=2e-5), (runtime, model.name)
    assert not any(isinstance(m, (GroupSumConv, SpaceToDepthConv)) for m in microast.modules())  # model untouched
    modules = list(cpu_graph(microast.content_graph(), "openvino").modules())
    kinds = {type(m) for m in modules}
    assert {GroupSumConv, SpaceToDepthConv, SplitDepthwiseConv, BilinearUp2} <= kinds  # they did apply to MicroAST
    assert sorted(m.rows for m in modules if isinstance(m, SpaceToDepthConv)) == [2, 4]  # 3-channel last layer: 4
    assert BilinearUp2 not in {type(m) for m in cpu_graph(microast.content_graph(), "onnxruntime").modules()}
    assert NearestUpConv in {type(m) for m in cpu_graph(adain_r31.content_graph()).modules()}  # and to VGG


def test_graph_code_hash_covers_the_cpu_rewrites(monkeypatch):
    """Cache keys hash the code that decides what an export computes: the rewrites' module included."""
    import pathlib

    from engines.backends.graph import graph_code_id

    read: list[str] = []
    original = pathlib.Path.read_bytes
    monkeypatch.setattr(pathlib.Path, "read_bytes", lambda self: read.append(self.name) or original(self))
    graph_code_id.__wrapped__()
    assert {"cpu_rewrites.py", "graph.py", "ops.py", "vgg.py", "microast.py", "base.py"} <= set(read)


def test_onnx_export_uses_the_space_to_depth_operator(microast, tmp_path):
    """The rewrite's custom op must reach ONNX as SpaceToDepth (a runtime that saw it as an unknown op fails)."""
    import onnx

    from engines.backends.graph import export_onnx

    path = export_onnx(microast, tmp_path / "m.onnx", "onnxruntime")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("SpaceToDepth") == 2 and not any("space_to_depth" in op for op in ops)


def test_content_graph_exports_with_dynamic_height_and_width(microast):
    """What TensorRT compiles: one torch.export program valid for any multiple of the model's factor."""
    program = export_program(microast)
    module = program.module()
    graph = microast.content_graph()
    for h, w in ((32, 48), (44, 60)):
        example = example_inputs(microast, h, w)
        with torch.no_grad():
            assert torch.allclose(module(*example), graph(*example), atol=1e-5)
    image = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == "image")
    h, w = image.meta["val"].shape[2:]
    assert isinstance(h, torch.SymInt) and isinstance(w, torch.SymInt)  # symbolic, not baked in


def test_padded_shape_matches_the_stylizer(microast, adain_r31):
    for model in (microast, adain_r31):
        for h, w in ((360, 640), (101, 37), (5, 5)):
            padded, _ = pad_to_multiple(torch.zeros(1, 3, h, w), model.factor)
            assert padded_shape(model, h, w) == tuple(padded.shape[-2:])


# -- caches -------------------------------------------------------------------------------------------
def test_engine_cache_hits_misses_and_rejects_foreign_entries(tmp_path):
    cache = EngineCache(tmp_path)
    key = {"model": "microast", "weights": "abc", "precision": "fp16", "gpu": "RTX 4090", "tensorrt": "10.3"}
    built = []

    def write(p: Path) -> None:
        built.append(p)
        p.write_bytes(b"engine-bytes")

    first = cache.get_or_build("m", key, "engine", write)
    assert cache.get_or_build("m", key, "engine", write) == first and len(built) == 1  # hit: no rebuild
    for field, other in (("gpu", "A100"), ("precision", "fp32"), ("tensorrt", "10.4"), ("weights", "abd")):
        assert cache.lookup("m", {**key, field: other}, "engine") is None  # any change is a miss
    # an entry whose recorded key disagrees (another machine's file under this name) is removed, not loaded
    sidecar = first.with_name(first.name + ".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "gpu": "someone else's GPU"}))
    assert cache.lookup("m", key, "engine") is None and not first.exists()
    cache.get_or_build("m", key, "engine", write)
    assert len(built) == 2 and first.read_bytes() == b"engine-bytes"
    # no temporary files are left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, sidecar.name])


def test_failed_build_leaves_no_entry(tmp_path):
    cache = EngineCache(tmp_path)

    def broken(p: Path) -> None:
        p.write_bytes(b"half")
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError):
        cache.store("m", {"a": 1}, "engine", broken)
    assert list(tmp_path.iterdir()) == []


def test_a_cache_entry_that_fails_to_load_is_removed_and_rebuilt_once(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    built = []

    def write(p: Path) -> None:
        built.append(p.read_bytes())
        p.write_bytes(b"good")

    def read(p: Path) -> str:
        data = p.read_bytes()
        if data != b"good":
            raise RuntimeError("Exception from src/core.cpp:84:\nCheck failed\nModel can't be parsed\n")
        return data.decode()

    assert cache.load("m", {"a": 1}, "onnx", write, read) == "good" and len(built) == 1
    entry = cache.path_for("m", {"a": 1}, "onnx")
    entry.write_bytes(b"go")  # truncated on disk
    with caplog.at_level("WARNING", logger="engines.backends.cache"):
        assert cache.load("m", {"a": 1}, "onnx", write, read) == "good"
    assert len(built) == 2 and entry.read_bytes() == b"good"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning == f"engine cache entry {entry.name} could not be loaded (Model can't be parsed); removed it, rebuilding"
    # rebuilt once, not forever: a build whose output cannot load either is an error, raised
    with pytest.raises(RuntimeError):
        cache.load("m", {"b": 2}, "onnx", lambda p: p.write_bytes(b"bad"), read)


@pytest.mark.parametrize("kind", FAST_CPU_ENGINES)
def test_a_truncated_onnx_export_is_rebuilt_not_fatal(kind, microast, media, monkeypatch, caplog):
    """What bricked the engine: a truncated export made every later run fail with a multi-line internal error."""
    import engines.backends.graph as graph_mod

    image, _ = pad_to_multiple(_frame(media, "golden_gate.jpg", 64, 96), microast.factor)
    code, alpha = _code(microast, media), torch.tensor(1.0)
    first = create_engine(kind, microast, CPU, weights_id="real-microast")
    want = first.run(image, alpha, code)
    good = first.path.read_bytes()
    first.path.write_bytes(good[:len(good) // 3])
    exports = []

    def export_again(model, path, runtime):  # what the real export writes, without its 15 s
        exports.append(path)
        path.write_bytes(good)

    monkeypatch.setattr(graph_mod, "export_onnx", export_again)
    with caplog.at_level("WARNING"):
        again = create_engine(kind, microast, CPU, weights_id="real-microast", shape_hint=(64, 96))
    assert len(exports) == 1 and again.path.read_bytes() == good
    assert any(r.levelname == "WARNING" and "could not be loaded" in r.getMessage() for r in caplog.records)
    assert psnr(again.run(image, alpha, code), want) == float("inf")


def test_onnx_export_is_cached_across_engines(microast, monkeypatch):
    import engines.backends.graph as graph_mod

    if not _available("onnxruntime"):
        pytest.skip("onnxruntime not installed")
    create_engine("onnxruntime", microast, CPU, weights_id="real-microast")  # builds or reuses
    monkeypatch.setattr(graph_mod, "export_onnx", lambda *a, **k: pytest.fail("exported again"))
    create_engine("onnxruntime", microast, CPU, weights_id="real-microast")


def test_weights_id_tracks_the_weights(microast):
    from engines.models.microast import MicroAST

    torch.manual_seed(1)
    a, b = MicroAST(), MicroAST()
    assert graph_weights_id(a) != graph_weights_id(b)
    assert graph_weights_id(microast) == graph_weights_id(microast)


# -- TensorRT: everything short of the GPU build -------------------------------------------------------
def test_tensorrt_cache_key_covers_everything_an_engine_depends_on():
    from engines.backends.tensorrt_engine import Profile, tensorrt_cache_key

    base = dict(model="microast", weights_id="w1", profile=Profile((180, 320), (360, 640), (360, 640)),
                precision="fp16", gpu="NVIDIA GeForce RTX 4090", capability="8.9",
                versions={"tensorrt": "10.3.0", "torch_tensorrt": "2.5.0", "torch": "2.5.1"})
    cache = EngineCache(Path("/nonexistent"))
    paths = {cache.path_for("x", tensorrt_cache_key(**base), "engine")}
    changes = dict(model="adain", weights_id="w2", profile=Profile((360, 640), (720, 1280), (720, 1280)),
                   precision="fp32", gpu="NVIDIA A100", capability="8.0",
                   versions={"tensorrt": "10.4.0", "torch_tensorrt": "2.5.0", "torch": "2.5.1"})
    for field, value in changes.items():
        paths.add(cache.path_for("x", tensorrt_cache_key(**{**base, field: value}), "engine"))
    assert len(paths) == 1 + len(changes)


def test_tensorrt_profile_spans_half_to_full_capture_size(microast, adain_r31):
    from engines.backends.tensorrt_engine import Profile

    p = Profile.around(microast, 360, 640)
    assert (p.min, p.opt, p.max) == ((180, 320), (360, 640), (360, 640))
    assert p.contains(360, 640) and p.contains(240, 480) and not p.contains(720, 1280)
    q = Profile.around(adain_r31, 25, 30)  # tiny and odd sizes: still multiples of the factor, >= min side
    assert all(v % adain_r31.factor == 0 and v >= 16 for v in (*q.min, *q.opt, *q.max))


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_tensorrt_without_cuda_is_one_clear_line(microast):
    for device in (CPU, torch.device("cuda")):
        with pytest.raises(DeviceError) as err:
            create_engine("tensorrt", microast, device, "fp16")
        message = str(err.value)
        assert "\n" not in message and "tensorrt" in message.lower()
        assert err.value.exit_code == 3


def test_cli_reports_a_missing_gpu_in_one_line(capsys):
    from streamer.cli import main

    if HAS_CUDA:
        pytest.skip("this machine has CUDA")
    assert main(["bench", "--device", "cuda", "--quick"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("streamer: error:") and "cuda" in err[0].lower()


@pytest.mark.skipif(not (HAS_CUDA and _available("tensorrt", "fp16", torch.device("cuda"))),
                    reason="needs an NVIDIA GPU with CUDA and torch-tensorrt")
def test_tensorrt_fp16_matches_torch(microast, media, tmp_path):  # pragma: no cover - GPU machines only
    from engines.backends.tensorrt_engine import TensorRTEngine

    gpu = torch.device("cuda")
    engine = TensorRTEngine(microast, gpu, "fp16", shape_hint=(96, 128), cache=EngineCache(tmp_path))
    image, _ = pad_to_multiple(_frame(media, "golden_gate.jpg", 96, 128), microast.factor)
    code, alpha = _code(microast, media), torch.tensor(1.0)
    ref = create_engine("torch", microast, CPU).run(image, alpha, code)
    assert psnr(engine.run(image, alpha, code).cpu(), ref) >= 33.0
    # a second engine loads the cached plan instead of building
    again = TensorRTEngine(microast, gpu, "fp16", shape_hint=(96, 128), cache=EngineCache(tmp_path))
    assert psnr(again.run(image, alpha, code).cpu(), ref) >= 33.0


# -- auto ---------------------------------------------------------------------------------------------
def test_auto_picks_the_measured_fastest_available_and_says_so(microast, caplog, monkeypatch):
    from engines.backends import CPU_PREFERENCE

    kind, why = usable_engines("microast", CPU, "fp32")[0]
    expected = next(k for k in CPU_PREFERENCE if _available(k))
    assert kind == expected and why
    # without the first choice, the next one is taken and the reason is given
    first = CPU_PREFERENCE[0]
    monkeypatch.setattr(engine_class(first), "unavailable_reason", classmethod(lambda cls, d, p: "not installed"))
    kind2, why2 = usable_engines("microast", CPU, "fp32")[0]
    assert kind2 != first and "not installed" in why2
    with caplog.at_level("INFO", logger="engines.backends"):
        engine = create_engine("auto", microast, CPU)
    assert engine.name == kind2 and any("engine:" in r.message for r in caplog.records)


def test_engines_come_from_one_registry_and_load_only_when_chosen(microast):
    """--engine's choices, the auto orders and the classes are one registry; an unknown name is the one-line
    usage error; choosing torch imports no other engine (nor its library)."""
    import subprocess
    import sys

    from engines.backends import CPU_PREFERENCE, ENGINE_NAMES, ENGINES, GPU_PREFERENCE
    from engines.errors import InputError

    assert ENGINE_NAMES == ("auto", "torch", "torch-cuda", "tensorrt", "onnxruntime", "openvino")
    assert set(GPU_PREFERENCE) | set(CPU_PREFERENCE) <= set(ENGINES)
    for kind in ENGINES:
        assert engine_class(kind).name == kind
    with pytest.raises(InputError) as err:
        engine_class("cuda")
    assert str(err.value) == "unknown engine 'cuda': choose one of auto, torch, torch-cuda, tensorrt, onnxruntime, openvino"
    with pytest.raises(InputError, match="unknown engine 'nope'"):
        create_engine("nope", microast, CPU)
    # every engine is built through one call: torch takes (and ignores) what the others use
    assert create_engine("torch", microast, CPU, weights_id="w", shape_hint=(64, 64)).name == "torch"
    code = ("import sys; from engines.backends import engine_class; engine_class('torch'); "
            "print(sorted(m for m in sys.modules if m.endswith('_engine') or m.split('.')[0] in "
            "('openvino', 'onnxruntime', 'tensorrt', 'torch_tensorrt')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.strip() == "['engines.backends.torch_engine']", done.stdout + done.stderr


def test_auto_with_bf16_falls_back_to_an_engine_that_runs_it(microast):
    kind, _ = usable_engines("microast", CPU, "bf16")[0]
    assert engine_class(kind).unavailable_reason(CPU, "bf16") is None


def test_a_damaged_style_code_entry_is_removed_and_computed_again_once(tmp_path, caplog):
    from engines.style_cache import StyleCache

    image = tmp_path / "style.png"
    image.write_bytes(b"any bytes: the key is their hash")
    cache = StyleCache("microast", "w1", tmp_path / "styles")
    computed = []

    def compute():
        computed.append(1)
        return {"mean": torch.ones(1, 8, 1, 1)}

    assert torch.equal(cache.get_or_compute(image, 256, compute)["mean"], torch.ones(1, 8, 1, 1))
    assert torch.equal(cache.get_or_compute(image, 256, compute)["mean"], torch.ones(1, 8, 1, 1))
    assert len(computed) == 1  # a hit
    entry = cache.path_for(image, 256)
    entry.write_bytes(entry.read_bytes()[:100])  # truncated on disk
    with caplog.at_level("WARNING", logger="engines.style_cache"):
        assert torch.equal(cache.get_or_compute(image, 256, compute)["mean"], torch.ones(1, 8, 1, 1))
    assert len(computed) == 2
    assert [r.getMessage().split(" (")[0] for r in caplog.records if r.levelname == "WARNING"] == \
        [f"style cache entry {entry.name} could not be loaded"]
    cache.get_or_compute(image, 256, compute)
    assert len(computed) == 2  # the new entry is good again
