"""NVIDIA GPU paths, proved on the CPU: the graph TensorRT and the torch CUDA engine get (floor-mode
pools, half precision), dtype binding from an engine's description, the build check, ``auto``'s
fallback when a build fails, the default precision, synchronised timing, and the device-side frame
functions (bit-for-bit against the CPU path)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engines.backends import auto_order, create_engine
from engines.backends.cache import EngineCache
from engines.backends.graph import gpu_graph
from engines.errors import DeviceError
from engines.ops import psnr
from engines.stylizer import (Stylizer, frames_to_input, output_to_frames, pad_to_multiple, resize_short_side,
                              resize_tensor, to_tensor, to_uint8)
from streamer.imageio import load_image

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


def _rgb(media: Path, name: str, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(load_image(media / "content" / name, "content")).resize((width, height)))


def _code(model, media: Path) -> dict:
    stylizer = Stylizer(model, create_engine("torch", model, CPU))
    return stylizer.encode_style(load_image(media / "style" / "brushstrokes.jpg", "style"), 128)


@pytest.fixture(scope="module")
def adain_random():
    from engines.models.vgg import AdaIN

    torch.manual_seed(0)
    return AdaIN().eval().requires_grad_(False)


# -- 1. ceil_mode pools -----------------------------------------------------------------------------
def test_gpu_graph_has_no_ceil_mode_pool_and_equals_the_model_on_padded_frames(adain_random, adain_r31, media):
    for model in (adain_random, adain_r31):
        pools = [m for m in model.content_graph().modules() if isinstance(m, nn.MaxPool2d)]
        assert pools and all(p.ceil_mode for p in pools)  # what torch-tensorrt cannot convert
        graph = gpu_graph(model)
        floor = [m for m in graph.modules() if isinstance(m, nn.MaxPool2d)]
        assert len(floor) == len(pools) and not any(p.ceil_mode for p in floor)
        assert all(p.ceil_mode for p in pools)  # the model itself is untouched
        code = model.code_tensors(_code(model, media))
        for h, w in ((61, 93), (40, 56)):  # odd sizes too: pad_to_multiple makes every pool input even
            image, _ = pad_to_multiple(to_tensor(_rgb(media, "golden_gate.jpg", h, w)), model.factor)
            with torch.inference_mode():
                ref = model.content_graph()(image, torch.tensor(0.8), *code)
                out = graph(image, torch.tensor(0.8), *code)
            assert torch.equal(out, ref), (model.name, h, w)


# -- 2. half precision graph --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,bar", [(torch.float16, 40.0), (torch.bfloat16, 30.0)])
def test_half_graph_is_low_precision_inside_and_close_to_fp32(real_model_name, request, media, dtype, bar):
    model = request.getfixturevalue(real_model_name)
    graph = gpu_graph(model, dtype)
    assert {p.dtype for p in graph.parameters()} == {dtype}
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda m, i, o: seen.add(o.dtype)) for m in graph.modules()
             if isinstance(m, nn.Conv2d)]
    code = model.code_tensors(_code(model, media))
    image, _ = pad_to_multiple(to_tensor(_rgb(media, "golden_gate.jpg", 96, 128)), model.factor)
    with torch.inference_mode():
        ref = gpu_graph(model)(image, torch.tensor(1.0), *code)
        out = graph(image.to(dtype), torch.tensor(1.0), *code)
    for h in hooks:
        h.remove()
    assert seen == {dtype}  # every conv ran in the low dtype: activations too, not just weights
    assert out.dtype == torch.float32 and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert psnr(out, ref) >= bar
    assert float(out.std()) > 0.05  # a real stylized image, not a flat one


@pytest.fixture(params=["microast", "adain_r31"])
def real_model_name(request) -> str:
    return request.param


def test_mean_std_stays_finite_on_large_fp16_features():
    from engines.ops import adain, mean_std

    torch.manual_seed(0)
    feat32 = torch.randn(1, 4, 16, 16) * 400.0  # relu4_1-sized deviations: their squares overflow fp16
    feat16 = feat32.half()
    mean, std = mean_std(feat16)
    ref_mean, ref_std = mean_std(feat16.float())
    assert mean.dtype == torch.float32 and torch.isfinite(std).all()
    assert torch.allclose(std, ref_std, rtol=1e-5) and torch.allclose(mean, ref_mean, rtol=1e-5, atol=1e-3)
    out = adain(feat16, torch.zeros(1, 4, 1, 1), torch.ones(1, 4, 1, 1))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert abs(float(out.float().std()) - 1.0) < 0.01


def test_fp16_eager_torch_engine_matches_fp32_on_real_weights(microast, media):
    code = microast.code_tensors(_code(microast, media))
    image, _ = pad_to_multiple(to_tensor(_rgb(media, "golden_gate.jpg", 96, 128)), microast.factor)
    ref = create_engine("torch", microast, CPU).run(image, torch.tensor(1.0), code)
    out = create_engine("torch", microast, CPU, "fp16").run(image, torch.tensor(1.0), code)
    assert torch.isfinite(out).all() and psnr(out, ref) >= 35.0


# -- TensorRT: binding and the build, behind seams --------------------------------------------------
class _FakeDtype:
    def __init__(self, name: str) -> None:
        self.name = name


class _FakeTrtEngine:
    """What ICudaEngine reports: I/O names, modes and dtypes (the image in fp16)."""

    def __init__(self, io: list[tuple[str, str, str]]) -> None:
        self.io = io
        self.num_io_tensors = len(io)

    def get_tensor_name(self, i: int) -> str:
        return self.io[i][0]

    def get_tensor_mode(self, name: str) -> str:
        return next(m for n, m, _ in self.io if n == name)

    def get_tensor_dtype(self, name: str) -> _FakeDtype:
        return _FakeDtype(next(d for n, _, d in self.io if n == name))


_FAKE_TRT = types.SimpleNamespace(TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"))


def test_engine_inputs_are_bound_in_the_dtype_the_engine_reports():
    from engines.backends.tensorrt_engine import bind_inputs, describe_engine, output_spec

    engine = _FakeTrtEngine([("image", "in", "HALF"), ("alpha", "in", "FLOAT"), ("mean", "in", "FLOAT"),
                             ("stylized", "out", "FLOAT")])
    specs = describe_engine(engine, _FAKE_TRT)
    image = torch.rand(1, 3, 8, 8)
    bound = bind_inputs(specs, [image, torch.tensor(1.0), torch.rand(1, 4, 1, 1)], CPU)
    assert [(n, t.dtype) for n, t in bound] == [("image", torch.float16), ("alpha", torch.float32),
                                                ("mean", torch.float32)]
    assert torch.equal(bound[0][1], image.half()) and all(t.is_contiguous() for _, t in bound)
    assert output_spec(specs).name == "stylized" and output_spec(specs).dtype == torch.float32
    with pytest.raises(RuntimeError, match="takes 3 inputs"):
        bind_inputs(specs, [image], CPU)
    with pytest.raises(RuntimeError, match="FP8"):
        describe_engine(_FakeTrtEngine([("image", "in", "FP8")]), _FAKE_TRT)


def test_the_precision_check_reads_the_graphs_convolutions_and_the_inspector_not_the_plan_size(monkeypatch):
    from engines.backends import tensorrt_engine as trt_mod
    from engines.backends.tensorrt_engine import layer_precisions, precision_mismatch

    fp16 = {"float16": 20}
    assert precision_mismatch("fp16", fp16) is None
    problem = precision_mismatch("fp16", {"float16": 18, "float32": 2})
    assert problem and "2 of 20 convolutions in float32" in problem and "\n" not in problem
    assert precision_mismatch("bf16", fp16) and precision_mismatch("fp16", {})  # fp16 is not bf16; nothing to go by
    assert precision_mismatch("fp32", {"float32": 20}) is None
    # a stand-in engine inspector, as TensorRT gives it with detailed verbosity: most layers must be low too
    info = {"Layers": [{"Name": f"conv{i}", "Outputs": [{"Format/Datatype": "Row major linear FP32"
                                                        if i < 8 else "Channel major FP16 format (Half)"}]}
                       for i in range(10)]}
    info["Layers"][0]["Outputs"][0]["Format/Datatype"] = "Float"
    inspector = types.SimpleNamespace(get_engine_information=lambda fmt: json.dumps(info) if fmt == "json" else "")
    runner = object.__new__(trt_mod._Runner)
    runner.engine = types.SimpleNamespace(create_engine_inspector=lambda: inspector)
    monkeypatch.setitem(sys.modules, "tensorrt",
                        types.SimpleNamespace(LayerInformationFormat=types.SimpleNamespace(JSON="json")))
    assert runner.layers() == layer_precisions(info) == {"Float": 1, "Half": 2}
    assert "layers" in precision_mismatch("fp16", fp16, {"Float": 8, "Half": 2})
    assert precision_mismatch("fp16", fp16, {"Float": 1, "Half": 9}) is None
    assert layer_precisions({"Layers": ["conv1", "conv2"]}) == {}  # names only (2.13's default): nothing to count


def _fake_torch_tensorrt(monkeypatch, convert) -> types.SimpleNamespace:
    fake = types.SimpleNamespace(
        Input=lambda **kw: kw, dynamo=types.SimpleNamespace(convert_exported_program_to_serialized_trt_engine=convert))
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake)
    return fake


def _bare_trt_engine(model, precision: str = "fp16"):
    """A TensorRTEngine without TensorRT or a GPU: model, device and precision, the inspector giving names only
    (torch-tensorrt 2.13's default verbosity)."""
    from engines.backends import tensorrt_engine as trt_mod

    engine = object.__new__(trt_mod.TensorRTEngine)
    engine.model, engine.device, engine.precision = model, CPU, precision
    engine._layers = lambda data: {}
    return engine


def test_tensorrt_build_exports_a_half_graph_without_ceil_pools_and_no_precision_flags(adain_r31, monkeypatch,
                                                                                    tmp_path):
    """The build as torch-tensorrt 2.13 would see it, with a stand-in for torch_tensorrt."""
    from engines.backends import tensorrt_engine as trt_mod

    seen: dict = {}

    def convert(program, arg_inputs=None, **kwargs):
        seen["program"], seen["inputs"], seen["kwargs"] = program, arg_inputs, kwargs
        return b"\0" * (2 * sum(p.numel() for p in adain_r31.parameters()))  # an fp16-sized plan

    _fake_torch_tensorrt(monkeypatch, convert)
    engine = _bare_trt_engine(adain_r31)
    profile = trt_mod.Profile.around(adain_r31, 64, 96, batch=4)
    engine._build(profile, tmp_path / "plan.engine")
    assert (tmp_path / "plan.engine").stat().st_size > 0
    assert not {"enabled_precisions", "use_explicit_typing", "enable_autocast"} & set(seen["kwargs"])
    assert seen["inputs"][0]["dtype"] == torch.float16 and seen["inputs"][0]["min_shape"][0] == 1
    assert seen["inputs"][0]["max_shape"][0] == 4  # a dynamic batch for offline renders
    graph_text = str(seen["program"].graph_module.code)
    assert "max_pool2d" in graph_text and "True" not in str(
        [n.args for n in seen["program"].graph.nodes if "max_pool" in str(n.target)])
    placeholders = [n for n in seen["program"].graph.nodes if n.op == "placeholder" and n.name == "image"]
    assert placeholders and placeholders[0].meta["val"].dtype == torch.float16
    assert set(trt_mod.convolution_dtypes(seen["program"])) == {"float16"}
    # a graph whose convolutions came out fp32 is refused before the conversion, so auto takes the next engine

    class FloatInside(nn.Module):  # a broken recipe: takes the fp16 image, runs fp32 convolutions
        def __init__(self, graph: nn.Module) -> None:
            super().__init__()
            self.graph = graph

        def forward(self, image, alpha, *code):
            return self.graph(image.float(), alpha, *code)

    monkeypatch.setattr(trt_mod, "gpu_graph", lambda model, dtype=torch.float32: FloatInside(gpu_graph(model)))
    seen.clear()
    with pytest.raises(DeviceError, match="convolutions in float32, not float16"):
        engine._build(trt_mod.Profile.around(adain_r31, 64, 96), tmp_path / "plan2.engine")
    assert not (tmp_path / "plan2.engine").exists() and not seen


def test_a_correct_fp16_adain_plan_bigger_than_3_bytes_a_weight_is_accepted(adain_random, monkeypatch, tmp_path):
    """adain's 7 M weights in fp16 are 14 MB; kernels and tactics can take the plan past 21 MB, which the old
    size rule called fp32."""
    from engines.backends import tensorrt_engine as trt_mod

    weights = sum(p.numel() for p in gpu_graph(adain_random).parameters())
    assert weights > 6_000_000
    _fake_torch_tensorrt(monkeypatch, lambda program, **kw: b"\0" * (7 * weights // 2))
    _bare_trt_engine(adain_random)._build(trt_mod.Profile.around(adain_random, 64, 64), tmp_path / "plan.engine")
    assert (tmp_path / "plan.engine").stat().st_size == 7 * weights // 2


def test_one_tensorrt_profile_serves_prepare_single_frames_and_full_batches(microast, monkeypatch):
    """prepare (one frame) and a render's batches of max_batch used to build two engines, minutes each."""
    from engines.backends.graph import padded_shape

    built: list = []

    class Cache:
        def load(self, stem, key, ext, build, open_):
            built.append(key)
            return types.SimpleNamespace(name="runner")

    engine = _bare_trt_engine(microast)
    engine.cache, engine._runners, engine._lock = Cache(), {}, threading.Lock()
    engine.cache_key = lambda profile: {"profile": profile}
    engine.prepare(360, 640)
    h, w = padded_shape(microast, 360, 640)
    runners = {id(engine._runner(h, w, n)) for n in (engine.max_batch, 1, 3)}
    assert len(built) == 1 and len(runners) == 1
    profile = built[0]["profile"]
    assert profile.image_shapes() == ((1, 3, *profile.min), (8, 3, h, w), (8, 3, h, w))


def test_tensorrt_inputs_stay_alive_until_the_engine_is_queued_and_after(monkeypatch):
    """The fp16 copy of the image that bind_inputs makes must not be freed (and its memory handed to the
    output) before execute_async_v3 queues the engine that reads it."""
    import weakref

    from engines.backends import tensorrt_engine as trt_mod

    made: list = []
    real_bind = trt_mod.bind_inputs

    def bind(specs, tensors, device):
        bound = real_bind(specs, tensors, device)
        made.extend(weakref.ref(t) for _, t in bound)
        return bound

    class Context:
        """A stand-in execution context: at queue time, every bound input must still be alive."""

        def __init__(self) -> None:
            self.addresses: dict[str, int] = {}
            self.alive_at_execute: list[bool] = []

        def set_input_shape(self, name, shape):
            if name == "image":
                self.shape = shape

        def set_tensor_address(self, name, address):
            self.addresses[name] = address

        def get_tensor_shape(self, name):
            return self.shape

        def execute_async_v3(self, stream):
            self.alive_at_execute = [r() is not None for r in made]
            return True

    monkeypatch.setattr(trt_mod, "bind_inputs", bind)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: types.SimpleNamespace(cuda_stream=0))
    runner = object.__new__(trt_mod._Runner)
    runner.context, runner.device = Context(), CPU
    runner.specs = trt_mod.describe_engine(_FakeTrtEngine([("image", "in", "HALF"), ("alpha", "in", "FLOAT"),
                                                           ("mean", "in", "FLOAT"), ("stylized", "out", "HALF")]),
                                           _FAKE_TRT)
    runner.output = trt_mod.output_spec(runner.specs)
    out = runner([torch.rand(1, 3, 64, 64), torch.tensor(1.0), torch.rand(1, 4, 1, 1)])
    assert len(made) == 3 and runner.context.alive_at_execute == [True, True, True]
    assert all(r() is not None for r in made)  # kept after the call too (until the next one is queued)
    inputs = {a for n, a in runner.context.addresses.items() if n != "stylized"}
    assert runner.context.addresses["stylized"] == out.data_ptr() and out.data_ptr() not in inputs


# -- 5. auto falls back when a build fails ------------------------------------------------------------
def test_auto_says_in_one_line_why_a_build_failed_and_uses_the_next_engine(microast, monkeypatch, caplog):
    import engines.backends as backends
    from engines.backends.torch_engine import TorchEngine

    class Broken(TorchEngine):
        name = "broken"

        def __init__(self, *a, **kw) -> None:
            raise RuntimeError("ceil_mode is not yet supported!\n  File ... (a long converter traceback)")

    real = backends.engine_class
    monkeypatch.setattr(backends, "engine_class", lambda kind: Broken if kind == "broken" else real(kind))
    monkeypatch.setattr(backends, "auto_order", lambda name, device: ("broken", "torch"))
    with caplog.at_level(logging.INFO, logger="engines.backends"):
        engine = create_engine("auto", microast, CPU)
    assert engine.name == "torch"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "broken failed to build" in warnings[0] and "ceil_mode" in warnings[0] and "using torch" in warnings[0]
    # asked for by name, a failing engine is an error, not a silent substitute
    with pytest.raises(RuntimeError):
        create_engine("broken", microast, CPU)


def test_on_nvidia_auto_tries_tensorrt_then_the_torch_cuda_engine():
    assert auto_order("adain", torch.device("cuda"))[:2] == ("tensorrt", "torch-cuda")


# -- 4. defaults and timing ---------------------------------------------------------------------------
def test_precision_auto_is_fp16_on_cuda_and_fp32_on_cpu():
    import argparse

    from streamer.options import add_model_options, resolve_precision

    p = argparse.ArgumentParser()
    add_model_options(p)
    args = p.parse_args([])
    assert args.precision == "auto"
    assert resolve_precision(args.precision, torch.device("cuda")) == "fp16"
    assert resolve_precision(args.precision, CPU) == "fp32"
    assert resolve_precision("bf16", torch.device("cuda")) == "bf16"


def test_bench_waits_for_the_gpu_before_stopping_the_clock(monkeypatch):
    from streamer import bench

    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))
    gpu_result = types.SimpleNamespace(is_cuda=True, device="cuda:0")
    fn = bench.synced_call(lambda: calls.append("run") or gpu_result)
    bench.time_side_by_side({"gpu": fn}, repeats=3, warmup=0, budget_s=10.0)
    assert calls == ["run", "sync"] * 3
    cpu_calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: cpu_calls.append("sync"))
    bench.synced_call(lambda: torch.zeros(1))()
    assert cpu_calls == []


