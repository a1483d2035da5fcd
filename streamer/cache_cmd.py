"""`streamer cache info|clear`: what streamer keeps on disk, where, how big; and removing it.

Three folders under the user cache: built engines (ONNX exports, int8 models, TensorRT plans: rebuilt on
demand), style codes (recomputed on demand) and downloaded weights (downloaded again on demand, which
needs the internet). ``clear`` removes engines and style codes by default; downloaded weights only when
asked (``--weights`` or ``--all``). A folder of the user's own (``--weights-dir``) is listed, never removed.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from engines.errors import InputError

log = logging.getLogger(__name__)

KINDS = ("engines", "styles", "weights")
#: what ``clear`` removes when no kind is named: what is rebuilt without the internet
DEFAULT_CLEAR = ("engines", "styles")


def human_size(n: int) -> str:
    """Bytes as a short human number (1024-based, as ``du -h``)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"  # pragma: no cover - the loop always returns


def tree_size(path: Path) -> int:
    """Bytes in a file, or in every file under a folder (links not followed)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


@dataclass
class Item:
    """One thing in a cache folder: a built engine with its key sidecar, a style code, a model's weights."""

    paths: list[Path]
    label: str
    detail: str = ""

    @property
    def size(self) -> int:
        return sum(tree_size(p) for p in self.paths if p.exists() or p.is_symlink())


@dataclass
class Folder:
    kind: str
    path: Path
    items: list[Item] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(i.size for i in self.items)


def _engine_items(folder: Path) -> list[Item]:
    items = []
    for path in sorted(folder.iterdir()):
        if path.name.endswith(".json") and path.with_name(path.name[:-5]).exists():
            continue  # a sidecar: counted with its entry
        sidecar = path.with_name(path.name + ".json")
        detail = ""
        if path.name.startswith("."):
            detail = "left over from an interrupted build"
        elif path.is_dir():
            detail = "ONNX Runtime's TensorRT cache" if path.name == "ort-tensorrt" else "folder"
        else:
            try:
                key = json.loads(sidecar.read_text())
                parts = [str(key.get("kind", "?"))] + ([f"for {key['rewrite']}"] if key.get("rewrite") else [])
                parts += [str(key[k]) for k in ("precision", "gpu") if key.get(k)]
                parts += [f"{k} {key[k]}" for k in ("torch", "openvino", "tensorrt") if key.get(k)]
                detail = ", ".join(parts)
            except (OSError, ValueError, AttributeError):  # AttributeError: a sidecar that holds no key
                detail = "no key: rebuilt before use"
        items.append(Item([path, sidecar] if sidecar.exists() else [path], path.name, detail))
    return items


def _style_items(folder: Path) -> list[Item]:
    by_model: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        model = path.name.rsplit("-", 1)[0] if path.suffix == ".pt" and "-" in path.name else "other files"
        by_model.setdefault(model, []).append(path)
    return [Item(paths, model, f"{len(paths)} style code{'s' if len(paths) != 1 else ''}")
            for model, paths in by_model.items()]


def _weight_items(folder: Path) -> list[Item]:
    items = []
    for path in sorted(folder.iterdir()):
        files = sorted(p for p in path.iterdir()) if path.is_dir() else [path]
        items.append(Item([path], path.name, f"{len(files)} file{'s' if len(files) != 1 else ''}"))
    return items


def cache_folders() -> dict[str, Folder]:
    """Each cache folder (engines, styles, weights) with what is in it now; a missing folder is empty."""
    from engines.backends.cache import engine_cache_dir
    from engines.style_cache import style_cache_dir
    from engines.weights import cache_dir

    listers = {"engines": (engine_cache_dir(), _engine_items), "styles": (style_cache_dir(), _style_items),
               "weights": (cache_dir(), _weight_items)}
    folders = {}
    for kind, (path, lister) in listers.items():
        folder = Folder(kind, path)
        if path.is_dir():
            try:
                folder.items = lister(path)
            except OSError as exc:
                raise InputError(f"cannot read the {kind} cache {path}: {exc.strerror or exc}") from None
        folders[kind] = folder
    return folders


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="what is cached where (engines, style codes, weights), and clearing it")
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    info = csub.add_parser("info", help="list the cache folders, what is in them and how big")
    info.add_argument("--weights-dir", default=None, help="also list this weights folder of your own")
    info.set_defaults(run=run_info)
    clear = csub.add_parser(
        "clear", help="remove cached engines and style codes (downloaded weights only with --weights or --all)",
        description="Remove what streamer cached. Without a kind: engines and style codes (rebuilt on demand). "
                    "Downloaded weights only with --weights or --all (they need the internet to come back). "
                    "A --weights-dir of your own is never touched.")
    for kind, what in (("engines", "built engines: ONNX exports, int8 models, TensorRT plans"),
                       ("styles", "style codes"), ("weights", "downloaded weights")):
        clear.add_argument(f"--{kind}", action="store_true", help=f"remove {what}")
    clear.add_argument("--all", action="store_true", help="remove all three")
    clear.add_argument("--weights-dir", default=None,
                       help="your own weights folder (also STREAMER_WEIGHTS_DIR): never cleared, wherever it is")
    clear.add_argument("-n", "--dry-run", action="store_true", help="say what would be removed, remove nothing")
    clear.set_defaults(run=run_clear)


def run_info(args: argparse.Namespace) -> int:
    from engines.weights import weights_root

    total = 0
    for folder in cache_folders().values():
        total += folder.size
        count = f"{len(folder.items)} item{'s' if len(folder.items) != 1 else ''}" if folder.items else "empty"
        print(f"{folder.kind:<8} {folder.path}  ({count}, {human_size(folder.size)})")
        width = max((len(i.label) for i in folder.items), default=0)
        for item in folder.items:
            print(f"  {item.label:<{width}}  {human_size(item.size):>9}  {item.detail}".rstrip())
    print(f"total    {human_size(total)}")
    root = weights_root(args.weights_dir)
    if root is not None:
        size = human_size(tree_size(root)) if root.is_dir() else "a file, not a folder" if root.exists() \
            else "does not exist"
        print(f"your weights folder {root}  ({size}; never cleared)")
    return 0


def overlaps(a: Path, b: Path) -> bool:
    """Whether one folder is the other or holds it (links resolved)."""
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def run_clear(args: argparse.Namespace) -> int:
    from engines.weights import weights_root

    named = [k for k in KINDS if args.all or getattr(args, k)]
    chosen = named or list(DEFAULT_CLEAR)
    folders = cache_folders()
    quiet = getattr(args, "quiet", False)
    root = weights_root(getattr(args, "weights_dir", None))
    for kind in chosen:
        folder = folders[kind]
        if root is not None and overlaps(folder.path, root):  # the folder the user pointed at, as cache info says
            log.warning("%s: kept %s: it is (or holds, or is inside) your weights folder %s, which is never cleared",
                        kind, folder.path, root)
            continue
        if not folder.items:
            if not quiet:
                print(f"{kind}: nothing cached ({folder.path})")
            continue
        size, count = folder.size, len(folder.items)
        if not args.dry_run:
            for item in folder.items:
                for path in item.paths:
                    _remove(path)
        if not quiet:
            verb = "would remove" if args.dry_run else "removed"
            print(f"{kind}: {verb} {count} item{'s' if count != 1 else ''}, {human_size(size)} ({folder.path})")
    if not quiet and not named and folders["weights"].items:
        print("downloaded weights kept (remove them with --weights)")
    return 0


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise InputError(f"cannot remove {path}: {exc.strerror or exc}") from None
