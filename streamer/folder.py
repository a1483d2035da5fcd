"""`streamer render FOLDER OUTDIR`: every image and every video of a folder, into a folder of the same names.

One rule for the local render and the cluster (streamer.cluster): images and videos are rendered (a video
keeps its name where its container can hold the output, else it becomes ``NAME.mp4``); a file that cannot be
read is skipped with a warning, the others rendered, and the run ends with one summary line and exit 2; an
existing output stops the run before any work unless ``--overwrite``; a second run into the same folder
refuses (a folder lock); Ctrl-C/SIGTERM/SIGHUP keep the files finished so far.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from engines.backends.switch import EngineSpans, current_label
from engines.errors import InputError
from engines.progress import tqdm_disable
from streamer.encoding import CONTAINERS, Encoding, check_output
from streamer.fileutil import AtomicOutput, FolderLock, make_output_folder, refuse_same_file
from streamer.imageio import check_output_size, image_size, is_image_path, list_images, not_files, save_image
from streamer.job import Job
from streamer.options import (build_stylizer, finish_background_build, fit_short_side, load_styles, mixed_code,
                              run_inputs)
from streamer.signals import Interrupted, exit_code, signal_number, stopped_by
from streamer.stills import render_file
from streamer.temporal import make_temporal
from streamer.video import check_max_frames, is_video_path, render_video_file
from streamer.videoread import open_video

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FolderTask:
    """One file of the folder: ``kind`` "image" or "video", where it is read and where it is written."""

    kind: str
    src: Path
    dst: Path


def folder_tasks(src: Path, dst: Path) -> list[FolderTask]:
    """Every image and video in ``src`` -> its output in ``dst``; checks only (the folder is made when rendering)."""
    images = list_images(src)
    videos = sorted(p for p in src.iterdir() if p.is_file() and is_video_path(p) and not p.name.startswith("."))
    if not images and not videos:
        raise InputError(f"no images or videos in folder {src}")
    if dst.exists() and not dst.is_dir():
        raise InputError(f"output for a folder must be a folder: {dst}")
    if not dst.exists() and (is_image_path(dst) or is_video_path(dst)):
        raise InputError(f"output for a folder must be a folder, not a file name: {dst} (give a folder name, "
                         "e.g. without the extension)")
    tasks = [FolderTask("image", p, dst / p.name) for p in images]
    tasks += [FolderTask("video", p, dst / (p.name if p.suffix.lower() in CONTAINERS else f"{p.stem}.mp4"))
              for p in videos]
    return tasks


def check_folder_outputs(tasks: list[FolderTask], folder: Path, job: Job, style_paths: list[Path], encoding: Encoding,
                         overwrite: bool, max_frames: int | None = None) -> None:
    """Before any work: no output is an input (a file of the folder itself, a style, the mask...), whatever
    ``--overwrite`` says; none is there already unless ``--overwrite``; the folder's videos take the encoder
    flags and ``--max-frames`` as a single video render takes them (checked the same way, once per container)."""
    if job.mask:
        raise InputError("--mask works with a single image, not a folder")
    videos = [t for t in tasks if t.kind == "video"]
    if videos:
        check_max_frames(max_frames)
    inputs = [*(("input file", t.src) for t in tasks), *run_inputs(job, style_paths)]
    refuse_same_file([t.dst for t in tasks], inputs)
    refuse_existing([t.dst for t in tasks], folder, overwrite)
    for suffix in dict.fromkeys(t.dst.suffix.lower() for t in videos):  # the folder may not be there yet: a name
        encoding.for_output(Path(f"video{suffix}"))


def refuse_existing(outputs: list[Path], folder: Path, overwrite: bool) -> None:
    """A folder render stops before any work if an output is there already, unless ``--overwrite``."""
    existing = [] if overwrite else [d for d in outputs if d.exists()]
    if existing:
        more = f" and {len(existing) - 1} more in {folder}" if len(existing) > 1 else ""
        raise InputError(f"output exists: {existing[0]}{more} (use --overwrite to replace them)")


def skipped_summary(skipped: list[str], total: int, done: int, dst: Path, what: str = "images") -> str:
    """The last line of a folder render that skipped files it could not read."""
    names = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
    rest = f"{done} rendered into {dst}" if done else "nothing was written"
    return f"{len(skipped)} of {total} {what} could not be read and were skipped ({names}); {rest}"


def files_word(tasks: list[FolderTask]) -> str:
    return "files" if any(t.kind == "video" for t in tasks) else "images"


class FolderOutput:
    """The output folder, made if needed and locked for the run (a second folder render into it refuses); on
    close the lock goes, and a folder we made that holds nothing is removed again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.created = make_output_folder(folder)
        try:
            self.lock = FolderLock(folder)
        except BaseException:
            self._remove_if_empty()
            raise
        self.written = 0

    def _remove_if_empty(self) -> None:
        if self.created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()

    def close(self) -> None:
        self.lock.close()
        if not self.written:
            self._remove_if_empty()