# -- the torch CUDA engine's non-CUDA logic -----------------------------------------------------------
def test_torch_cuda_engine_options_keys_and_checks():
    from engines.backends.torch_cuda_engine import (TorchCudaEngine, check_build, compile_options,
                                                    torch_cuda_cache_key)

    assert compile_options("cuda", True)["mode"] == "reduce-overhead"  # CUDA graphs at a fixed shape
    assert compile_options("cuda", False)["mode"] == "default" and compile_options("cuda", False)["dynamic"]
    assert compile_options("cuda", True, have_triton=False) is None and compile_options("cpu") is None
    base = dict(model="adain", weights_id="w", shape=(1, 512, 512), precision="fp16", gpu="NVIDIA H200",
                capability="9.0", options=compile_options("cuda"), versions={"torch": "2.11", "triton": "3.5"})
    cache = EngineCache(Path("/nonexistent"))
    paths = {cache.path_for("x", torch_cuda_cache_key(**base), "json")}
    for field, value in (("precision", "bf16"), ("shape", (2, 512, 512)), ("gpu", "A100"), ("weights_id", "v"),
                         ("versions", {"torch": "2.11", "triton": "3.6"}), ("options", None)):
        paths.add(cache.path_for("x", torch_cuda_cache_key(**{**base, field: value}), "json"))
    assert len(paths) == 7
    ref = torch.rand(1, 3, 16, 16)
    assert check_build("fp16", ref + 1e-3, ref) is None
    assert "dB" in check_build("fp16", ref.flip(-1), ref)
    assert "non-finite" in check_build("bf16", ref * float("nan"), ref)
    reason = TorchCudaEngine.unavailable_reason(CPU, "fp16")
    assert reason and "\n" not in reason and "cuda" in reason


