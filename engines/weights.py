"""Where each model's pretrained weights come from, where they live on disk, and how they are checked.

Weights are never shipped with the project: they are looked up in a user-given folder
(``--weights-dir`` / ``STREAMER_WEIGHTS_DIR``), then in the per-user cache, and downloaded into the
cache from their public addresses on first use. Every file with a known sha256 is verified before use;
files without one are verified key by key and shape by shape by the model loader (``check_layout``).
Every failure a user can fix is a one-line :class:`WeightsError`, never a traceback.

Each function is handed the model's :class:`~engines.models.base.ModelWeights` (declared beside the model
class; ``engines.models.weight_spec(name)`` looks one up by name), never a name: this module does not
import the models, and imports torch only to read a file.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from engines import files
from engines.errors import WeightsError
from engines.progress import tqdm_disable

if TYPE_CHECKING:  # torch is imported lazily: listing or locating weights should not pay for it
    import torch

    from engines.models.base import ModelWeights, WeightFile

log = logging.getLogger(__name__)

ENV_WEIGHTS_DIR = "STREAMER_WEIGHTS_DIR"
DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK = 1 << 16


# --------------------------------------------------------------------------------------------- places


def cache_dir() -> Path:
    """The per-user download cache; read at every call so XDG_CACHE_HOME changes (tests) take effect."""
    return Path(platformdirs.user_cache_dir("streamer")) / "weights"


def weights_root(weights_dir: str | Path | None = None) -> Path | None:
    """The user's own weights folder: ``--weights-dir`` beats ``STREAMER_WEIGHTS_DIR``; None if neither."""
    if weights_dir is not None and str(weights_dir) != "":
        return Path(weights_dir).expanduser()
    env = os.environ.get(ENV_WEIGHTS_DIR, "").strip()
    return Path(env).expanduser() if env else None


def _candidates(model: str, filename: str, root: Path | None) -> list[Path]:
    """Search order for one file; a user folder comes before the cache."""
    places = [root / model / filename, root / filename] if root is not None else []
    places.append(cache_dir() / model / filename)
    return places


def missing_message(spec: ModelWeights, headline: str, missing: list[WeightFile], root: Path | None) -> str:
    """What is wrong on the first line, then where each missing file goes and where it comes from.

    The one multi-line error: a user fixing it by hand needs every file name and address, and one line
    of 900 characters is unreadable. The cache folder is named, not created.
    """
    model = spec.model
    width = max(len(wf.filename) for wf in missing)
    lines = [headline, f"  put {'these files' if len(missing) > 1 else 'this file'} in {cache_dir() / model}{os.sep}:"]
    lines += [f"    {wf.filename:<{width}}  from {wf.url}" for wf in missing]
    lines.append(f"  or in a folder of your own as <dir>/{model}/<file>, with --weights-dir <dir> "
                 f"or {ENV_WEIGHTS_DIR}=<dir>")
    if root is not None:
        lines.append(f"  (the weights folder in use now is {root}: looked in {root / model} and {root})")
    lines.append(f"  or, where there is internet: streamer models download {model}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- verification

def file_sha256(path: Path) -> str:
    """The file's sha256 (hex), memoised (:func:`engines.files.file_sha256`); an unreadable file is a WeightsError."""
    try:
        return files.file_sha256(path)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc.strerror or exc}") from None


def _check_sha(spec: ModelWeights, wf: WeightFile, path: Path, in_cache: bool) -> None:
    """Raise a one-line WeightsError unless ``path`` has the published sha256."""
    if wf.sha256 is None:
        return
    got = file_sha256(path)
    if got == wf.sha256.lower():
        return
    if in_cache:
        todo = f"delete it and run `streamer models download {spec.model}` (or just run again) to fetch it afresh"
    else:
        todo = f"replace it with the file from {wf.url}, or delete it to use the downloaded copy"
    raise WeightsError(f"weights file {wf.filename} at {path} is corrupt or a different file "
                       f"(sha256 {got[:12]}…, expected {wf.sha256[:12]}…): {todo}")


