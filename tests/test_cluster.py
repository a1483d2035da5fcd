"""`streamer render --cluster`: a real Ray cluster on 127.0.0.1 (a head and a worker node, each its own processes).

The cluster is started once per module with `ray start --block` in a new session each, and stopped by killing
exactly those process groups. Renders are small (--size 64, microast); the chunked render is compared with the
single-process one frame by frame.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from tests.conftest import ROOT

ray = pytest.importorskip("ray")
RAY = Path(sys.executable).with_name("ray")
STYLE = "antimonocromatismo.jpg"
#: x264 at --crf 0 is lossless, so the chunked and the single-process render differ only where the engine does
#: (threads): per-frame mean absolute difference, 0..255
LOSSLESS_BOUND = 0.5
#: at the default --crf 18 the encoders' own decisions differ (GOP restarts at chunk starts, thread counts)
LOSSY_BOUND = 2.5


#: a private test cluster with token authentication on, set up as Ray's docs say (`ray get-auth-token --generate`,
#: RAY_AUTH_MODE=token on every node), the token in a private HOME (the cluster fixture sets HOME here). The
#: drivers get neither RAY_AUTH_MODE nor RAY_AUTH_TOKEN: they find the token file as a Ray user's client would.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"ray head did not listen on {port}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL, each process group we started (ray start --block and all it spawned), until empty."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        for p in procs:
            if _group_alive(p.pid):
                os.killpg(p.pid, sig)
        end = time.monotonic() + wait
        while time.monotonic() < end and any(_group_alive(p.pid) for p in procs):
            for p in procs:
                p.poll()  # reap the group leaders
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster_address():
    if not RAY.exists():
        pytest.skip("the ray command is not installed")
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    home = tempfile.mkdtemp(prefix="rayhome")
    RAY_ENV["HOME"] = home
    env = {**os.environ, "PYTHONPATH": str(ROOT), **RAY_ENV, "RAY_AUTH_MODE": "token"}
    subprocess.run([str(RAY), "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    assert (Path(home) / ".ray" / "auth_token").is_file()
    common = ["--block", "--num-cpus", "1", "--object-store-memory", str(200 << 20), "--disable-usage-stats"]
    procs = [subprocess.Popen([str(RAY), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                               "--include-dashboard", "false", "--temp-dir", tmp, *common], env=env,
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        _wait_port(port, time.monotonic() + 90)
        procs.append(subprocess.Popen([str(RAY), "start", "--address", f"127.0.0.1:{port}", "--node-ip-address",
                                       "127.0.0.1", *common], env=env, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield f"127.0.0.1:{port}"
    finally:
        _stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        RAY_ENV.pop("HOME", None)


def _env(extra: dict | None = None) -> dict:
    env = {**os.environ, **RAY_ENV, **(extra or {})}
    if "RAY_AUTH_MODE" not in (extra or {}):
        env.pop("RAY_AUTH_MODE", None)  # Ray's default
    return env


def _cmd(args: list[str], worker: str | None = None, quiet: bool = True) -> list[str]:
    """The render command line; ``worker``: a test worker (tests.cluster_workers: private, fault:MARKER)."""
    head = [sys.executable, "-m", "streamer"] if worker is None else [sys.executable, "-m", "tests.cluster_workers",
                                                                      worker]
    return [*head, *(["-q"] if quiet else []), "render", *args]


def _render(args: list[str], env: dict | None = None, timeout: int = 240, worker: str | None = None
            ) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(args, worker), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=_env(env))


def _common(media: Path, weights_dir: Path) -> list[str]:
    return ["--style", str(media / "style" / STYLE), "--size", "64", "--model", "microast", "--weights-dir",
            str(weights_dir)]


def _read(path: Path) -> tuple[list[int], list[np.ndarray], list[bytes]]:
    with av.open(str(path)) as c:
        frames = [(f.pts, f.to_ndarray(format="rgb24").astype(np.int16)) for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        audio = [bytes(p) for p in c.demux(audio=0) if p.size]
    return [p for p, _ in frames], [f for _, f in frames], audio


def _assert_same_render(local: Path, chunked: Path, bound: float) -> None:
    pts_a, frames_a, audio_a = _read(local)
    pts_b, frames_b, audio_b = _read(chunked)
    assert len(frames_b) == len(frames_a) == 240
    assert pts_b == pts_a
    assert audio_a and audio_b == audio_a
    diffs = [float(np.abs(a - b).mean()) for a, b in zip(frames_a, frames_b)]
    assert max(diffs) < bound, diffs
    assert float(np.std(frames_b[100])) > 5  # a picture, not a flat frame


@pytest.fixture(scope="module")
def local_lossless(tmp_path_factory, clip, media, weights_dir) -> Path:
    out = tmp_path_factory.mktemp("local") / "local.mp4"
    r = _render([str(clip), str(out), *_common(media, weights_dir), "--crf", "0"])
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
def test_cluster_video_equals_single_process(cluster_address, local_lossless, clip, media, weights_dir, tmp_path):
    out = tmp_path / "cluster.mp4"
    r = _render([str(clip), str(out), *_common(media, weights_dir), "--crf", "0", "--cluster", cluster_address,
                 "--workers", "2", "--chunk-frames", "70"])
    assert r.returncode == 0, r.stderr
    assert "error" not in r.stderr
    _assert_same_render(local_lossless, out, LOSSLESS_BOUND)
    assert not list(tmp_path.glob(".*"))  # no chunk folder or temp file left


@pytest.mark.slow
def test_cluster_without_shared_filesystem_sends_bytes(cluster_address, local_lossless, clip, media, weights_dir,
                                                       tmp_path):
    out = tmp_path / "cluster.mp4"
    r = _render([str(clip), str(out), *_common(media, weights_dir), "--crf", "0", "--cluster", cluster_address,
                 "--workers", "2", "--chunk-frames", "80"], worker="private")
    assert r.returncode == 0, r.stderr
    _assert_same_render(local_lossless, out, LOSSLESS_BOUND)


@pytest.mark.slow
def test_cluster_worker_killed_mid_chunk(cluster_address, local_lossless, clip, media, weights_dir, tmp_path):
    marker = tmp_path / "kill-me"
    marker.write_text("")
    out = tmp_path / "cluster.mp4"
    r = _render([str(clip), str(out), *_common(media, weights_dir), "--crf", "0", "--cluster", cluster_address,
                 "--workers", "2", "--chunk-frames", "70"], worker=f"fault:{marker}")
    assert r.returncode == 0, r.stderr
    assert not marker.exists()  # a worker claimed it and killed its own process during a chunk
    _assert_same_render(local_lossless, out, LOSSLESS_BOUND)


class _Driver:
    """A cluster render in a subprocess whose stderr is read line by line (its log says when a chunk is done)."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(_cmd(args, quiet=False), cwd=ROOT, env=_env(), stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 240) -> None:
        """Until the driver logs a line with ``text`` (its own word that the work is done, never a guess)."""
        while True:
            line = self.lines.get(timeout=timeout)
            assert line is not None, "\n".join(self.seen)
            self.seen.append(line)
            if text in line:
                return

    def finish(self, timeout: float = 120) -> str:
        self.proc.wait(timeout=timeout)
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return "\n".join(self.seen)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cluster_stop_signal_leaves_the_finished_prefix(cluster_address, clip, media, weights_dir, tmp_path, sig):
    out = tmp_path / "cluster.mp4"
    driver = _Driver([str(clip), str(out), *_common(media, weights_dir), "--cluster", cluster_address, "--workers",
                      "2", "--chunk-frames", "24"])
    try:
        driver.wait_for("chunk 1 of 10 done")  # logged after the driver stored chunk 0
        driver.proc.send_signal(sig)
        err = driver.finish()
    finally:
        driver.kill()
    assert driver.proc.returncode == 128 + sig, err
    line = [x for x in err.splitlines() if x.startswith("streamer: interrupted")]
    by = "" if sig == signal.SIGINT else f" by {sig.name}"
    assert line and line[-1].startswith(f"streamer: interrupted{by}: ") and "and plays" in line[-1], err
    assert "Traceback" not in err and "***" not in err, err  # no Python or native stack dump
    pts, frames, audio = _read(out)
    assert 24 <= len(frames) < 240 and len(frames) % 24 == 0  # whole chunks, from the start
    with av.open(str(clip)) as c:
        src_pts = sorted(p.pts for p in c.demux(video=0) if p.pts is not None)
    assert pts == src_pts[:len(frames)] and audio
    assert not list(tmp_path.glob(".*"))