def test_torch_cuda_engine_checks_its_first_build_and_caches_the_verdict(cpu_torch_cuda, microast, monkeypatch,
                                                                       tmp_path, media):
    """Its run and check logic on CPU tensors (compile off): the first engine checks against fp32 and
    records it; a second finds the record; a broken build is refused."""
    tc = cpu_torch_cuda
    cache = EngineCache(tmp_path)
    engine = tc.TorchCudaEngine(microast, CPU, "bf16", shape_hint=(60, 80), cache=cache, compile=False)
    records = list(tmp_path.glob("*.json.json")) or list(tmp_path.glob("*.json"))
    assert any(json.loads(p.read_text()).get("psnr_db", 0) >= 28 for p in tmp_path.glob("*.json")
               if "psnr_db" in p.read_text())
    assert records
    code = microast.code_tensors(_code(microast, media))
    image, _ = pad_to_multiple(to_tensor(_rgb(media, "golden_gate.jpg", 60, 80)), microast.factor)
    ref = create_engine("torch", microast, CPU).run(image, torch.tensor(1.0), code)
    assert psnr(engine.run(image, torch.tensor(1.0), code), ref) >= 30.0
    calls = []
    monkeypatch.setattr(tc, "check_build", lambda *a: calls.append(a) or None)
    tc.TorchCudaEngine(microast, CPU, "bf16", shape_hint=(60, 80), cache=cache, compile=False)
    assert calls == []  # verdict found in the cache: no second check
    monkeypatch.setattr(tc, "check_build", lambda *a: "the compiled bf16 graph is 3.0 dB from fp32 (needs 28)")
    with pytest.raises(DeviceError, match="dB from fp32"):
        tc.TorchCudaEngine(microast, CPU, "bf16", shape_hint=(64, 64), cache=cache, compile=False)


