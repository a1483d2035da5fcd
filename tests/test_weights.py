"""The weights manager: finding, verifying and downloading weights, with one-line errors. No internet."""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from engines import weights as W
from engines.errors import WeightsError
from engines.models import MODEL_NAMES, ModelWeights, WeightFile, weight_spec
from tools.shared import shared_weights

SHARED_WEIGHTS = shared_weights()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may read or write the real cache, nor see a developer's STREAMER_WEIGHTS_DIR."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(W.ENV_WEIGHTS_DIR, raising=False)


@pytest.fixture
def shared() -> Path:
    if not (SHARED_WEIGHTS / "microast").is_dir() or not (SHARED_WEIGHTS / "adain-r31").is_dir():
        pytest.skip(f"real weights not found at {SHARED_WEIGHTS} (set STREAMER_SHARED)")
    return SHARED_WEIGHTS


def _copy_model(shared: Path, model: str, dest: Path) -> Path:
    """Copy one model's real files into ``dest/<model>/`` (writable, unlike shared/)."""
    target = dest / model
    target.mkdir(parents=True)
    for wf in weight_spec(model).files:
        shutil.copyfile(shared / model / wf.filename, target / wf.filename)
    return target


# ------------------------------------------------------------------------------------ registry, places


def test_registry_covers_the_three_models() -> None:
    specs = {name: weight_spec(name) for name in MODEL_NAMES}
    assert set(specs) == {"adain", "adain-r31", "microast"}
    assert len(specs["microast"].files) == 4 and len(specs["adain-r31"].files) == 2
    assert [f.filename for f in specs["adain"].files] == ["vgg_normalised.pth", "decoder.pth"]
    assert all(f.sha256 is None for f in specs["adain"].files)
    for name, spec in specs.items():
        assert spec.model == name and spec.license and spec.source
        for f in spec.files:
            assert f.url.startswith("https://") and f.url.endswith("/" + f.filename)
            assert f.sha256 is None or len(f.sha256) == 64


def test_each_model_declares_the_files_that_fill_every_part_of_it() -> None:
    """The registry, MODEL_NAMES, the loader and --decoder all come from the model classes' own declarations:
    every parameter of a model lives in a part some declared file fills, and nothing else lists them."""
    from engines.models import DECODER_FILES, MODEL_NAMES, MODELS

    assert MODEL_NAMES == ("adain", "adain-r31", "microast") and tuple(MODELS) == MODEL_NAMES
    for name, cls in MODELS.items():
        assert weight_spec(name) is cls.weights and cls.weights.model == name == cls.name
        model = cls()
        filled = {wf.module for wf in cls.weights.files}
        assert {key.split(".")[0] for key in model.state_dict()} == filled, name
        assert all(wf.what and isinstance(getattr(model, wf.module), torch.nn.Module) for wf in cls.weights.files)
    assert DECODER_FILES == {"adain": ("decoder.pth", "the AdaIN relu4_1 decoder"),
                             "adain-r31": ("feature_invertor_conv3_1.pth", "the relu3_1 decoder")}


def test_cache_dir_follows_xdg(tmp_path: Path) -> None:
    assert W.cache_dir() == tmp_path / "xdg" / "streamer" / "weights"


def test_weights_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert W.weights_root() is None
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(tmp_path / "env"))
    assert W.weights_root() == tmp_path / "env"
    assert W.weights_root(tmp_path / "arg") == tmp_path / "arg"
    assert W.weights_root(str(tmp_path / "arg")) == tmp_path / "arg"


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(WeightsError) as err:
        weight_spec("nope")
    assert str(err.value) == "unknown model 'nope': known models are adain, adain-r31, microast"
    from engines.models import weights_fingerprint

    with pytest.raises(WeightsError, match="unknown model 'nope'"):
        weights_fingerprint("nope")