@pytest.mark.slow
def test_cluster_run_killed_leaves_chunks_the_next_run_takes_over(cluster_address, clip, media, weights_dir, tmp_path):
    out = tmp_path / "cluster.mp4"
    args = [str(clip), str(out), *_common(media, weights_dir), "--cluster", cluster_address, "--workers", "2",
            "--chunk-frames", "24", "--max-frames", "96"]
    driver = _Driver(args)
    try:
        driver.wait_for("chunk 1 of 4 done")
        driver.proc.send_signal(signal.SIGKILL)  # no clean-up at all
        driver.finish()
    finally:
        driver.kill()
    assert (tmp_path / ".cluster.mp4.chunks").is_dir() and not out.exists()
    r = _render(args)
    assert r.returncode == 0, r.stderr
    assert len(_read(out)[1]) == 96
    assert not list(tmp_path.glob(".*"))  # the stale chunk folder and .part were taken over and removed


def _flicker(src: Path, video: Path) -> float:
    r = subprocess.run([sys.executable, "-m", "streamer", "-q", "eval", "flicker", str(src), str(video), "--json",
                        "--max-frames", "120"],
                       cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    return data["videos"][0]["warping_error"] if "videos" in data else data["warping_error"]


@pytest.mark.slow
def test_cluster_temporal_flicker_matches(cluster_address, clip, media, weights_dir, tmp_path):
    local, chunked = tmp_path / "local.mp4", tmp_path / "cluster.mp4"
    common = [*_common(media, weights_dir), "--temporal"]
    common += ["--max-frames", "120"]  # the flow of the evaluation is the slow part
    assert _render([str(clip), str(local), *common]).returncode == 0
    r = _render([str(clip), str(chunked), *common, "--cluster", cluster_address, "--workers", "2",
                 "--chunk-frames", "40"])
    assert r.returncode == 0, r.stderr
    a, b = _flicker(clip, local), _flicker(clip, chunked)
    assert abs(b - a) <= 0.05 * a, (a, b)


@pytest.mark.slow
def test_cluster_folder_of_clips_and_images(cluster_address, clip, media, weights_dir, tmp_path):
    src, dst = tmp_path / "in", tmp_path / "newdir"  # the output folder does not exist yet
    src.mkdir()
    images = sorted((media / "content").glob("*.jpg"))[:2]
    for p in images:
        shutil.copy(p, src / p.name)
    shutil.copy(clip, src / "a.mp4")
    shutil.copy(clip, src / "b.mkv")
    (src / "broken.jpg").write_bytes(b"not an image")
    args = [str(src), str(dst), *_common(media, weights_dir), "--max-frames", "12", "--cluster", cluster_address,
            "--workers", "2"]
    r = _render(args)  # an unreadable file is skipped, the others rendered, one summary line and exit 2
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("streamer: error: 1 of 5 files could not be read and were skipped (broken.jpg); "
                           "4 rendered into"), r.stderr
    assert not (dst / "broken.jpg").exists()
    from PIL import Image

    with Image.open(dst / images[1].name) as im, Image.open(images[1]) as orig:
        assert im.size == orig.size
        assert np.asarray(im).std() > 5
    for name in ("a.mp4", "b.mkv"):
        pts, frames, audio = _read(dst / name)
        assert len(frames) == 12 and audio
    assert not list(dst.glob(".*"))
    kept = (dst / images[0].name).read_bytes()
    r = _render(args)  # the local folder's rule: an existing output stops the run first
    assert r.returncode == 2 and "output exists" in r.stderr.strip().splitlines()[-1], r.stderr
    assert (dst / images[0].name).read_bytes() == kept


def test_cluster_nothing_listening_fails_fast(clip, media, weights_dir, tmp_path):
    t0 = time.monotonic()
    r = _render([str(clip), str(tmp_path / "o.mp4"), *_common(media, weights_dir), "--cluster",
                 f"127.0.0.1:{_free_port()}"])
    assert r.returncode == 3
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamer: error: no Ray cluster answers at 127.0.0.1:")
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "o.mp4").exists()