@pytest.fixture
def cpu_torch_cuda(monkeypatch):
    """engines.backends.torch_cuda_engine with its GPU checks stood in: the engine runs on CPU tensors."""
    from engines.backends import torch_cuda_engine as tc

    monkeypatch.setattr(tc.TorchCudaEngine, "unavailable_reason", classmethod(lambda cls, d, p: None))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    return tc


class CountingBackend:
    """A torch.compile backend that runs the traced graph as it is and counts compilations."""

    def __init__(self) -> None:
        self.compiles = 0

    def __call__(self, graph_module, example_inputs):
        self.compiles += 1
        return graph_module.forward


def _inputs(model, code, n: int, h: int, w: int):
    torch.manual_seed(n * 1000 + h + w)
    return torch.rand(n, 3, h, w), torch.tensor(1.0), code


def test_torch_cuda_engine_runs_every_call_prepare_included_on_one_thread_of_its_own(
        cpu_torch_cuda, microast, monkeypatch, tmp_path, media):
    """CUDA graphs belong to the thread that recorded them (torch < 2.13): the engine is warmed in the main
    thread and then called from the video pipeline's or live's own thread."""
    tc = cpu_torch_cuda
    threads: list[int] = []
    real_call = tc.TorchCudaEngine._call
    monkeypatch.setattr(tc.TorchCudaEngine, "_call",
                        lambda self, *a: threads.append(threading.get_ident()) or real_call(self, *a))
    backend = CountingBackend()
    engine = tc.TorchCudaEngine(microast, CPU, "fp32", shape_hint=(60, 80), cache=EngineCache(tmp_path),
                                options={"backend": backend, "fullgraph": True, "dynamic": False})
    code = microast.code_tensors(_code(microast, media))
    args = _inputs(microast, code, 1, 60, 80)
    here = engine.run(*args)
    there: list = []
    worker = threading.Thread(target=lambda: there.append(engine.run(*args)))
    worker.start()
    worker.join()
    engine.prepare(48, 64)
    assert backend.compiles == 2  # the shape hint's and prepare's: the other thread's call compiled nothing
    assert len(threads) == 4 and len(set(threads)) == 1  # two builds (their check runs), two runs
    assert threads[0] not in {threading.get_ident(), worker.ident}
    assert torch.equal(there[0], here)
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.run(*args)


