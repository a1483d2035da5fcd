"""No output ever replaces an input, and the hidden ``.part`` file is never trusted (issue 20, root causes 1 and 2).

Every command that writes is driven through the command line with a stand-in model: each case must end in
one line and exit 2 before anything is written, the input unchanged, whatever ``--overwrite`` says.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import streamer.bench
import streamer.train
from engines.errors import InputError
from streamer.cli import main
from streamer.fileutil import NAME_MAX, AtomicOutput, part_path
from streamer.imageio import save_image
from tests.test_outputs_reliability import mount_tmpfs, one_error, parts


@pytest.fixture()
def files(media: Path, tmp_path: Path) -> dict[str, Path]:
    """Small inputs in ``tmp_path``: a photo, a style, a mask, a folder of photos."""
    photo = tmp_path / "photo.png"
    Image.open(media / "content" / "cornell.jpg").convert("RGB").resize((64, 48)).save(photo)
    style = tmp_path / "style.jpg"
    Image.open(media / "style" / "la_muse.jpg").convert("RGB").resize((64, 48)).save(style)
    mask = tmp_path / "mask.png"
    mask_img = np.zeros((48, 64), np.uint8)
    mask_img[:, 32:] = 255
    Image.fromarray(mask_img).save(mask)
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(photo, folder / name)
    return {"photo": photo, "style": style, "mask": mask, "folder": folder}


def digests(*paths: Path) -> list[bytes]:
    return [p.read_bytes() for p in paths]


def refused(run, *argv, needle: str = "would replace the") -> str:
    code, err = run(*argv)
    return one_error(code, err, needle, "--overwrite never replaces an input")


# -- root cause 1: one same-file guard, every command ------------------------------------------------
def test_render_onto_its_own_input_is_refused(run, fake_model, files) -> None:
    photo, style = files["photo"], files["style"]
    before = digests(photo, style)
    refused(run, "render", photo, photo, "-s", style, "--overwrite")
    refused(run, "render", photo, photo, "-s", style)  # without --overwrite: the same refusal, not "output exists"
    assert digests(photo, style) == before and fake_model.calls == 0


def test_render_onto_the_style_is_refused(run, fake_model, files) -> None:
    photo, style = files["photo"], files["style"]
    before = digests(photo, style)
    line = refused(run, "render", photo, style, "--style", style, "--overwrite")
    assert "style image" in line
    assert digests(photo, style) == before and fake_model.calls == 0


def test_render_into_the_folder_holding_the_input_is_refused(run, fake_model, files) -> None:
    src = files["folder"] / "a.png"  # `render DIR/a.png DIR/`: the output would be DIR/a.png itself
    before = digests(src)
    refused(run, "render", src, files["folder"], "-s", files["style"], "--overwrite")
    assert digests(src) == before and fake_model.calls == 0


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_a_link_to_an_input_as_output_is_refused(run, fake_model, files, tmp_path, link) -> None:
    photo, style = files["photo"], files["style"]
    out = tmp_path / "out.png"
    (os.link if link == "hard" else os.symlink)(photo, out)
    before = digests(photo)
    line = refused(run, "render", photo, out, "-s", style, "--overwrite")
    assert "through a link" in line
    assert digests(photo) == before and fake_model.calls == 0
    assert parts(tmp_path) == []


def test_the_mask_as_output_is_refused(run, fake_model, files) -> None:
    mask = files["mask"]
    before = digests(mask)
    line = refused(run, "render", files["photo"], mask, "-s", files["style"], "--mask", mask, "--overwrite")
    assert "mask" in line
    assert digests(mask) == before and fake_model.calls == 0


def test_the_decoder_as_output_is_refused(run, fake_model, files, tmp_path) -> None:
    decoder = tmp_path / "decoder.pth"
    decoder.write_bytes(b"my trained decoder")
    out = tmp_path / "out.png"
    os.symlink(decoder, out)
    refused(run, "render", files["photo"], out, "-s", files["style"], "--model", "adain-r31", "--decoder", decoder,
            "--overwrite")
    assert decoder.read_bytes() == b"my trained decoder" and fake_model.calls == 0


def test_folder_render_onto_itself_or_onto_a_style_is_refused(run, fake_model, files, tmp_path) -> None:
    folder = files["folder"]
    before = digests(*sorted(folder.iterdir()))
    refused(run, "render", folder, folder, "-s", files["style"], "--overwrite")
    out = tmp_path / "out"
    out.mkdir()
    style_there = out / "a.png"  # the output folder holds the style at an output's name
    shutil.copy(files["style"], style_there)
    style_bytes = style_there.read_bytes()
    line = refused(run, "render", folder, out, "-s", style_there, "--overwrite")
    assert "style image" in line
    assert digests(*sorted(folder.iterdir())) == before and style_there.read_bytes() == style_bytes
    assert fake_model.calls == 0


def test_video_render_onto_a_hard_link_of_its_input_or_its_style_is_refused(run, fake_model, clip, files,
                                                                           tmp_path) -> None:
    src = tmp_path / "in.mp4"
    shutil.copy(clip, src)
    link = tmp_path / "link.mp4"
    os.link(src, link)
    size = src.stat().st_size
    line = refused(run, "render", src, link, "-s", files["style"], "--overwrite")
    assert "input video" in line
    onto_style = tmp_path / "style.mkv"
    os.symlink(files["style"], onto_style)
    refused(run, "render", src, onto_style, "-s", files["style"], "--overwrite")
    assert src.stat().st_size == size and files["style"].stat().st_size > 0 and fake_model.calls == 0
    assert parts(tmp_path) == []


def test_live_recording_onto_its_source_file_is_refused(run, fake_model, clip, files, tmp_path) -> None:
    src = tmp_path / "source.mp4"
    shutil.copy(clip, src)
    size = src.stat().st_size
    refused(run, "live", "--source", src, "--record", src, "--overwrite", "--no-stdin", "--max-frames", "2",
            "-s", files["style"])
    assert src.stat().st_size == size and fake_model.calls == 0
    assert parts(tmp_path) == []


def test_bench_json_onto_its_style_is_refused_before_any_timing(files, no_model, capsys) -> None:
    before = digests(files["style"])
    code = main(["bench", "--style", str(files["style"]), "--json", str(files["style"])])
    one_error(code, capsys.readouterr().err, "would replace the style image")
    assert digests(files["style"]) == before


def test_train_out_onto_the_weights_or_the_content_is_refused(files, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(streamer.train, "load_model", lambda *a, **k: pytest.fail("model loaded before the check"))
    weights = tmp_path / "w"
    (weights / "adain").mkdir(parents=True)
    released = weights / "adain" / "decoder.pth"  # the released decoder, where `train --out W/adain` writes its own
    released.write_bytes(b"released decoder")
    code = main(["-q", "train", "--model", "adain", "--content", str(files["folder"]), "--style", str(files["folder"]),
                 "--out", str(weights / "adain"), "--weights-dir", str(weights), "--iterations", "1"])
    one_error(code, capsys.readouterr().err, "would replace the weights file")
    assert released.read_bytes() == b"released decoder"
    preview = files["folder"] / "preview.png"  # a content image named like the run's preview
    shutil.copy(files["photo"], preview)
    code = main(["-q", "train", "--model", "adain-r31", "--content", str(files["folder"]), "--style",
                 str(files["folder"]), "--out", str(files["folder"]), "--iterations", "1"])
    one_error(code, capsys.readouterr().err, "would replace the --content image")
    assert preview.read_bytes() == files["photo"].read_bytes()


def test_an_output_that_is_no_input_is_written(run, fake_model, files, tmp_path) -> None:
    """The guard can tell: a different file (a copy of the input) is replaced as asked."""
    copy = tmp_path / "copy.png"
    shutil.copy(files["photo"], copy)
    code, err = run("render", files["photo"], copy, "-s", files["style"], "--overwrite")
    assert code == 0, err
    assert copy.read_bytes() != files["photo"].read_bytes() and fake_model.calls == 1


# -- root cause 2: the hidden .part is never trusted ----------------------------------------------------
@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_a_planted_part_link_is_never_written_through(run, fake_model, files, tmp_path, link) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    out = tmp_path / "out.png"
    (os.symlink if link == "symbolic" else os.link)(victim, part_path(out))
    code, err = run("render", files["photo"], out, "-s", files["style"])
    one_error(code, err, "not a file streamer left", "remove it")
    assert victim.read_bytes() == b"precious" and not os.path.lexists(out)
    assert os.path.lexists(part_path(out)) and fake_model.calls == 0  # left for the user to look at


def test_the_overwrite_check_comes_before_the_part_is_touched(run, fake_model, files, tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    out = tmp_path / "out.png"
    out.write_bytes(b"an earlier result")
    os.symlink(victim, part_path(out))
    code, err = run("render", files["photo"], out, "-s", files["style"])
    one_error(code, err, "output exists")
    assert victim.read_bytes() == b"precious" and out.read_bytes() == b"an earlier result"


def test_a_fifo_at_the_part_name_is_refused_without_blocking(tmp_path) -> None:
    out = tmp_path / "out.png"
    os.mkfifo(part_path(out))
    with pytest.raises(InputError, match="not a regular file"):
        AtomicOutput(out)


def test_a_stale_part_of_ours_is_still_taken_over(tmp_path) -> None:
    out = tmp_path / "out.png"
    stale = part_path(out)
    stale.write_bytes(b"x" * 100)  # left by a SIGKILLed run: a plain file, one link, no lock held
    held = AtomicOutput(out)
    assert held.tmp_path.stat().st_size == 0
    held.discard()
    assert parts(tmp_path) == []


def test_a_251_character_output_name_is_written(run, fake_model, files, tmp_path) -> None:
    out = tmp_path / ("n" * 247 + ".png")  # 251 characters: valid; ".NAME.part" would be 257
    assert len(out.name) == 251 and len(part_path(out).name) <= NAME_MAX
    assert part_path(out).name.startswith(".") and part_path(out).name.endswith(".part")
    code, err = run("render", files["photo"], out, "-s", files["style"])
    assert code == 0, err
    assert Image.open(out).size == (64, 48) and parts(tmp_path) == []


def test_long_unicode_names_get_distinct_temp_names(tmp_path) -> None:
    a, b = tmp_path / ("é" * 124 + "a.png"), tmp_path / ("é" * 124 + "b.png")  # 253 bytes each in UTF-8
    assert part_path(a) != part_path(b)
    assert all(len(os.fsencode(part_path(p).name)) <= NAME_MAX for p in (a, b))
    save_image(a, np.zeros((4, 4, 3), np.uint8))
    assert a.exists() and parts(tmp_path) == []


# -- bench --json: checked at the start, written atomically at the end -----------------------------------
@pytest.mark.parametrize("where", ["folder", "missing parent"])
def test_bench_json_to_a_folder_or_a_missing_parent_fails_at_once(where, no_model, tmp_path, capsys) -> None:
    target = tmp_path if where == "folder" else tmp_path / "nope" / "b.json"
    code = main(["bench", "--json", str(target)])
    one_error(code, capsys.readouterr().err, "is a folder" if where == "folder" else "output folder does not exist")


def test_bench_json_to_a_read_only_place_fails_at_once(no_model, tmp_path, capsys) -> None:
    mnt = tmp_path / "ro"
    mount_tmpfs(mnt, "ro")
    try:
        code = main(["bench", "--json", str(mnt / "b.json")])
        one_error(code, capsys.readouterr().err, "read-only file system")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_bench_json_is_written_whole_at_the_end(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "b.json"
    seen = []

    def measure(*args):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))  # while timing: only the hidden temp file
        return {"machine": {}, "peak_gflops": 1.0, "clip": None, "models": {}, "content": [], "render": []}

    monkeypatch.setattr(streamer.bench, "measure", measure)
    monkeypatch.setattr(streamer.bench, "format_report", lambda report: "table")
    assert main(["-q", "bench", "--json", str(out)]) == 0
    assert seen == [[".b.json.part"]]
    assert json.loads(out.read_text())["peak_gflops"] == 1.0 and parts(tmp_path) == []
