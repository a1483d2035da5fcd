"""`streamer train`: train a decoder for adain or adain-r31 with the paper's objective.

Two folders of images in, ``DIR/decoder.pth`` out (usable at once with ``--decoder``), plus an exact
``checkpoint.pth`` (``--resume``), ``losses.jsonl`` and a ``preview.png`` of the loss curves and a grid of
fixed content x style samples. The maths and the state of a run are in ``engines/training.py``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps
from tqdm import tqdm

from engines.errors import InputError
from engines.models import DECODER_FILES, MODELS, load_model
from engines.stylizer import resize_short_side
from engines.training import (DecoderTrainer, StepLosses, atomic_torch_save, batch_tensor, crop_at, read_checkpoint,
                              reset_decoder, sample_plan)
from streamer.imageio import IMAGE_SUFFIXES, is_image_path, save_image
from streamer.fileutil import AtomicOutput, refuse_same_file
from streamer.job import Job
from streamer.options import pick_device, run_inputs
from streamer.signals import exit_code, signal_number, stop_after_step, stopped_by

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pth"
DECODER = "decoder.pth"
LOSSES = "losses.jsonl"
PREVIEW = "preview.png"
#: the paper's (and pytorch-AdaIN's) settings; a resumed run keeps the ones it was started with
DEFAULTS: dict[str, Any] = {"init": "scratch", "batch_size": 8, "crop": 256, "content_size": 512, "lr": 1e-4,
                            "lr_decay": 5e-5, "style_weight": 10.0, "seed": 0}
#: resized images kept in memory (each about 1 MB at 512 px), so an image is decoded once per run
CACHE_BYTES = 1 << 30
PREVIEW_SAMPLES = 3


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train your own decoder (adain, adain-r31) on folders of images",
                       description="Train a decoder for a fixed VGG encoder with the AdaIN paper's objective.")
    p.add_argument("--model", required=True, choices=tuple(DECODER_FILES), help="the encoder to train a decoder for")
    p.add_argument("--content", required=True, metavar="DIR", help="content images (searched recursively)")
    p.add_argument("--style", required=True, metavar="DIR", help="style images (searched recursively)")
    p.add_argument("--out", required=True, metavar="DIR", help="where decoder.pth, checkpoint.pth, ... go")
    p.add_argument("--iterations", type=int, metavar="N", default=160_000, help="total iterations (default 160000)")
    p.add_argument("--batch-size", type=int, metavar="N", default=None, help="default 8")
    p.add_argument("--crop", type=int, metavar="N", default=None, help="random crop side in px (default 256)")
    p.add_argument("--content-size", type=int, metavar="N", default=None,
                   help="content and style images are resized to this short side before cropping (default 512)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-4)")
    p.add_argument("--lr-decay", type=float, default=None, help="lr / (1 + decay * iteration) (default 5e-5)")
    p.add_argument("--style-weight", type=float, default=None, help="default 10")
    p.add_argument("--seed", type=int, metavar="N", default=None, help="makes a run deterministic (default 0)")
    p.add_argument("--init", choices=("scratch", "released"), default=None,
                   help="start from random weights (default) or from the released decoder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="default: cuda if present (with mixed precision)")
    p.add_argument("--weights-dir", default=None, help="folder with weight files; also STREAMER_WEIGHTS_DIR")
    p.add_argument("--threads", type=int, metavar="N", default=0,
                   help="CPU threads for torch (0 = torch's default; 1 is fastest on a busy machine)")
    p.add_argument("--log-every", type=int, metavar="N", default=10,
                   help="a losses.jsonl line every N iterations (default 10)")
    p.add_argument("--checkpoint-every", type=int, metavar="N", default=1000,
                   help="checkpoint.pth and decoder.pth every N iterations, and at the end (default 1000)")
    p.add_argument("--preview-every", type=int, metavar="N", default=1000,
                   help="preview.png (loss curves, sample grid) every N iterations, and at the end (default 1000)")
    p.set_defaults(run=run)


# ------------------------------------------------------------------------------------------- data


def find_images(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Every image file under ``folder`` (recursively; hidden files and ``exclude``, the run's own
    output folder, left out), sorted."""
    found = []
    skip = exclude.resolve() if exclude is not None else None
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() != skip)
        found.extend(Path(root) / f for f in files if not f.startswith(".") and is_image_path(Path(f)))
    return sorted(found)