def test_owner_thread_gets_the_cudagraph_state_torch_2_11_only_gives_the_importing_thread(monkeypatch):
    """pytorch issue 123177: before 2.13 inductor's CUDA-graph bookkeeping asserts in any other thread."""
    from torch._inductor import cudagraph_trees as trees

    from engines.backends.owner import OwnerThread
    from engines.backends.torch_cuda_engine import adopt_cudagraph_state, release_cudagraphs

    def get_obj_before_2_13(local, attr_name):  # torch 2.11's cudagraph_trees.get_obj
        if hasattr(local, attr_name):
            return getattr(local, attr_name)
        assert torch._C._is_key_in_tls(attr_name)
        return torch._C._get_obj_in_tls(attr_name)

    monkeypatch.setattr(trees, "get_obj", get_obj_before_2_13)
    monkeypatch.delattr(trees, "_initialize_tls", raising=False)
    failures: list = []

    def plain() -> None:
        try:
            trees.get_container(0)
        except AssertionError as exc:
            failures.append(exc)

    thread = threading.Thread(target=plain)
    thread.start()
    thread.join()
    assert len(failures) == 1  # what the engine's calls hit in the video or live thread on torch 2.11
    owner = OwnerThread("owner", setup=adopt_cudagraph_state)
    mine = owner.call(trees.get_container, 0)
    assert mine is owner.call(trees.get_container, 0) and mine is not trees.get_container(0)
    # closing an engine frees its own thread's graphs, not the main thread's
    shut: list = []
    mine.tree_manager = types.SimpleNamespace(shutdown=lambda: shut.append("owner"))
    main = trees.get_container(0)
    owner.call(release_cudagraphs)
    assert shut == ["owner"] and trees.get_container(0) is main and owner.call(trees.get_container, 0) is not mine
    owner.stop()