def test_locating_weights_imports_neither_the_models_nor_torch() -> None:
    """engines.weights is handed a model's spec: it never imports the models (whose lookup it served once,
    closing an import circle), nor torch, until a file is read."""
    code = ("import sys; from engines import weights; weights.weights_root(); weights.cache_dir(); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('engines.models')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


# ---------------------------------------------------------------------------------- resolving locally


@pytest.mark.parametrize("model", ["microast", "adain-r31"])
def test_resolve_from_shared_folder(shared: Path, model: str) -> None:
    files = W.resolve_weights(weight_spec(model), shared, download=False)
    assert list(files) == [f.filename for f in weight_spec(model).files]
    for name, path in files.items():
        assert path == shared / model / name and path.is_file()
    assert W.model_status(weight_spec(model), shared) == f"ready ({shared / model})"
    assert not W.cache_dir().exists()  # found locally: nothing downloaded, nothing created


def test_env_dir_used_and_argument_wins(shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flat = tmp_path / "flat"  # <dir>/<file> layout is accepted too
    flat.mkdir()
    for wf in weight_spec("adain-r31").files:
        shutil.copyfile(shared / "adain-r31" / wf.filename, flat / wf.filename)
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(flat))
    assert set(W.resolve_weights(weight_spec("adain-r31"), download=False).values()) == {
        flat / wf.filename for wf in weight_spec("adain-r31").files}
    by_arg = W.resolve_weights(weight_spec("adain-r31"), shared, download=False)
    assert all(p.parent == shared / "adain-r31" for p in by_arg.values())


def test_resolve_from_cache(shared: Path) -> None:
    _copy_model(shared, "adain-r31", W.cache_dir())
    files = W.resolve_weights(weight_spec("adain-r31"), download=False)
    assert all(p.parent == W.cache_dir() / "adain-r31" for p in files.values())
    assert W.model_status(weight_spec("adain-r31")).startswith("ready (")


def test_missing_without_download_says_what_to_do(tmp_path: Path) -> None:
    assert W.model_status(weight_spec("microast"), tmp_path) == "missing"
    with pytest.raises(WeightsError) as err:
        W.resolve_weights(weight_spec("microast"), tmp_path, download=False)
    first, *rest = str(err.value).splitlines()
    assert first == "weights for model 'microast' are missing: 4 of 4 files"  # what is wrong, first
    assert rest[0] == f"  put these files in {W.cache_dir() / 'microast'}{os.sep}:"
    for wf in weight_spec("microast").files:  # then one line per file: its name and where it comes from
        assert sum(wf.filename in line and line.endswith(f"from {wf.url}") for line in rest) == 1
    assert any("--weights-dir" in line for line in rest) and rest[-1].endswith("streamer models download microast")
    assert len(rest) <= 9  # a short list, not a wall of text
    assert not W.cache_dir().exists()


# ------------------------------------------------------------------------------------ corrupt files


def test_sha_mismatch_is_refused(shared: Path, tmp_path: Path) -> None:
    folder = _copy_model(shared, "adain-r31", tmp_path / "w")
    bad = folder / "feature_invertor_conv3_1.pth"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))

    with pytest.raises(WeightsError) as err:
        W.resolve_weights(weight_spec("adain-r31"), tmp_path / "w", download=False)
    msg = str(err.value)
    assert "\n" not in msg and "feature_invertor_conv3_1.pth" in msg and str(bad) in msg
    assert "f32bc7bd366f" in msg and hashlib.sha256(bytes(data)).hexdigest()[:12] in msg
    assert W.model_status(weight_spec("adain-r31"), tmp_path / "w") == "corrupt"
    # A corrupt local file is reported even with download=True, not silently replaced or skipped.
    with pytest.raises(WeightsError, match="sha256"):
        W.resolve_weights(weight_spec("adain-r31"), tmp_path / "w", download=True)

    from engines.models import load_model  # and the model is never built from it

    with pytest.raises(WeightsError):
        load_model("adain-r31", tmp_path / "w", download=False)


def test_verification_is_memoised(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    W.resolve_weights(weight_spec("microast"), shared, download=False)
    monkeypatch.setattr(W.hashlib, "sha256", lambda *a: pytest.fail("hashed a file again"))
    W.resolve_weights(weight_spec("microast"), shared, download=False)


def test_truncated_file_is_corrupt(shared: Path, tmp_path: Path) -> None:
    src = shared / "microast" / "decoder_iter_160000.pth.tar"
    cut = tmp_path / "decoder_iter_160000.pth.tar"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(WeightsError, match="corrupt or not a PyTorch weights file") as err:
        W.load_state_dict(cut)
    assert str(cut) in str(err.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"<html>not found</html>")
    with pytest.raises(WeightsError, match="corrupt"):
        W.load_state_dict(junk)
    with pytest.raises(WeightsError, match="not found"):
        W.load_state_dict(tmp_path / "absent.pth")


def test_load_state_dict_real_and_wrapped(shared: Path, tmp_path: Path) -> None:
    state = W.load_state_dict(shared / "microast" / "modulator_iter_160000.pth.tar")
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    for wrapper in ("state_dict", "model"):
        path = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: {"a.weight": torch.zeros(2, 3)}, "epoch": 3}, path)
        assert list(W.load_state_dict(path)) == ["a.weight"]
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="not a PyTorch weights file"):
        W.load_state_dict(tmp_path / "list.pth")


