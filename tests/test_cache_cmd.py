"""`streamer cache info|clear`: what is cached where and how big; clearing engines and style codes by
default, downloaded weights only when asked, a user's own weights folder never; -q and --dry-run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engines.backends.cache import EngineCache
from streamer.cli import main


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user cache holding one engine (with its key), one style code and one model's downloaded weights."""
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    EngineCache().store("microast-openvino", {"kind": "onnx", "rewrite": "openvino", "torch": "2.13.0"}, "onnx",
                        lambda p: p.write_bytes(b"x" * 3000))
    (xdg / "streamer" / "styles").mkdir(parents=True)
    (xdg / "streamer" / "styles" / "microast-0123abcd.pt").write_bytes(b"s" * 100)
    (xdg / "streamer" / "weights" / "microast").mkdir(parents=True)
    (xdg / "streamer" / "weights" / "microast" / "decoder_iter_160000.pth.tar").write_bytes(b"w" * 2048)
    return xdg / "streamer"


def test_info_lists_each_folder_its_entries_and_sizes(cache, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    assert main(["cache", "info", "--weights-dir", str(mine)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"engines  {cache / 'engines'}  (1 item, ")
    engine = next(line for line in out if "microast-openvino-" in line)
    assert engine.split()[1:] == ["3.0", "kB", "onnx,", "for", "openvino,", "torch", "2.13.0"]  # payload + key
    assert f"styles   {cache / 'styles'}  (1 item, 100 B)" in out and ["microast", "100", "B", "1", "style", "code"] in [line.split() for line in out]
    assert f"weights  {cache / 'weights'}  (1 item, 2.0 kB)" in out
    assert out[-2].startswith("total    5.1 kB")
    assert out[-1] == f"your weights folder {mine}  (0 B; never cleared)"


def test_clear_removes_engines_and_styles_and_keeps_downloaded_weights(cache, capsys):
    assert main(["cache", "clear", "--dry-run"]) == 0
    assert "would remove 1 item" in capsys.readouterr().out and len(list((cache / "engines").iterdir())) == 2
    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"engines: removed 1 item, 3.0 kB ({cache / 'engines'})",
                   f"styles: removed 1 item, 100 B ({cache / 'styles'})",
                   "downloaded weights kept (remove them with --weights)"]
    assert not any((cache / "engines").iterdir()) and not any((cache / "styles").iterdir())
    assert (cache / "weights" / "microast" / "decoder_iter_160000.pth.tar").exists()
    assert main(["cache", "clear", "--engines"]) == 0
    assert capsys.readouterr().out == f"engines: nothing cached ({cache / 'engines'})\n"


def test_clear_all_is_silent_with_q_and_never_touches_a_weights_dir(cache, tmp_path, monkeypatch, capsys):
    mine = tmp_path / "mine" / "microast"
    mine.mkdir(parents=True)
    (mine / "decoder_iter_160000.pth.tar").write_bytes(b"mine")
    monkeypatch.setenv("STREAMER_WEIGHTS_DIR", str(mine.parent))
    assert main(["-q", "cache", "clear", "--all"]) == 0
    assert capsys.readouterr() == ("", "")
    assert all(not any((cache / k).iterdir()) for k in ("engines", "styles", "weights"))
    assert (mine / "decoder_iter_160000.pth.tar").read_bytes() == b"mine"


def test_a_file_that_cannot_be_removed_is_one_line(cache, monkeypatch, capsys):
    def refuse(self, missing_ok=False):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "unlink", refuse)
    assert main(["cache", "clear", "--styles"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"streamer: error: cannot remove {cache / 'styles' / 'microast-0123abcd.pt'}: Permission denied"]


def test_sidecar_keys_are_json(cache):
    (sidecar,) = (cache / "engines").glob("*.json")
    assert json.loads(sidecar.read_text())["kind"] == "onnx"


def test_cache_info_lists_an_entry_whose_key_has_no_rewrite(tmp_path, monkeypatch, capsys):
    """An engine-cache entry whose key names no CPU rewrite (the bf16 verdict, a background build's) is listed,
    not an internal error (`cache info` raised KeyError: 'rewrite')."""
    import json

    from engines.backends.cache import EngineCache
    from streamer.cli import main

    cache = EngineCache()
    entry = cache.folder / "microast-bf16-check-0123.json"
    cache.folder.mkdir(parents=True, exist_ok=True)
    entry.write_text("{}")
    entry.with_name(entry.name + ".json").write_text(json.dumps({"kind": "bf16-check", "precision": "bf16"}))
    assert main(["cache", "info"]) == 0
    assert "bf16-check, bf16" in capsys.readouterr().out