def test_more_than_eight_shapes_compile_with_fullgraph_across_two_engines(cpu_torch_cuda, microast, monkeypatch,
                                                                          tmp_path, media, caplog):
    """dynamo's recompile limit (8) counted every engine's shapes together, and fullgraph=True made the
    ninth an error (FailOnRecompileLimitHit)."""
    tc = cpu_torch_cuda
    backend = CountingBackend()
    options = {"backend": backend, "fullgraph": True, "dynamic": False}
    a, b = (tc.TorchCudaEngine(microast, CPU, "fp32", cache=EngineCache(tmp_path), options=options) for _ in "ab")
    code = microast.code_tensors(_code(microast, media))
    shapes = [(1, 32 + 4 * i, 32) for i in range(9)]
    for shape in shapes:
        out = a.run(*_inputs(microast, code, *shape))
        assert out.shape == (shape[0], 3, *shape[1:])
    b.run(*_inputs(microast, code, *shapes[0]))
    assert backend.compiles == 10
    # past MAX_COMPILED_SHAPES an engine runs the same graph uncompiled, with one warning
    monkeypatch.setattr(tc, "MAX_COMPILED_SHAPES", 1)
    args = _inputs(microast, code, 2, 40, 44)
    with caplog.at_level(logging.WARNING):
        out = b.run(*args)
    assert backend.compiles == 10 and "runs uncompiled" in caplog.text
    assert psnr(out, gpu_graph(microast)(*args[:2], *code)) > 80  # the same graph (channels-last: rounding)
    a.close()
    b.close()


def test_closing_one_torch_cuda_engine_keeps_the_others_compiled_code(cpu_torch_cuda, microast, tmp_path, media):
    """close() used to call torch._dynamo.reset(): every other engine compiled again (20-40 s on a GPU)."""
    tc = cpu_torch_cuda
    backend = CountingBackend()
    options = {"backend": backend, "fullgraph": True, "dynamic": False}
    a, b = (tc.TorchCudaEngine(microast, CPU, "fp32", shape_hint=(32, 32), cache=EngineCache(tmp_path),
                               options=options) for _ in "ab")
    code = microast.code_tensors(_code(microast, media))
    args = _inputs(microast, code, 1, 32, 32)
    before = b.run(*args)
    assert backend.compiles == 2
    a.close()
    assert torch.equal(b.run(*args), before) and backend.compiles == 2  # nothing compiled again
    b.close()


# -- frames that stay on the device -----------------------------------------------------------------
def test_device_frame_functions_are_bit_for_bit_the_cpu_path(media):
    rgb = _rgb(media, "golden_gate.jpg", 61, 90)
    x = frames_to_input(torch.from_numpy(rgb.copy()))
    assert x.shape == (1, 3, 61, 90) and torch.equal(x, to_tensor(rgb))
    out = torch.rand(2, 3, 61, 90) * 1.2 - 0.1
    frames = output_to_frames(out)
    assert frames.dtype == torch.uint8 and frames.shape == (2, 61, 90, 3)
    assert np.array_equal(frames[1].numpy(), to_uint8(out[1:2]))