def render_video_task(stylizer, task: FolderTask, code, job: Job, encoding: Encoding, max_frames: int | None = None,
                      output: AtomicOutput | None = None):
    """One video of a folder, the way `render IN.mp4 OUT.mp4` renders it; returns its RenderStats."""
    container, info = open_video(task.src)
    container.close()
    size = fit_short_side(job.size, info.height, info.width, task.src.name)
    return render_video_file(task.src, task.dst, stylizer, code, job.alpha, job.preserve_color,
                             codec=check_output(task.dst, encoding.codec), crf=encoding.crf, progress=False,
                             temporal=make_temporal(job), max_frames=max_frames, size=size, preset=encoding.preset,
                             output=output, upscale=job.upscale)


def render_folder(job: Job, src: Path, dst: Path, style_paths: list[Path], encoding: Encoding = Encoding(), *,
                  overwrite: bool = False, max_frames: int | None = None) -> int:
    """Every image and video of ``src`` into ``dst`` (see the module's rules)."""
    tasks = folder_tasks(src, dst)
    check_folder_outputs(tasks, dst, job, style_paths, encoding, overwrite, max_frames)
    what = files_word(tasks)
    skipped: list[tuple[Path, str]] = []
    for path, kind in not_files(src):  # never opened: a FIFO would block the render
        log.warning("skipped: %s is %s", path, kind)
        skipped.append((path, kind))
    total = len(tasks) + len(skipped)
    look = {"size": job.size, "alpha": job.alpha, "upscale": job.upscale, "keep_color": job.preserve_color}
    spans = EngineSpans(what)  # which engine made which files (the fast one may take over part way)
    stylizer = None
    out = FolderOutput(dst)  # made and locked: closed by the block right after it
    try:
        stylizer = build_stylizer(job, background=True)  # the first files on torch while OpenVINO builds
        code = mixed_code(load_styles(style_paths, stylizer, job.style_size, job.weights_dir), job.style_weights)
        with logging_redirect_tqdm():  # log lines (a skipped file) on their own line, not through the bar
            for task in tqdm(tasks, desc="render", unit="file", disable=tqdm_disable(len(tasks) > 1)):
                output = AtomicOutput(task.dst, overwrite=overwrite)
                try:
                    if task.kind == "video":
                        stats = render_video_task(stylizer, task, code, job, encoding, max_frames, output)
                        if stats.interrupted:  # a playable, shorter video is there: then stop like Ctrl-C
                            out.written += 1
                            raise Interrupted(stats.signum)
                        log.info("wrote %s (%d frames)", task.dst, stats.frames)
                    else:
                        check_output_size(task.dst, *image_size(task.src, "input image"))
                        rgb, alpha_channel = render_file(stylizer, task.src, code, **look)
                        save_image(task.dst, rgb, alpha_channel, output=output)
                        spans.note(current_label(stylizer))
                        log.info("wrote %s (%dx%d)", task.dst, rgb.shape[1], rgb.shape[0])
                except InputError as exc:  # this file only: say so, go on with the others
                    log.warning("skipped: %s", exc)
                    skipped.append((task.src, str(exc)))
                    continue
                finally:
                    output.discard()  # a no-op once saved
                out.written += 1
    except KeyboardInterrupt as exc:
        signum = signal_number(exc)
        kept = f"{out.written} of {total} {what} are in {dst}" if out.written else f"no {what[:-1]} was finished"
        finish_background_build(stylizer, wait=False)
        print(f"streamer: interrupted{stopped_by(signum)}: {kept}", file=sys.stderr)
        return exit_code(signum)
    except BaseException:
        finish_background_build(stylizer, wait=False)
        raise
    finally:
        out.close()
    if skipped:
        finish_background_build(stylizer, wait=False)
        raise InputError(skipped_summary([p.name for p, _ in skipped], total, out.written, dst, what))
    log.info("wrote %d %s into %s%s", out.written, what, dst, f"; engine {spans.text()}" if spans.text() else "")
    finish_background_build(stylizer)
    return 0