def _header_ok(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                return img.size[0] > 0 and img.size[1] > 0
    except Exception:  # PIL raises many kinds for a bad file; all mean "skip it"
        return False


def load_resized(path: Path, short_side: int) -> np.ndarray:
    """An image as (H, W, 3) uint8 RGB with its short side at ``short_side`` (JPEG decoded at a reduced scale)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            img.draft("RGB", (short_side, short_side))
            img = ImageOps.exif_transpose(img).convert("RGB")
            rgb = np.asarray(img)
    return resize_short_side(rgb, short_side)


class ImageSet:
    """The readable images of one folder, resized once and kept in memory; unreadable ones skipped and counted."""

    def __init__(self, folder: str | Path, what: str, short_side: int, exclude: Path | None = None) -> None:
        self.folder, self.what, self.short_side = Path(folder), what, short_side
        if not self.folder.exists():
            raise InputError(f"{what} folder not found: {self.folder}")
        if not self.folder.is_dir():
            raise InputError(f"{what} must be a folder of images, not a file: {self.folder}")
        candidates = find_images(self.folder, exclude)
        if not candidates:
            raise InputError(f"{what} folder {self.folder} has no images (searched recursively for "
                             f"{', '.join(IMAGE_SUFFIXES)})")
        self.paths = [p for p in candidates if _header_ok(p)]
        self.skipped = len(candidates) - len(self.paths)
        if not self.paths:
            raise InputError(f"{what} folder {self.folder} has no readable images "
                             f"({len(candidates)} image file(s), none could be read)")
        self._bad: set[int] = set()
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        """Image ``index``, or (deterministically) the next readable one if it cannot be decoded."""
        for step in range(len(self.paths)):
            i = (index + step) % len(self.paths)
            if i in self._bad:
                continue
            if i in self._cache:
                return self._cache[i]
            try:
                rgb = load_resized(self.paths[i], self.short_side)
            except Exception:  # a truncated or corrupt file found only when decoding
                log.warning("%s image %s cannot be read: skipped", self.what, self.paths[i])
                self._bad.add(i)
                self.skipped += 1
                continue
            if self._cached_bytes + rgb.nbytes <= CACHE_BYTES:
                self._cache[i] = rgb
                self._cached_bytes += rgb.nbytes
            return rgb
        raise InputError(f"{self.what} folder {self.folder} has no readable images")

    def describe(self) -> str:
        skipped = f" ({self.skipped} unreadable, skipped)" if self.skipped else ""
        return f"{self.what}: {len(self.paths) - len(self._bad)} images in {self.folder}{skipped}"


def make_batch(images: ImageSet, indices: np.ndarray, fracs: np.ndarray, crop: int) -> torch.Tensor:
    return batch_tensor([crop_at(images.image(int(i)), crop, f) for i, f in zip(indices, fracs)])


def fixed_samples(images: ImageSet, crop: int, count: int = PREVIEW_SAMPLES) -> torch.Tensor:
    """The first few images, centre-cropped at ``crop``: the same every preview, so progress is visible."""
    picks = [resize_short_side(images.image(i), crop) for i in range(min(count, len(images)))]
    return batch_tensor([crop_at(p, crop, (0.5, 0.5)) for p in picks])


# ------------------------------------------------------------------------------------------- preview

_COLOURS = {"total": (20, 20, 20), "content": (31, 119, 180), "style": (214, 39, 40)}


def loss_curves(records: list[dict[str, Any]], width: int, height: int, style_weight: float) -> Image.Image:
    """The logged losses against iteration (log scale), drawn with PIL: total, content, weighted style."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    size = max(10, width // 64)
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # a Pillow without FreeType: the small bitmap font
        font, size = ImageFont.load_default(), 10
    left, right, top, bottom = 5 * size + 6, 10, 2 * size + 2, 2 * size + 4
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    draw.rectangle((x0, y0, x1, y1), outline=(160, 160, 160))
    series = {"total": [r["total"] for r in records], "content": [r["content"] for r in records],
              "style": [style_weight * r["style"] for r in records]}
    values = [v for vs in series.values() for v in vs if v > 0 and math.isfinite(v)]
    if len(records) < 1 or not values:
        draw.text((x0 + 8, y0 + 8), "no losses logged yet", fill="black", font=font)
        return img
    lo, hi = math.log10(min(values)), math.log10(max(values))
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    its = [r["iteration"] for r in records]
    i_lo, i_hi = min(its), max(its)
    span = max(i_hi - i_lo, 1)

    def point(it: int, v: float) -> tuple[float, float]:
        y = (math.log10(max(v, 10 ** lo)) - lo) / (hi - lo)
        return x0 + (it - i_lo) / span * (x1 - x0), y1 - y * (y1 - y0)

    for frac in (0.0, 0.5, 1.0):
        y = y1 - frac * (y1 - y0)
        draw.text((4, y - size // 2), f"{10 ** (lo + frac * (hi - lo)):.3g}", fill="black", font=font)
    draw.text((x0, y1 + 4), f"iteration {i_lo}", fill="black", font=font)
    draw.text((x1 - draw.textlength(str(i_hi), font=font), y1 + 4), f"{i_hi}", fill="black", font=font)
    legend_x = x0
    for name, vs in series.items():
        pts = [point(it, v) for it, v in zip(its, vs)]
        if len(pts) > 1:
            draw.line(pts, fill=_COLOURS[name], width=2)
        else:
            draw.ellipse((pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2), fill=_COLOURS[name])
        label = f"{name} {vs[-1]:.3g}" if name != "style" else f"{style_weight:g} x style {vs[-1]:.3g}"
        draw.text((legend_x, 2), label, fill=_COLOURS[name], font=font)
        legend_x += 8 + int(draw.textlength(label, font=font))
    return img


def _to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).mul(255.0).add(0.5).clamp(0, 255).to(torch.uint8).numpy())


def sample_grid(trainer: DecoderTrainer, contents: torch.Tensor, styles: torch.Tensor) -> Image.Image:
    """Top row the styles, left column the contents, each cell g(AdaIN(f(c), f(s)))."""
    cell = contents.shape[-1]
    grid = Image.new("RGB", ((len(styles) + 1) * cell, (len(contents) + 1) * cell), "white")
    for j, s in enumerate(styles):
        grid.paste(_to_pil(s), ((j + 1) * cell, 0))
    for i, c in enumerate(contents):
        grid.paste(_to_pil(c), (0, (i + 1) * cell))
        out = trainer.render(c[None].expand(len(styles), -1, -1, -1), styles)
        for j in range(len(styles)):
            grid.paste(_to_pil(out[j]), ((j + 1) * cell, (i + 1) * cell))
    return grid


def write_preview(path: Path, trainer: DecoderTrainer, contents: torch.Tensor, styles: torch.Tensor,
                  records: list[dict[str, Any]], style_weight: float) -> None:
    grid = sample_grid(trainer, contents, styles)
    curves = loss_curves(records, grid.width, max(200, grid.width // 3), style_weight)
    sheet = Image.new("RGB", (grid.width, grid.height + curves.height), "white")
    sheet.paste(curves, (0, 0))
    sheet.paste(grid, (0, curves.height))
    save_image(path, np.asarray(sheet))


# ------------------------------------------------------------------------------------------- the run


def _resolve_config(args: argparse.Namespace, saved: dict[str, Any] | None) -> dict[str, Any]:
    """The run's settings: the defaults, or a resumed run's own; a flag that contradicts it is an error."""
    config: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        given = getattr(args, key)
        if saved is None:
            config[key] = default if given is None else given
            continue
        config[key] = saved[key]
        if given is not None and given != saved[key]:
            flag = "--" + key.replace("_", "-")
            raise InputError(f"--resume continues the run in {args.out} with {flag} {saved[key]}; "
                             f"drop {flag} {given} or train into another --out")
    for folder in ("content", "style"):
        path = str(Path(getattr(args, folder)).resolve())
        if saved is not None and saved.get(folder) != path:
            raise InputError(f"--resume continues the run in {args.out}, trained on --{folder} {saved.get(folder)}; "
                             f"pass that folder or train into another --out")
        config[folder] = path
    return config


def _check_numbers(args: argparse.Namespace, config: dict[str, Any], factor: int) -> None:
    for flag, value in (("--iterations", args.iterations), ("--batch-size", config["batch_size"]),
                        ("--log-every", args.log_every), ("--checkpoint-every", args.checkpoint_every),
                        ("--preview-every", args.preview_every)):
        if value < 1:
            raise InputError(f"{flag} must be at least 1, not {value}")
    crop = config["crop"]
    if crop < 2 * factor or crop % factor:
        raise InputError(f"--crop must be a multiple of {factor} and at least {2 * factor} px for {args.model}, "
                         f"not {crop}")
    if config["content_size"] < crop:
        raise InputError(f"--content-size ({config['content_size']}) must be at least --crop ({crop})")
    for flag, key, least in (("--lr", "lr", "greater than 0"), ("--lr-decay", "lr_decay", "0 or more"),
                             ("--style-weight", "style_weight", "0 or more")):
        value = config[key]  # nan fails every comparison: test for what is allowed, not for what is not
        if not (math.isfinite(value) and (value > 0 if key == "lr" else value >= 0)):
            raise InputError(f"{flag} must be a finite number {least}, not {value:g}")


def _prepare_out(out: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from in ``out``, or None for a new run (nothing is created yet)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out must be a folder, not a file: {out}")
    checkpoint = out / CHECKPOINT
    if resume:
        if not checkpoint.is_file():
            raise InputError(f"nothing to resume: {checkpoint} does not exist (start without --resume)")
        return checkpoint
    if checkpoint.exists():
        raise InputError(f"{out} already holds a training run ({CHECKPOINT}): pass --resume to continue it, "
                         f"or train into another --out")
    return None


def _make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create --out folder {out}: {exc.strerror or exc}") from None


def _read_losses(path: Path, upto: int) -> list[dict[str, Any]]:
    """The logged lines of a resumed run up to its checkpoint (later ones are repeated by the resumed run)."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
            if isinstance(record, dict) and record.get("iteration", upto + 1) <= upto:
                records.append(record)
    return records


def run(args: argparse.Namespace) -> int:
    if args.threads < 0:
        raise InputError(f"--threads must be 0 (torch's default) or more, not {args.threads}")
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    checkpoint = _prepare_out(out, args.resume)
    saved = read_checkpoint(checkpoint, args.model) if checkpoint else None
    config = _resolve_config(args, saved["config"] if saved else None)
    _check_numbers(args, config, MODELS[args.model].factor)
    device = pick_device(args.device)
    contents = ImageSet(config["content"], "--content", config["content_size"], exclude=out)
    styles = ImageSet(config["style"], "--style", config["content_size"], exclude=out)
    log.info("%s; %s", contents.describe(), styles.describe())
    refuse_same_file([out / name for name in (CHECKPOINT, DECODER, LOSSES, PREVIEW)],
                     [*(("--content image", p) for p in contents.paths), *(("--style image", p) for p in styles.paths),
                      *run_inputs(Job(weights_dir=args.weights_dir), [])])
    model = load_model(args.model, args.weights_dir)
    _make_out(out)

    if config["init"] == "scratch":
        reset_decoder(model.decoder, config["seed"])
    torch.manual_seed(config["seed"])
    trainer = DecoderTrainer(model, device, lr=config["lr"], lr_decay=config["lr_decay"],
                             style_weight=config["style_weight"], seed=config["seed"])
    losses_path = out / LOSSES
    seconds = 0.0
    records: list[dict[str, Any]] = []
    if saved is not None:
        trainer.load(saved)
        seconds = float(saved.get("seconds", 0.0))
        records = _read_losses(losses_path, trainer.iteration)
        AtomicOutput(losses_path).write_all("".join(json.dumps(r) + "\n" for r in records).encode())
        log.info("resuming %s at iteration %d of %d", out, trainer.iteration, args.iterations)
    if trainer.iteration >= args.iterations:
        log.info("%s is already at iteration %d (--iterations %d): nothing to do", out, trainer.iteration,
                 args.iterations)
        return 0
    preview_c = fixed_samples(contents, config["crop"])
    preview_s = fixed_samples(styles, config["crop"])
    log.info("training a decoder for %s on %s (%s): %d iterations, batch %d, crop %d", args.model, device,
             "mixed precision " + str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "fp32",
             args.iterations, config["batch_size"], config["crop"])

    def batch_for(iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        plan = sample_plan(config["seed"], iteration, len(contents), len(styles), config["batch_size"])
        return (make_batch(contents, plan.content, plan.crops[0], config["crop"]),
                make_batch(styles, plan.style, plan.crops[1], config["crop"]))

    def save_all(kind: str) -> None:
        trainer.save(out / CHECKPOINT, config, seconds=seconds)
        atomic_torch_save(trainer.decoder_state(), out / DECODER)
        log.debug("%s checkpoint at iteration %d", kind, trainer.iteration)

    start_it, started = trainer.iteration, time.perf_counter()
    last: StepLosses | None = None
    bar = tqdm(total=args.iterations, initial=trainer.iteration, desc="train", unit="it", file=sys.stderr,
               dynamic_ncols=True, disable=None)
    try:
        with stop_after_step() as stop, ThreadPoolExecutor(1, thread_name_prefix="train-data") as pool, \
                losses_path.open("a" if saved else "w") as losses_file:
            upcoming: Future = pool.submit(batch_for, trainer.iteration)
            while trainer.iteration < args.iterations and not stop.requested:
                content, style = upcoming.result()
                if trainer.iteration + 1 < args.iterations:
                    upcoming = pool.submit(batch_for, trainer.iteration + 1)
                t0 = time.perf_counter()
                last = trainer.step(content, style)
                seconds += time.perf_counter() - t0
                done = trainer.iteration
                bar.update(1)
                if done % args.log_every == 0 or done == args.iterations:
                    record = {"iteration": done, "content": last.content, "style": last.style,
                              "total": last.total, "lr": last.lr, "seconds": round(seconds, 3)}
                    records.append(record)
                    losses_file.write(json.dumps(record) + "\n")
                    losses_file.flush()
                    bar.set_postfix_str(f"content {last.content:.3g} style {last.style:.3g} total {last.total:.3g}")
                if done % args.checkpoint_every == 0:
                    save_all("periodic")
                if done % args.preview_every == 0 or done == args.iterations:
                    write_preview(out / PREVIEW, trainer, preview_c, preview_s, records, config["style_weight"])
            upcoming.cancel()
            save_all("final")
    except KeyboardInterrupt as exc:  # a second stop signal: the step was cut
        bar.close()
        signum, on_disk = signal_number(exc), (out / CHECKPOINT).is_file()
        kept = f"the last checkpoint in {out} is kept (continue with --resume)" if on_disk else "no checkpoint yet"
        print(f"streamer: interrupted{stopped_by(signum)} at iteration {trainer.iteration}; {kept}", file=sys.stderr)
        return exit_code(signum)
    finally:
        bar.close()
    rate = (trainer.iteration - start_it) / max(time.perf_counter() - started, 1e-9)
    if contents.skipped or styles.skipped:
        log.info("skipped unreadable images: %d content, %d style", contents.skipped, styles.skipped)
    if stop.requested and trainer.iteration < args.iterations:
        print(f"streamer: interrupted{stopped_by(stop.signum)} at iteration {trainer.iteration}; checkpoint written "
              f"to {out / CHECKPOINT} (continue with --resume)", file=sys.stderr)
        return exit_code(stop.signum)
    log.info("done: %d iterations (%.2f it/s); decoder written to %s (use it with --model %s --decoder %s)",
             trainer.iteration, rate, out / DECODER, args.model, out / DECODER)
    return 0