def test_stylize_frames_matches_stylize_within_one_level_batched_or_not(microast, media):
    stylizer = Stylizer(microast, create_engine("torch", microast, CPU))
    code = _code(microast, media)
    a, b = _rgb(media, "golden_gate.jpg", 50, 70), _rgb(media, "sailboat.jpg", 50, 70)
    for keep in (False, True):
        for alpha in (1.0, 0.7):  # 0.7: microast mixes in the frame's own code on this path too
            ref = stylizer.stylize(a, code, alpha, keep_color=keep).astype(int)
            got = stylizer.stylize_frames(torch.from_numpy(a.copy()), code, alpha, keep_color=keep)
            assert got.shape == (1, 50, 70, 3)
            diff = np.abs(got[0].numpy().astype(int) - ref)
            # the same arithmetic; torch's conv kernels round differently on a few pixels for another layout
            assert diff.max() <= 1 and (diff > 0).mean() < 0.002
    batch = stylizer.stylize_frames(torch.from_numpy(np.stack([a, b])), code, 0.7)
    ref_b = stylizer.stylize(b, code, 0.7).astype(int)
    assert np.abs(batch[1].numpy().astype(int) - ref_b).max() <= 1
    assert float(batch.float().std()) > 10  # not flat
    saturated = ((batch == 0) | (batch == 255)).float().mean()
    assert float(saturated) < 0.05  # microast's alpha < 1 mixes codes on this path too (a feature blend is cyan)


def test_device_resize_is_close_to_the_pil_resize(media):
    rgb = load_image(media / "content" / "golden_gate.jpg", "content")
    pil = resize_short_side(rgb, 180).astype(int)
    t = output_to_frames(resize_tensor(frames_to_input(torch.from_numpy(rgb.copy())), *pil.shape[:2]))[0].numpy()
    diff = np.abs(t.astype(int) - pil)
    assert t.shape == pil.shape and diff.mean() < 1.5 and np.percentile(diff, 99) <= 12


def test_stylize_frames_with_size_returns_the_source_size(microast, media):
    stylizer = Stylizer(microast, create_engine("torch", microast, CPU))
    rgb = _rgb(media, "golden_gate.jpg", 90, 120)
    out = stylizer.stylize_frames(torch.from_numpy(rgb.copy()), _code(microast, media), size=48)
    assert out.shape == (1, 90, 120, 3) and float(out.float().std()) > 10


def test_frame_mover_round_trips_on_the_cpu():
    from engines.device_frames import FrameMover

    mover = FrameMover(CPU)
    frames = np.random.default_rng(0).integers(0, 256, (2, 8, 10, 3), dtype=np.uint8)
    dev = mover.upload(frames)
    pending = mover.download(dev)
    assert pending.ready() and np.array_equal(pending.result(), frames)


def test_frame_mover_never_hands_out_a_buffer_still_in_flight():
    """gpu_check's render keeps 3 downloads in flight: while the ring filled, the second download went into
    the first one's buffer before it was read (buffers used A A B A C ...)."""
    from collections import deque

    from engines.device_frames import FrameMover, Pending

    mover = FrameMover(CPU, depth=3)
    pending: deque = deque()
    got = []
    for i in range(8):
        if len(pending) >= mover.depth:
            got.append(int(pending.popleft().result().max()))
        _, host = mover._slot(mover._down, (2, 4, 4, 3))  # plain memory on a CPU, pinned on a GPU
        host.fill_(i)
        pending.append(Pending(host))
    got += [int(p.result().max()) for p in pending]
    assert got == list(range(8))


def test_exact_fp32_turns_tf32_off_for_the_reference_and_back_on():
    from engines.backends.torch_cuda_engine import exact_fp32

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)
    try:
        matmul.allow_tf32, cudnn.allow_tf32 = True, True
        with exact_fp32():
            assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, False)
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)
        with pytest.raises(ValueError), exact_fp32():
            raise ValueError
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