def test_cluster_without_ray_says_how_to_install(clip, media, weights_dir, tmp_path, monkeypatch, capsys):
    from streamer.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(["render", str(clip), str(tmp_path / "o.mp4"), *_common(media, weights_dir), "--cluster", "local"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert err == ["streamer: error: --cluster needs Ray, which is not installed: pip install 'streamer[cluster]'"]


# -- the chunk plan (pure, no Ray) -------------------------------------------------------------------
def test_chunk_bounds_snap_to_near_keyframes_only():
    from streamer.cluster.chunks import chunk_bounds

    assert chunk_bounds(240, (0, 235), 80) == [0, 80, 160, 240]  # keyframe 235 is not near a boundary
    assert chunk_bounds(240, (0, 75, 170), 80) == [0, 75, 170, 240]  # within a quarter chunk: moved onto them
    assert chunk_bounds(10, (0,), 80) == [0, 10]


def test_plan_chunks_seek_warmup_and_end():
    from streamer.cluster.chunks import FrameIndex, plan_chunks

    pts = tuple(range(0, 512 * 100, 512))
    plan = plan_chunks(FrameIndex(pts, (0, 50)), 30, warmup=12, max_frames=80)
    assert [(c.first, c.stop) for c in plan] == [(0, 30), (30, 60), (60, 80)]
    first, second, third = plan
    assert (first.seek_pts, first.warm_pts, first.start_pts) == (0, 0, 0)
    assert (second.seek_pts, second.warm_pts, second.start_pts, second.end_pts) == (0, 18 * 512, 30 * 512, 60 * 512)
    assert (third.seek_pts, third.warm_pts) == (0, 48 * 512)  # keyframe 50 is after the warm-up's start
    assert plan_chunks(FrameIndex(pts, (0, 50)), 30, warmup=0, max_frames=80)[2].seek_pts == 50 * 512
    assert third.end_pts == 80 * 512 and third.is_after(80 * 512) and not third.is_after(79 * 512)


def test_cluster_address_forms():
    from engines.errors import InputError
    from streamer.cluster.connect import host_port

    assert host_port("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert host_port("ray://head:10001") == ("head", 10001)
    assert host_port("auto") is None and host_port("local") is None
    with pytest.raises(InputError):
        host_port("head")


# -- joining: addresses, tokens, fast failures ------------------------------------------------------
def test_cluster_auto_with_a_dead_address_fails_fast(clip, media, weights_dir, tmp_path):
    t0 = time.monotonic()
    r = _render([str(clip), str(tmp_path / "o.mp4"), *_common(media, weights_dir), "--cluster", "auto"],
                env={"RAY_ADDRESS": f"127.0.0.1:{_free_port()}"})
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("streamer: error: no Ray cluster answers at 127.0.0.1:"), r.stderr
    assert "(--cluster auto)" in lines[0]
    assert time.monotonic() - t0 < 60
    assert not list(tmp_path.iterdir())


def test_cluster_auto_with_a_stale_cluster_file_fails_fast(clip, media, weights_dir, tmp_path, monkeypatch, capsys):
    from streamer.cli import main
    from streamer.cluster import connect

    stale = tmp_path / "ray_current_cluster"
    stale.write_text(f"127.0.0.1:{_free_port()}")  # what Ray leaves after its cluster is gone
    monkeypatch.setattr(connect, "RAY_CURRENT_CLUSTER", stale)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "o.mp4"
    code = main(["-q", "render", str(clip), str(out), *_common(media, weights_dir), "--cluster", "auto"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and err[0].startswith("streamer: error: no Ray cluster answers at"), err
    stale.unlink()
    code = main(["-q", "render", str(clip), str(out), *_common(media, weights_dir), "--cluster", "auto"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and err == ["streamer: error: --cluster auto found no Ray cluster: RAY_ADDRESS is not set and no "
                                 "cluster was started on this machine; give --cluster host:port, or use --cluster "
                                 "local"], err
    assert not out.exists()


@pytest.mark.slow
def test_cluster_token_missing_or_wrong_is_one_line(cluster_address, clip, media, weights_dir, tmp_path):
    common = [str(clip), str(tmp_path / "o.mp4"), *_common(media, weights_dir), "--cluster", cluster_address]
    r = _render(common, env={"HOME": str(tmp_path)})  # no token anywhere
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 3 and len(lines) == 1, r.stderr
    assert lines[0] == (f"streamer: error: the Ray cluster at {cluster_address} wants a token and none was found: set "
                        "RAY_AUTH_TOKEN, or put the cluster's token (`ray get-auth-token` on the head) in "
                        "~/.ray/auth_token")
    r = _render(common, env={"RAY_AUTH_TOKEN": "0" * 64})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 3 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"streamer: error: the Ray cluster at {cluster_address} refused the token from "
                               "RAY_AUTH_TOKEN: it is not this cluster's token")
    assert not list(tmp_path.glob("*o.mp4*"))


# -- the same rules as a local render (issue 21 drifts) -----------------------------------------------
def test_cluster_video_clamps_size_like_a_local_render(clip, media, weights_dir, tmp_path):
    r = _render([str(clip), str(tmp_path / "o.mp4"), *_common(media, weights_dir), "--size", "4000",  # the last wins
                 "--cluster", f"127.0.0.1:{_free_port()}"])
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("streamer: --size 4000 is larger than the video's short side"), r.stderr
    assert r.returncode == 3 and lines[-1].startswith("streamer: error: no Ray cluster answers at")


def test_cluster_folder_takes_the_folder_lock(media, weights_dir, tmp_path):
    from streamer.fileutil import FolderLock

    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    dst.mkdir()
    shutil.copy(sorted((media / "content").glob("*.jpg"))[0], src / "a.jpg")
    lock = FolderLock(dst)  # a local folder render is writing into dst
    try:
        r = _render([str(src), str(dst), *_common(media, weights_dir), "--cluster", f"127.0.0.1:{_free_port()}"])
    finally:
        lock.close()
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"streamer: error: {dst} is being written by another streamer process "
                                             "right now; wait for it to finish or choose another output"]
    assert not list(dst.iterdir())


def test_cluster_worker_settings_are_typed_and_picklable():
    import pickle

    from streamer.cli import build_parser
    from streamer.cluster.driver import worker_settings
    from streamer.job import Job

    args = build_parser().parse_args(["render", "a.mp4", "b.mp4", "--style", "s.jpg", "--size", "96", "--temporal",
                                      "--crf", "20"])
    settings = worker_settings(args, Job.from_args(args))
    assert pickle.loads(pickle.dumps(settings)) == settings
    job, encoding = settings.job, settings.encoding
    assert (job.size, job.temporal, job.model, encoding.codec, encoding.crf) == (96, True, "auto", "auto", 20)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", ["8", "0"])
def test_cluster_damaged_input_follows_the_local_decoding_rule(cluster_address, media, weights_dir, tmp_path, chunk):
    """A first GOP that cannot be decoded: 36 of 48 frames, the warning and exit 2, as a local render says it
    (tests/test_timestamps.py), with small chunks (some hold no frame at all) or the automatic size."""
    from tests.test_timestamps import damaged_first_gop

    src = damaged_first_gop(tmp_path / "d.mp4")
    out = tmp_path / "o.mp4"
    r = _render([str(src), str(out), *_common(media, weights_dir), "--cluster", cluster_address, "--workers", "2",
                 "--chunk-frames", chunk])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert f"streamer: 1 damaged video packets in {src} were skipped" in lines, r.stderr
    assert lines[-1] == (f"streamer: error: {src} ended early (truncated or damaged): 36 of the 48 frames its "
                         f"container announces could be read; {out} holds those 36 and plays")
    with av.open(str(out)) as c:
        pts = [f.pts for f in c.decode(video=0)]
    decodable = []
    with av.open(str(src)) as c:
        for packet in c.demux(video=0):
            try:
                decodable += [f.pts for f in packet.decode()]
            except av.error.InvalidDataError:  # the damaged keyframe
                pass
    assert len(pts) == 36 and pts == decodable  # the frames that exist, on their own timestamps
    assert not list(tmp_path.glob(".*"))


@pytest.mark.slow
def test_cluster_local_ignores_a_stale_address_and_leaves_no_process(clip, media, weights_dir, tmp_path):
    """`--cluster local` starts its own cluster whatever RAY_ADDRESS says, and stops every process it started."""
    r = _render([str(clip), str(tmp_path / "o.mp4"), *_common(media, weights_dir), "--cluster", "local", "--workers",
                 "1", "--max-frames", "24"], env={"RAY_ADDRESS": f"127.0.0.1:{_free_port()}", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert len(_read(tmp_path / "o.mp4")[1]) == 24
    deadline = time.monotonic() + 30
    while _processes_with(f"HOME={tmp_path}") and time.monotonic() < deadline:
        time.sleep(0.5)  # Ray's processes end a moment after the driver
    assert not _processes_with(f"HOME={tmp_path}")


def _processes_with(variable: str) -> list[str]:
    """The command lines of running processes whose environment holds ``variable`` (NAME=VALUE): the driver's
    own HOME marks every process it started, Ray's included (they inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if variable.encode() in (entry / "environ").read_bytes().split(b"\0"):
                    found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return found


def test_a_chunk_folder_is_removed_even_if_a_worker_renames_a_file_into_it_meanwhile(tmp_path, monkeypatch) -> None:
    """After a stop, a worker can finish its chunk (rename it into the folder) while the driver removes the
    folder: one removal then leaves the folder and that chunk beside the user's output."""
    import shutil

    from streamer.cluster import driver

    work = driver.ChunkFolder(tmp_path / ".out.mp4.chunks")
    (work.path / ".chunk-00000.mp4.part").write_bytes(b"x" * 100)
    real_rmtree = shutil.rmtree
    late = []

    def rmtree_then_a_late_rename(path, ignore_errors=False):
        real_rmtree(path, ignore_errors=True)
        if not late:  # the worker's rename, a moment after the removal listed the folder
            late.append(True)
            path.mkdir(exist_ok=True)
            (path / "chunk-00000.mp4").write_bytes(b"x" * 100)

    monkeypatch.setattr(driver.shutil, "rmtree", rmtree_then_a_late_rename)
    work.remove()
    assert late and list(tmp_path.iterdir()) == []


def test_sigterm_while_ray_starts_is_a_stop_not_a_silent_exit_15(monkeypatch) -> None:
    """ray.init puts in its own SIGTERM handler (sys.exit(15)) while it starts or joins a cluster: a SIGTERM
    then ended the driver with status 15 and no message; it is streamer's stop (exit 143, one line)."""
    from types import SimpleNamespace

    from streamer import signals
    from streamer.cluster import connect

    def init(**_):
        raise SystemExit(signal.SIGTERM)  # what Ray's handler does with the signal

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setattr(connect, "token_source", lambda: None)
    fake_ray = SimpleNamespace(init=init, exceptions=SimpleNamespace(RayError=RuntimeError))
    try:
        with pytest.raises(signals.Interrupted) as info:
            connect.connect(fake_ray, "local", 1, 1 << 20, 0, {})
        assert info.value.signum == signal.SIGTERM
    finally:
        signals._received.clear()  # noqa: SLF001 - this process's next command starts afresh
