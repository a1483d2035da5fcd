"""Outputs are never lost or half-written: signals, SIGKILL leftovers, read-only folders, folder renders,
truncated video input, and two runs writing the same output (issue 10, items 4, 6, 7, 8, 9).

Signals are sent to real subprocesses (``python -m streamer``) once they show progress; every wait is
bounded by a timeout, and none is a sleep standing in for synchronisation.
"""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from engines.errors import InputError
from streamer import video
from streamer.fileutil import AtomicOutput, FolderLock, part_path
from streamer.pipeline import run_in_thread
from streamer.signals import Interrupted, signal_number, stop_signals_interrupt
from streamer.videoread import VideoInfo
from tests.fakes import InvertingStylizer, stand_in_model

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180  # seconds any one subprocess step may take on a loaded 2-core machine


# -- helpers -----------------------------------------------------------------------------------------
def streamer_process(*argv: str, weights_dir: Path) -> subprocess.Popen:
    """``python -m streamer ARGV`` from the repository root, its stderr a terminal (as a user has it: the
    progress bar shows only there), readable through ``proc.terminal`` while it runs."""
    terminal, child_side = pty.openpty()
    fcntl.ioctl(child_side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # a 160-column terminal
    try:
        proc = subprocess.Popen([sys.executable, "-m", "streamer", *map(str, argv), "--weights-dir", str(weights_dir)],
                                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=child_side)
    finally:
        os.close(child_side)
    proc.terminal = terminal
    return proc


def read_terminal(proc: subprocess.Popen, timeout: float) -> bytes | None:
    """The next bytes the process wrote to its terminal; None once it has closed it (exited)."""
    ready, _, _ = select.select([proc.terminal], [], [], timeout)
    if not ready:
        return b""
    try:
        return os.read(proc.terminal, 65536) or None
    except OSError:  # EIO: every writer has closed the terminal
        return None


def wait_for(proc: subprocess.Popen, pattern: str, timeout: float = TIMEOUT) -> bytes:
    """Read the process's stderr until ``pattern`` (a regex) shows; what was read. Fails after ``timeout``."""
    buf, end = b"", time.monotonic() + timeout
    while not re.search(pattern.encode(), buf):
        left = end - time.monotonic()
        if left <= 0:
            proc.kill()
            pytest.fail(f"no {pattern!r} within {timeout} s; stderr so far: {buf[-800:]!r}")
        chunk = read_terminal(proc, left)
        if chunk is None:
            proc.wait(TIMEOUT)
            pytest.fail(f"exited ({proc.returncode}) before {pattern!r}; stderr: {buf[-800:]!r}")
        buf += chunk
    return buf


def finish(proc: subprocess.Popen, seen: bytes) -> tuple[int, list[str]]:
    """Wait for the end; (exit code, stderr lines without the progress bar)."""
    rest, end = b"", time.monotonic() + TIMEOUT
    while time.monotonic() < end and (chunk := read_terminal(proc, end - time.monotonic())) is not None:
        rest += chunk
    proc.wait(TIMEOUT)
    os.close(proc.terminal)
    text = (seen + rest).decode(errors="replace").replace("\r", "\n")
    return proc.returncode, [ln for ln in text.splitlines() if ln.strip() and "|" not in ln]


def count_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".part"))