def test_device_frame_render_gives_the_engine_full_batches_only(microast, media, clip, tmp_path):
    """A short batch is one more shape for a compiled engine (a 20-40 s compile, one step nearer dynamo's
    limit): the last batch is padded and its extra outputs dropped; audio between frames no longer cuts
    batches short (the test clip interleaves audio between every two frames: batches of one)."""
    import av

    from streamer.video import DEVICE_BATCH, render_video_file

    inner = create_engine("torch", microast, CPU)
    sizes: list[int] = []

    class Recording:
        """The torch engine, counting the frames of each call."""

        name, max_batch, device, model, precision = inner.name, inner.max_batch, inner.device, inner.model, "fp32"

        def run(self, image, alpha, code):
            sizes.append(image.shape[0])
            return inner.run(image, alpha, code)

        def describe(self) -> str:
            return inner.describe()

    stylizer = Stylizer(microast, Recording())
    dst = tmp_path / "out.mp4"
    stats = render_video_file(clip, dst, stylizer, _code(microast, media), progress=False, max_frames=11, size=64,
                              device_frames=True)
    assert stats.frames == 11 and sizes == [DEVICE_BATCH, DEVICE_BATCH]
    with av.open(str(dst)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 11


# -- tools/gpu_check.py -----------------------------------------------------------------------------
def test_gpu_check_prepares_read_only_weights_and_its_dry_run_writes_every_field(tmp_path, clip):
    import stat

    media = tmp_path / "media.npz"
    out = tmp_path / "check.json"
    weights = tmp_path / "weights"
    for attempt in range(2):  # a second --prepare replaces the read-only copies
        prep = subprocess.run([sys.executable, "tools/gpu_check.py", "--prepare", "--clip", str(clip), "--frames", "6",
                               "--media", str(media), "--prepare-size", "64x48", "--weights-dir", str(weights)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert prep.returncode == 0, prep.stderr
    assert np.load(media)["frames"].shape == (6, 48, 64, 3)
    copied = {p.relative_to(weights).parts[0] for p in weights.rglob("*") if p.is_file()}
    assert copied == {"microast", "adain-r31"}
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o222 == 0 for p in (weights, *weights.rglob("*")) if p != weights)
    run = subprocess.run([sys.executable, "tools/gpu_check.py", "--dry-run", "--media", str(media), "--json", str(out),
                          "--weights-dir", str(weights)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["results"]
    row = report["results"][0]
    assert "error" not in row, row
    assert row["weights"] == "real"  # loaded from the read-only copies
    assert {"model", "precision", "size", "psnr_db", "psnr_replay_db", "engine_ms", "render_fps"} <= set(row)
    assert row["psnr_db"] > 25 and row["psnr_replay_db"] > 25 and row["engine_ms"] > 0 and row["render_fps"] > 0
    assert row["thread_ok"] is True and row["thread_max_diff"] == 0.0  # the call from a second thread


def test_gpu_check_keeps_the_row_when_the_second_thread_call_fails():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "tools"))

    def fails():
        raise AssertionError("cudagraph_trees.get_obj\n  a long traceback")

    assert gpu_check.second_thread_call(fails, torch.zeros(1)) == {
        "thread_ok": False, "thread_error": "AssertionError: cudagraph_trees.get_obj"}
    assert gpu_check.second_thread_call(lambda: torch.ones(2), torch.zeros(2)) == {"thread_ok": True,
                                                                                   "thread_max_diff": 1.0}


# -- 3. install: one index for torch and torch-tensorrt, pinned to the torch minor ---------------------
def test_tensorrt_extra_is_pinned_to_run_sh_torch_minor():
    import re
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tensorrt"]
    torch_pin = re.search(r"STREAMER_TORCH:-torch==(\d+)\.(\d+)", (ROOT / "run.sh").read_text())
    major, minor = int(torch_pin.group(1)), int(torch_pin.group(2))
    assert extra == [f"torch-tensorrt>={major}.{minor},<{major}.{minor + 1}"]


def test_run_sh_takes_torch_and_torch_tensorrt_from_the_same_index(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "pip.log"
    for name in ("python", "streamer"):
        script = venv / "bin" / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
        script.chmod(0o755)
    index = "https://download.pytorch.org/whl/cu130"
    env = {"PATH": "/usr/bin:/bin", "STREAMER_VENV": str(venv), "STREAMER_TORCH_INDEX": index,
           "STREAMER_EXTRAS": "test,tensorrt", "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "run.sh"), "models", "list"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    pip = [line for line in log.read_text().splitlines() if " -m pip install " in line]
    assert len(pip) == 2 and all(f"--index-url {index}" in line for line in pip)
    assert "torch==2.13.0" in pip[0] and pip[1].endswith(f"-e {ROOT}[test,tensorrt]")  # the project, from any folder
    assert log.read_text().splitlines()[-1] == "streamer models list"


# -- offline render with frames on the device -----------------------------------------------------------
def test_render_with_device_frames_keeps_every_frame_timestamp_and_audio(microast, media, clip, tmp_path):
    """The GPU render path (batches of uint8 frames through Stylizer.stylize_frames), run on CPU tensors:
    same frames, same timestamps, audio kept, pixels close to the per-frame path (the resize is torch's
    bicubic, not PIL's)."""
    import av

    from streamer.video import render_video_file

    stylizer = Stylizer(microast, create_engine("torch", microast, CPU))
    code = _code(microast, media)
    outs = {}
    for flag in (False, True):
        dst = tmp_path / f"out-{flag}.mp4"
        stats = render_video_file(clip, dst, stylizer, code, progress=False, max_frames=11, size=96,
                                  device_frames=flag)
        assert stats.frames == 11
        with av.open(str(dst)) as c:
            assert [s.type for s in c.streams] == ["video", "audio"]
            frames = [(f.pts, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
        outs[flag] = frames
    assert [p for p, _ in outs[True]] == [p for p, _ in outs[False]]
    a = np.stack([f for _, f in outs[False]]).astype(int)
    b = np.stack([f for _, f in outs[True]]).astype(int)
    assert a.shape == b.shape == (11, 360, 640, 3)
    assert np.abs(a - b).mean() < 3.0 and b.std() > 20


def test_bench_lists_the_gpu_engines_on_a_gpu_only():
    import argparse

    from streamer import bench

    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers())
    _, cpu_engines, cpu_prec, _ = bench._plan(parser.parse_args(["bench"]), CPU)
    _, gpu_engines, gpu_prec, _ = bench._plan(parser.parse_args(["bench"]), torch.device("cuda"))
    assert "torch-cuda" not in cpu_engines and "tensorrt" not in cpu_engines
    assert {"torch-cuda", "tensorrt"} <= set(gpu_engines) and "fp16" in gpu_prec