def test_check_layout() -> None:
    state = {"0.weight": torch.zeros(64, 3, 3, 3), "0.bias": torch.zeros(64), "extra": torch.zeros(1)}
    W.check_layout(state, {"0.weight": (64, 3, 3, 3), "0.bias": (64,)}, "the encoder", Path("e.pth"))
    with pytest.raises(WeightsError) as err:
        W.check_layout(state, {"0.weight": (32, 3, 3, 3), "0.bias": (64,)}, "the encoder", Path("e.pth"))
    assert str(err.value) == ("e.pth does not match the encoder: key '0.weight' has shape (64, 3, 3, 3) "
                              "but the model needs (32, 3, 3, 3)")
    with pytest.raises(WeightsError, match=r"key '2.weight' is missing .*and 1 more"):
        W.check_layout(state, {"2.weight": (1,), "2.bias": (1,)}, "the encoder", Path("e.pth"))


# ----------------------------------------------------------------------------------------- downloads


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 serving ``root``; yields (base URL, root)."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _fake(*files: WeightFile) -> ModelWeights:
    """A model of test files, handed to the weights manager as any model's spec is."""
    return ModelWeights("fake", tuple(files), "MIT", "test files")


PAYLOAD = b"PK\x03\x04" + bytes(range(256)) * 300  # ~77 kB, several chunks


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_success(server: tuple[str, Path]) -> None:
    base, root = server
    (root / "a.pth").write_bytes(PAYLOAD)
    fake = _fake(WeightFile("a.pth", base + "a.pth", hashlib.sha256(PAYLOAD).hexdigest()))
    assert W.model_status(fake) == "missing"
    files = W.download_model(fake)
    dest = W.cache_dir() / "fake" / "a.pth"
    assert files == {"a.pth": dest} and dest.read_bytes() == PAYLOAD
    assert _leftovers(dest.parent) == ["a.pth"]
    assert W.model_status(fake) == f"ready ({dest.parent})"
    (root / "a.pth").unlink()  # second call uses the cached file, no network
    assert W.resolve_weights(fake) == {"a.pth": dest}


def test_download_wrong_sha_leaves_nothing(server: tuple[str, Path]) -> None:
    base, root = server
    (root / "a.pth").write_bytes(PAYLOAD)
    fake = _fake(WeightFile("a.pth", base + "a.pth", "0" * 64))
    with pytest.raises(WeightsError) as err:
        W.resolve_weights(fake, progress=False)
    first, *rest = str(err.value).splitlines()
    assert "a.pth" in first and "000000000000" in first and rest[1].split() == ["a.pth", "from", base + "a.pth"]
    assert not W.cache_dir().exists()  # nor an empty folder


def test_download_without_sha_rejects_html(server: tuple[str, Path]) -> None:
    base, root = server
    (root / "a.pth").write_bytes(b"<!doctype html><title>sign in</title>")
    fake = _fake(WeightFile("a.pth", base + "a.pth", None))
    with pytest.raises(WeightsError, match="not a PyTorch weights file"):
        W.resolve_weights(fake, progress=False)
    assert not W.cache_dir().exists()  # nor an empty folder


def test_download_http_error(server: tuple[str, Path]) -> None:
    base, _ = server
    fake = _fake(WeightFile("gone.pth", base + "gone.pth", "0" * 64))
    with pytest.raises(WeightsError, match="HTTP 404"):
        W.resolve_weights(fake, progress=False)
    assert not W.cache_dir().exists()  # nor an empty folder


def test_offline_names_file_url_and_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was just free: connecting is refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url_a, url_b = f"http://127.0.0.1:{port}/a.pth", f"http://127.0.0.1:{port}/b.pth"
    fake = _fake(WeightFile("a.pth", url_a, "0" * 64), WeightFile("b.pth", url_b, None))
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(tmp_path / "mine"))
    with pytest.raises(WeightsError) as err:
        W.resolve_weights(fake, progress=False)
    msg = str(err.value)
    first, *rest = msg.splitlines()
    assert first == f"weights for model 'fake' are missing and could not be downloaded (127.0.0.1:{port}: " \
                    "cannot connect: Connection refused)"
    assert rest[0] == f"  put these files in {W.cache_dir() / 'fake'}{os.sep}:"
    assert rest[1].split() == ["a.pth", "from", url_a] and rest[2].split() == ["b.pth", "from", url_b]
    assert "STREAMER_WEIGHTS_DIR" in msg and "<dir>/fake/<file>" in msg
    assert str(tmp_path / "mine") in msg
    assert not (tmp_path / "xdg").exists()  # a failed first download creates no (empty) cache folder