def one_error(code: int, err: str, *words: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamer: error:"), err
    for w in words:
        assert w in lines[0], err
    return lines[0]


@pytest.fixture(scope="module")
def style(media: Path) -> Path:
    return media / "style" / "brushstrokes.jpg"


@pytest.fixture(scope="module")
def photos(media: Path, tmp_path_factory) -> Path:
    """A folder of three small real photos."""
    folder = tmp_path_factory.mktemp("photos")
    for name in ("avril.jpg", "lenna.jpg", "sailboat.jpg"):
        Image.open(media / "content" / name).convert("RGB").resize((80, 60)).save(folder / name)
    return folder


def mount_tmpfs(mnt: Path, *opts: str) -> None:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("needs root on Linux to mount a tmpfs")
    mnt.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=1m", *opts)), "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")


# -- item 4: SIGTERM and SIGHUP stop like Ctrl-C ---------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_mid_video_render_finishes_a_playable_file(sig, clip, style, weights_dir, tmp_path) -> None:
    out = tmp_path / "stopped.mp4"
    proc = streamer_process("render", clip, out, "--style", style, "--size", "64", "--model", "microast",
                            weights_dir=weights_dir)
    seen = wait_for(proc, r"\b[1-9]\d*/240")  # the progress bar counts finished frames
    proc.send_signal(sig)
    code, lines = finish(proc, seen)
    assert code == 128 + sig  # 143 for SIGTERM, 129 for SIGHUP (130 stays Ctrl-C's)
    msg = [ln for ln in lines if "interrupted" in ln]
    assert len(msg) == 1 and msg[0].startswith(f"streamer: interrupted by {sig.name}: {out} holds the first "), lines
    n = int(re.search(r"first (\d+) frames", msg[0]).group(1))
    assert 1 <= n < 240 and count_frames(out) == n
    assert parts(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_stops_live_and_keeps_a_playable_recording(sig, style, weights_dir, tmp_path) -> None:
    out = tmp_path / "live.mp4"
    proc = streamer_process("live", "--source", "test", "--capture-size", "128x72", "--size", "64", "--style", style,
                            "--record", out, "--no-stdin", "--model", "microast", weights_dir=weights_dir)
    seen = wait_for(proc, "first frame out")
    proc.send_signal(sig)
    code, lines = finish(proc, seen)
    assert code == 128 + sig
    assert f"streamer: interrupted by {sig.name}" in lines, lines
    assert count_frames(out) >= 1
    assert parts(tmp_path) == []


def test_sigterm_mid_folder_keeps_the_finished_images(run, fake_model, photos, style, tmp_path) -> None:
    fake_model.stop_at, fake_model.stop = 2, Interrupted(signal.SIGTERM)  # what the handler raises
    out = tmp_path / "out"
    code, err = run("render", photos, out, "--style", style)
    assert code == 143
    assert err.strip() == f"streamer: interrupted by SIGTERM: 1 of 3 images are in {out}"
    assert [p.name for p in out.iterdir()] == ["avril.jpg"] and parts(tmp_path) == []
    Image.open(out / "avril.jpg").load()  # complete


def test_stop_signal_handler_raises_once_then_lets_the_output_finish() -> None:
    with stop_signals_interrupt():
        with pytest.raises(Interrupted) as info:
            signal.raise_signal(signal.SIGTERM)  # to this (the main) thread: the handler runs on return
        assert info.value.signum == signal.SIGTERM
        signal.raise_signal(signal.SIGHUP)  # a second stop signal while finishing: ignored
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_stop_signal_re_raised_as_a_plain_keyboard_interrupt_keeps_its_exit_code() -> None:
    """Ray's ray.get turns the handler's Interrupted into a plain KeyboardInterrupt: the cluster driver exited 130
    after SIGTERM, now and then, depending on where the signal found it."""
    try:
        with stop_signals_interrupt():
            try:
                signal.raise_signal(signal.SIGTERM)
            except KeyboardInterrupt:
                raise KeyboardInterrupt() from None  # what Ray's C++ wait does with it
    except KeyboardInterrupt as exc:
        assert type(exc) is KeyboardInterrupt and signal_number(exc) == signal.SIGTERM
    with stop_signals_interrupt():  # a new run: a Ctrl-C is a Ctrl-C again
        pass
    assert signal_number(KeyboardInterrupt()) == signal.SIGINT


def test_interrupt_while_opening_the_encoder_leaves_nothing_behind() -> None:
    undone = []

    def opens():
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # Ctrl-C while the caller waits for us
        return "writer"

    with pytest.raises(KeyboardInterrupt):
        run_in_thread(opens, undo=undone.append)
    assert undone == ["writer"]


def test_sigkill_leftover_is_taken_over_by_the_next_run(run, fake_model, clip, style, weights_dir, tmp_path) -> None:
    out = tmp_path / "o.mp4"
    proc = streamer_process("render", clip, out, "--style", style, "--size", "64", "--model", "microast",
                            weights_dir=weights_dir)
    wait_for(proc, r"\b[1-9]\d*/240")
    proc.kill()
    finish(proc, b"")
    assert parts(tmp_path) == [".o.mp4.part"] and not out.exists()  # what SIGKILL leaves: nothing can clean up
    code, err = run("render", clip, out, "--style", style, "--max-frames", "5")
    assert code == 0, err
    assert count_frames(out) == 5 and parts(tmp_path) == []


# -- item 6: read-only output location --------------------------------------------------------------
def test_read_only_output_is_one_line_and_exit_2(run, photos, style, clip, tmp_path) -> None:
    mnt = tmp_path / "ro"
    mount_tmpfs(mnt, "ro")
    try:
        cases = [((photos / "lenna.jpg", mnt / "o.png"), ()),
                 ((photos, mnt / "out"), ()),
                 ((clip, mnt / "o.mp4"), ("--max-frames", "2"))]
        for (src, dst), extra in cases:
            code, err = run("render", src, dst, "--style", style, "--size", "64", "--model", "microast", *extra)
            one_error(code, err, f"cannot write {dst}: read-only file system")
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_live_record_into_read_only_folder(run, style, tmp_path) -> None:
    mnt = tmp_path / "ro"
    mount_tmpfs(mnt, "ro")
    try:
        code, err = run("live", "--source", "test", "--record", mnt / "r.mp4", "--no-stdin", "--max-frames", "2",
                        "--style", style, "--size", "64", "--model", "microast")
        one_error(code, err, "read-only file system")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# -- item 7: folders -----------------------------------------------------------------------------
def test_folder_skips_an_unreadable_file_renders_the_rest_and_exits_2(run, photos, style, tmp_path) -> None:
    src = tmp_path / "in"
    shutil.copytree(photos, src)
    (src / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    code, err = run("render", src, out, "--style", style, "--model", "microast")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "skipped" in lines[0] and "broken.png" in lines[0], err
    assert lines[1] == (f"streamer: error: 1 of 4 images could not be read and were skipped (broken.png); "
                        f"3 rendered into {out}")
    assert sorted(p.name for p in out.iterdir()) == ["avril.jpg", "lenna.jpg", "sailboat.jpg"]
    for name in ("avril.jpg", "lenna.jpg", "sailboat.jpg"):
        stylized = np.asarray(Image.open(out / name).convert("RGB"), dtype=float)
        source = np.asarray(Image.open(src / name).convert("RGB"), dtype=float)
        assert stylized.shape == source.shape and stylized.std() > 10  # a picture, not flat
        assert np.abs(stylized - source).mean() > 5  # and stylized
    assert parts(tmp_path) == []


def test_folder_refuses_existing_outputs_unless_overwrite(run, fake_model, photos, style, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "lenna.jpg").write_bytes(b"mine")
    code, err = run("render", photos, out, "--style", style)
    one_error(code, err, f"output exists: {out / 'lenna.jpg'}", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["lenna.jpg"] and (out / "lenna.jpg").read_bytes() == b"mine"
    assert fake_model.calls == 0  # refused before any work
    code, err = run("render", photos, out, "--style", style, "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["avril.jpg", "lenna.jpg", "sailboat.jpg"]
    Image.open(out / "lenna.jpg").load()


def test_folder_into_a_file_like_name_is_refused(run, fake_model, photos, style, tmp_path) -> None:
    for name in ("x.png", "x.mp4"):
        code, err = run("render", photos, tmp_path / name, "--style", style)
        one_error(code, err, "must be a folder, not a file name", name)
        assert not (tmp_path / name).exists()


def test_folder_with_nothing_readable_leaves_no_empty_folder(run, fake_model, style, tmp_path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(b"junk")
    out = tmp_path / "out"
    code, err = run("render", src, out, "--style", style)
    assert code == 2 and err.strip().splitlines()[-1].endswith("nothing was written"), err
    assert not out.exists()


# -- item 8: truncated video input ----------------------------------------------------------------------
def test_truncated_faststart_input_says_how_many_frames(run, fake_model, clip, style, tmp_path) -> None:
    faststart = tmp_path / "faststart.mp4"
    with av.open(str(clip)) as src, av.open(str(faststart), "w", options={"movflags": "faststart"}) as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    data = faststart.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 4 // 10])  # the index is at the front, so the start still plays
    out = tmp_path / "out.mp4"
    code, err = run("render", cut, out, "--style", style)
    line = one_error(code, err, f"{cut} ended early", "of the 240 frames its container announces", f"{out} holds")
    n = int(re.search(r"(\d+) of the 240", line).group(1))
    assert 0 < n < 240 and count_frames(out) == n
    assert parts(tmp_path) == []


def test_missing_frames_is_exact_for_counted_and_lenient_for_estimated() -> None:
    def info(frames: int, exact: bool) -> VideoInfo:
        return VideoInfo(64, 64, 24, 1 / 24, frames, frames / 24, False, frames_exact=exact)

    assert video.missing_frames(239, info(240, True), None) == 1
    assert video.missing_frames(240, info(240, True), None) == 0
    assert video.missing_frames(10, info(240, True), 10) == 0  # --max-frames asked for 10
    assert video.missing_frames(238, info(240, False), None) == 0  # duration x rate, off by two
    assert video.missing_frames(100, info(240, False), None) == 140
    assert video.missing_frames(5, info(0, False), None) == 0  # nothing announced


# -- item 9: two runs, one output ----------------------------------------------------------------------
def test_second_render_to_the_same_output_refuses(run, fake_model, clip, style, weights_dir, tmp_path) -> None:
    out = tmp_path / "same.mp4"
    first = streamer_process("render", clip, out, "--style", style, "--size", "64", "--model", "microast",
                             weights_dir=weights_dir)
    seen = wait_for(first, r"\b[1-9]\d*/240")
    code, err = run("render", clip, out, "--style", style, "--max-frames", "3", "--overwrite")
    one_error(code, err, f"{out} is being written by another streamer process")
    assert fake_model.calls == 0
    first.send_signal(signal.SIGTERM)  # end the first one early; its file must be intact
    code, lines = finish(first, seen)
    assert code == 143, lines
    n = int(re.search(r"first (\d+) frames", " ".join(lines)).group(1))
    assert count_frames(out) == n and parts(tmp_path) == []


def test_second_live_recording_to_the_same_file_refuses_before_the_model(run, style, tmp_path) -> None:
    rec = tmp_path / "rec.mp4"
    held = AtomicOutput(rec)  # as another streamer process recording there holds it
    with stand_in_model(InvertingStylizer()) as stand_in:
        code, err = run("live", "--source", "test", "--record", rec, "--no-stdin", "--max-frames", "2", "--style",
                        style)
    assert stand_in.built == 0, "model built"
    one_error(code, err, f"{rec} is being written by another streamer process")
    held.discard()
    assert list(tmp_path.iterdir()) == []


def test_output_lock_refuses_a_second_writer_and_frees_on_close(tmp_path) -> None:
    target = tmp_path / "a.png"
    held = AtomicOutput(target)
    with pytest.raises(InputError, match="being written by another streamer process"):
        AtomicOutput(target)
    held.tmp_path.write_bytes(b"done")
    held.commit()
    assert target.read_bytes() == b"done" and not part_path(target).exists()
    with pytest.raises(InputError, match="output exists"):
        AtomicOutput(target, overwrite=False)
    assert not part_path(target).exists()
    folder = FolderLock(tmp_path)
    with pytest.raises(InputError, match="being written by another"):
        FolderLock(tmp_path)
    folder.close()
    FolderLock(tmp_path).close()


def test_stale_part_of_the_same_name_is_replaced(tmp_path) -> None:
    target = tmp_path / "b.png"
    part_path(target).write_bytes(b"x" * 1000)  # left by a killed run: nobody holds its lock
    from streamer.imageio import save_image

    save_image(target, np.full((8, 8, 3), 100, np.uint8))
    assert np.asarray(Image.open(target)).mean() == 100 and parts(tmp_path) == []


def test_a_signal_inside_a_recording_write_still_leaves_a_playable_recording(tmp_path) -> None:
    """SIGTERM/Ctrl-C can land while a frame is handed to the recording; the frames before it must still be saved.
    (The encoder runs on the recording's own thread, which signals never interrupt: Python delivers them to the
    main thread, here inside ``send``.)"""
    from streamer.sinks import Recording

    out = tmp_path / "rec.mp4"
    rec = Recording(out, 64, 48, 30.0)
    frame = np.full((48, 64, 3), 120, np.uint8)
    rec.send(frame, 0.0)
    real_put = rec.queue.put_nowait

    def interrupted_put(item):
        real_put(item)
        raise KeyboardInterrupt  # what the signal handler raises, here just after the frame was queued

    rec.queue.put_nowait = interrupted_put
    with pytest.raises(KeyboardInterrupt):
        rec.send(frame, 0.1)
    rec.close()
    assert out.exists() and count_frames(out) >= 1
    assert parts(tmp_path) == []


def test_a_recordings_first_picture_is_kept_while_its_sound_starts_the_encoder(tmp_path, monkeypatch) -> None:
    """The sound thread and the live loop both start a recording's thread on their first send, whichever comes
    first; a picture sent while the sound's start was under way was counted as dropped (and warned about)."""
    from streamer.sinks import AudioChunk, Recording

    slow_start = threading.Thread.start

    def start_slowly(thread: threading.Thread) -> None:
        time.sleep(0.2)  # a busy machine: the other sender arrives meanwhile
        slow_start(thread)

    out = tmp_path / "rec.mkv"
    rec = Recording(out, 64, 48, 30.0, sound=True)
    monkeypatch.setattr(threading.Thread, "start", start_slowly)
    sound = threading.Thread(target=rec.send_audio, args=(AudioChunk(np.zeros((960, 2), np.float32), 0.0),))
    slow_start(sound)
    time.sleep(0.05)
    rec.send(np.full((48, 64, 3), 120, np.uint8), 0.0)
    sound.join()
    monkeypatch.undo()
    rec.close()
    assert rec.dropped == 0 and rec.frames == 1
    assert count_frames(out) == 1


def test_after_a_stop_signal_the_command_line_keeps_ignoring_more_of_them() -> None:
    """The process's own block (console_main's): a second SIGTERM after the outputs are finished, while the
    process exits, must not kill it (its exit status would be the signal's instead of 143); an in-process
    caller's block gives its handlers back."""
    before, before_hup = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    try:
        with pytest.raises(Interrupted):
            with stop_signals_interrupt(stay_after_stop=True):
                with stop_signals_interrupt():  # main()'s own block inside it
                    signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGHUP, before_hup)
    with pytest.raises(Interrupted):
        with stop_signals_interrupt():
            signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before  # the Python API, a test: their handler is back
    with stop_signals_interrupt(stay_after_stop=True):  # no signal: the handlers are given back
        pass
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("when", ["before the thread runs", "while it comes up"])
def test_a_signal_inside_a_threads_start_still_lets_the_clean_up_finish(monkeypatch, when: str) -> None:
    """Ctrl-C right after `render` starts its pipeline landed inside Thread.start(): the clean-up's join raised
    RuntimeError ("cannot join thread before it is started") and the user got "internal error", exit 1, instead
    of the interrupted render's file and exit 130 (CI's fresh-clone run caught it)."""
    from streamer.pipeline import ThreadedPipeline

    real_start = threading.Thread.start
    calls = []

    def start_then_a_signal(thread: threading.Thread) -> None:
        calls.append(thread.name)
        if len(calls) == 2:
            if when == "while it comes up":
                real_start(thread)
                thread._started.clear()  # noqa: SLF001 - as seen while start() still waits for it
                real_start(threading.Timer(0.05, thread._started.set))  # noqa: SLF001
            raise KeyboardInterrupt
        real_start(thread)

    pipeline = ThreadedPipeline(iter(range(1000)), [lambda x: x + 1, lambda x: x * 2])
    monkeypatch.setattr(threading.Thread, "start", start_then_a_signal)
    with pytest.raises(KeyboardInterrupt):
        with pipeline:
            for _ in pipeline:
                pass
    monkeypatch.undo()
    assert len(calls) == 2  # the third thread was never started
    assert not any(t.is_alive() for t in pipeline.threads)


def test_finishing_a_whole_output_takes_the_first_signal_as_a_stop_and_a_second_ctrl_c_at_once() -> None:
    from streamer.signals import finishing

    with stop_signals_interrupt():
        with finishing() as late:
            signal.raise_signal(signal.SIGTERM)  # recorded: the file is finished all the same
            signal.raise_signal(signal.SIGHUP)  # ignored
        assert late.signum == signal.SIGTERM and isinstance(late.interrupt(), Interrupted)
        signal.raise_signal(signal.SIGTERM)  # the command's own handler knows it is stopping: ignored too
    with pytest.raises(KeyboardInterrupt):
        with finishing() as late:
            signal.raise_signal(signal.SIGINT)
            assert late.signum == signal.SIGINT
            signal.raise_signal(signal.SIGINT)  # a second Ctrl-C: the user insists
    with finishing() as late:
        pass
    assert late.interrupt() is None and signal.getsignal(signal.SIGINT) is signal.default_int_handler
