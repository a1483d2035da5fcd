"""A folder render: one rule for the local render and the cluster (issue 21): images and videos are both rendered,
into a folder that may not exist yet."""
from __future__ import annotations

import shutil

import av
import numpy as np
import pytest
from PIL import Image

from streamer.cli import main
from tests.test_outputs_reliability import one_error


def test_local_folder_renders_its_videos_too(clip, media, weights_dir, tmp_path, capsys):
    src, dst = tmp_path / "in", tmp_path / "newdir"  # the output folder does not exist yet
    src.mkdir()
    image = sorted((media / "content").glob("*.jpg"))[0]
    shutil.copy(image, src / image.name)
    shutil.copy(clip, src / "a.mp4")
    code = main(["-q", "render", str(src), str(dst), "-s", str(media / "style" / "la_muse.jpg"), "--model", "microast",
                 "--size", "64", "--max-frames", "6", "--weights-dir", str(weights_dir)])
    assert code == 0, capsys.readouterr().err
    with Image.open(dst / image.name) as im, Image.open(image) as orig:
        assert im.size == orig.size and np.asarray(im).std() > 5
    with av.open(str(dst / "a.mp4")) as c:
        assert len(list(c.decode(video=0))) == 6
        assert c.streams.audio  # the video's own audio, as a single video render keeps it
    assert sorted(p.name for p in dst.iterdir()) == sorted([image.name, "a.mp4"])  # nothing hidden left


def test_folder_with_only_a_video_into_a_new_folder(clip, media, weights_dir, tmp_path, capsys):
    src, dst = tmp_path / "in", tmp_path / "out" / "newdir"
    src.mkdir()
    (tmp_path / "out").mkdir()
    shutil.copy(clip, src / "clip.mov")
    code = main(["-q", "render", str(src), str(dst), "-s", str(media / "style" / "la_muse.jpg"), "--model", "microast",
                 "--size", "64", "--max-frames", "3", "--weights-dir", str(weights_dir)])
    assert code == 0, capsys.readouterr().err
    with av.open(str(dst / "clip.mov")) as c:
        assert len(list(c.decode(video=0))) == 3


def test_a_folder_of_nothing_says_what_it_looks_for(tmp_path, media, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("x")
    assert main(["-q", "render", str(tmp_path / "in"), str(tmp_path / "o"), "-s", str(media / "style" /
                                                                                        "la_muse.jpg")]) == 2
    assert capsys.readouterr().err.strip() == f"streamer: error: no images or videos in folder {tmp_path / 'in'}"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags,words", [
    (["--crf", "99"], ["--crf must be between 0 and 63"]),
    (["--codec", "mjpeg"], ["mjpeg encoder cannot write this output", "--codec"]),
    (["--max-frames", "0"], ["--max-frames must be a positive number of frames"]),
])
@pytest.mark.parametrize("cluster", [False, True])
def test_a_folders_videos_take_the_video_checks_before_the_model(run, no_model, clip, media, tmp_path, flags, words,
                                                                 cluster):
    """The encoder flags and --max-frames are checked for a folder's videos as for one video: one line, exit 2,
    before the model loads and before any file is written (they were taken as they came, or failed per video)."""
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(sorted((media / "content").glob("*.jpg"))[0], src / "a.jpg")
    shutil.copy(clip, src / "b.mp4")
    local = ["--cluster", "local"] if cluster else []
    code, err = run("render", src, dst, "-s", media / "style" / "la_muse.jpg", "--size", "64", *flags, *local)
    one_error(code, err, *words)
    assert not dst.exists()


def test_a_folder_of_images_only_takes_video_flags_unused(run, fake_model, media, tmp_path):
    """Without a video in the folder, --max-frames and the encoder flags have nothing to act on: not refused."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(sorted((media / "content").glob("*.jpg"))[0], src / "a.jpg")
    code, err = run("render", src, tmp_path / "out", "-s", media / "style" / "la_muse.jpg", "--size", "64",
                    "--max-frames", "0", "--crf", "99")
    assert code == 0, err
    assert (tmp_path / "out" / "a.jpg").is_file()