def weight_file_places(spec: ModelWeights, weights_dir: str | Path | None = None) -> list[Path]:
    """Every place a weight file of the model is looked for (the user's folder, the cache), there or not: what
    no output may replace."""
    root = weights_root(weights_dir)
    return [place for wf in spec.files for place in _candidates(spec.model, wf.filename, root)]


def _find(spec: ModelWeights, wf: WeightFile, root: Path | None) -> Path | None:
    for place in _candidates(spec.model, wf.filename, root):
        if place.is_file():
            return place
    return None


# ----------------------------------------------------------------------------------------- download


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders this process created (deepest first) if they are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another file arrived meanwhile), or already gone
            return


class _DownloadFailed(Exception):
    """Internal: why one download failed (turned into a user-facing WeightsError by the caller)."""


def _looks_like_torch(head: bytes) -> bool:
    """Cheap sniff for files without a sha256: a torch zip archive or a legacy pickle, not an HTML page."""
    return head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")


def _download(wf: WeightFile, dest: Path, progress: bool) -> None:
    """Stream ``wf.url`` into a temp file beside ``dest``, verify it, then atomically rename it into place.

    Whatever goes wrong (network, HTTP, short read, bad sha256, interrupt), no file is left at ``dest``
    and the temp file is removed, so a later run never mistakes a partial download for the real one.
    """
    from tqdm import tqdm

    created = [d for d in (dest.parent, *dest.parent.parents) if not d.exists()]
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = files.Replacing(dest)
    except OSError as exc:
        _remove_empty(created)
        raise _DownloadFailed(f"cannot write to {dest.parent}: {exc.strerror or exc}") from None
    done = False
    try:
        digest = hashlib.sha256()
        received = 0
        head = b""
        request = urllib.request.Request(wf.url, headers={"User-Agent": "streamer-weights/1"})
        with tmp.path.open("wb") as out, urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                      file=sys.stderr, disable=tqdm_disable(progress), leave=False) as bar:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    if len(head) < 8:
                        head += chunk[: 8 - len(head)]
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise _DownloadFailed(f"the download stopped after {received} of {total} bytes")
        if received == 0:
            raise _DownloadFailed("the server sent an empty file")
        got = digest.hexdigest()
        if wf.sha256 is not None and got != wf.sha256.lower():
            raise _DownloadFailed(f"the downloaded {wf.filename} has sha256 {got[:12]}…, "
                                  f"expected {wf.sha256[:12]}…")
        if wf.sha256 is None and not _looks_like_torch(head):
            raise _DownloadFailed(f"the downloaded {wf.filename} is not a PyTorch weights file")
        tmp.commit()
        files.remember_sha256(dest, got)
        done = True
        log.info("downloaded %s (%d bytes) to %s", wf.url, received, dest)
    except _DownloadFailed:
        raise
    except urllib.error.HTTPError as exc:
        raise _DownloadFailed(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        raise _DownloadFailed(f"cannot connect: {getattr(reason, 'strerror', None) or reason}") from None
    except TimeoutError:
        raise _DownloadFailed(f"no answer within {DOWNLOAD_TIMEOUT_S:.0f} s") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _DownloadFailed(f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}") from None
    finally:
        tmp.discard()
        if not done:
            _remove_empty(created)  # a failed first download leaves no empty cache folders behind


# -------------------------------------------------------------------------------------------- public


def resolve_weights(spec: ModelWeights, weights_dir: str | Path | None = None, download: bool = True,
                    progress: bool = True) -> dict[str, Path]:
    """Every file the model's ``spec`` declares as {filename: verified path}, downloading missing ones into
    the cache.

    Per file: ``<root>/<model>/<file>``, ``<root>/<file>`` (root from ``weights_root``), then
    ``<cache_dir()>/<model>/<file>``. A file found in the user's folder is used (and must verify) even if
    the cache has one too: the user's choice wins and a bad copy there is reported, not silently skipped.
    """
    model = spec.model
    root = weights_root(weights_dir)
    if root is not None and not root.is_dir():
        log.warning("weights folder %s %s; using the cache %s", root,
                    "is a file, not a folder" if root.exists() else "does not exist", cache_dir())

    found: dict[str, Path] = {}
    missing: list[WeightFile] = []
    for wf in spec.files:
        path = _find(spec, wf, root)
        if path is None:
            missing.append(wf)
            continue
        _check_sha(spec, wf, path, in_cache=path.parent == cache_dir() / model)
        found[wf.filename] = path

    if missing and not download:
        raise WeightsError(missing_message(
            spec, f"weights for model '{model}' are missing: {len(missing)} of {len(spec.files)} files", missing, root))

    for index, wf in enumerate(missing):
        dest = cache_dir() / model / wf.filename
        log.info("downloading %s for model '%s' from %s", wf.filename, model, wf.url)
        try:
            _download(wf, dest, progress)
        except _DownloadFailed as exc:
            # Stop at the first failure: offline, the others would only fail the same way, slowly.
            still = missing[index:]
            host = urllib.parse.urlsplit(wf.url).netloc or wf.url
            raise WeightsError(missing_message(
                spec, f"weights for model '{model}' are missing and could not be downloaded ({host}: {exc})",
                still, root)) from None
        found[wf.filename] = dest

    return {wf.filename: found[wf.filename] for wf in spec.files}


def download_model(spec: ModelWeights, weights_dir: str | Path | None = None) -> dict[str, Path]:
    """``streamer models download NAME``: make every file of the model present and verified."""
    return resolve_weights(spec, weights_dir, download=True, progress=True)


def model_status(spec: ModelWeights, weights_dir: str | Path | None = None) -> str:
    """``"ready (<folder>)"``, ``"missing"`` or ``"corrupt"`` for ``streamer models list``; never downloads."""
    root = weights_root(weights_dir)
    folders: list[Path] = []
    missing = False
    for wf in spec.files:
        path = _find(spec, wf, root)
        if path is None:
            missing = True
            continue
        try:
            _check_sha(spec, wf, path, in_cache=path.parent == cache_dir() / spec.model)
        except WeightsError:
            return "corrupt"
        if path.parent not in folders:
            folders.append(path.parent)
    if missing:
        return "missing"
    return f"ready ({', '.join(str(f) for f in folders)})"


def load_state_dict(path: Path) -> dict[str, "torch.Tensor"]:
    """Read a weights file safely (``weights_only``: no arbitrary code) into a plain {key: tensor} dict."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle errors, disallowed globals, I/O: all mean "bad file"
        log.debug("torch.load(%s) failed: %r", path, exc)
        raise WeightsError(f"weights file is corrupt or not a PyTorch weights file: {path}") from None
    for wrapper in ("state_dict", "model", "decoder"):  # "decoder": a `streamer train` checkpoint
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping):
        raise WeightsError(f"weights file is corrupt or not a PyTorch weights file: {path} "
                           f"(it holds a {type(state).__name__}, not a state dict)")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"weights file is corrupt or not a PyTorch weights file: {path} (no tensors in it)")
    return tensors


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def check_layout(state: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], what: str,
                 path: Path) -> None:
    """Refuse a file that would load wrongly: every expected key must exist with exactly that shape.

    Extra keys are allowed (a full VGG-19 file serves a prefix of it). The message names the first
    problem and how many more there are, so a wrong file is told apart from a slightly damaged one.
    """
    problems: list[str] = []
    for key, want in expected.items():
        want = tuple(int(d) for d in want)
        if key not in state:
            problems.append(f"key '{key}' is missing (the model needs shape {_fmt_shape(want)})")
            continue
        have = getattr(state[key], "shape", None)
        if have is None:
            problems.append(f"key '{key}' is not a tensor (the model needs shape {_fmt_shape(want)})")
        elif tuple(int(d) for d in have) != want:
            problems.append(f"key '{key}' has shape {_fmt_shape(tuple(have))} "
                            f"but the model needs {_fmt_shape(want)}")
    if problems:
        more = f" (and {len(problems) - 1} more key(s) differ)" if len(problems) > 1 else ""
        raise WeightsError(f"{path} does not match {what}: {problems[0]}{more}")


__all__ = ["ENV_WEIGHTS_DIR", "cache_dir", "weights_root",
           "resolve_weights", "download_model", "weight_file_places", "model_status", "file_sha256", "load_state_dict",
           "check_layout"]
