"""Small file-system helpers shared by the image and video readers and writers."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from engines.errors import InputError


def existing_file(path: str | Path, what: str, kind: str = "file") -> Path:
    """``path`` as a Path if it names a file; else one clear line: missing, or a folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if path.is_dir():
        raise InputError(f"{what} is a folder, not {kind}: {path}")
    return path


class OutputTaken(InputError):
    """The output's name is taken: the file is there (without ``--overwrite``) or another run is writing it."""


def check_overwrite(path: str | Path, overwrite: bool) -> None:
    """An existing output (a link too, even a dangling one) is kept unless ``--overwrite``: the one refusal
    every command gives."""
    if not overwrite and os.path.lexists(path):
        raise OutputTaken(f"output exists: {path} (use --overwrite to replace it)")


def refuse_same_file(outputs: Iterable[str | Path], inputs: Iterable[tuple[str, str | Path]]) -> None:
    """No output may be one of the run's inputs, whatever ``--overwrite`` says: one line, before anything is
    opened for writing. Compared by identity (device and inode), so a hard link or a symbolic link to an input,
    or an input reached through another path, counts as the input. ``inputs``: (what it is, path) pairs."""
    seen: dict[tuple[int, int], tuple[str, Path]] = {}
    for what, path in inputs:
        try:
            st = os.stat(path)
        except (OSError, ValueError):  # missing (checked elsewhere) or an impossible name
            continue
        seen.setdefault((st.st_dev, st.st_ino), (what, Path(path)))
    if not seen:
        return
    for out in outputs:
        try:
            st = os.stat(out)
        except (OSError, ValueError):
            continue
        if (st.st_dev, st.st_ino) in seen:
            what, path = seen[(st.st_dev, st.st_ino)]
            same = "" if os.path.abspath(out) == os.path.abspath(path) else f" {path} (the same file, through a link)"
            raise InputError(f"the output {out} would replace the {what}{same}; choose another output name "
                             "(--overwrite never replaces an input)")


# -- writing outputs: the one home for "temporary file, then rename" ------------------------------------
try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the rename still keeps half-written files away
    fcntl = None  # type: ignore[assignment]

_REASONS = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.ENAMETOOLONG: "name too long"}


def write_error(path: str | Path, exc: OSError) -> InputError:
    """An OSError met while writing ``path`` as the one line a user reads (read-only, permission, disk full...)."""
    reason = _REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
    return InputError(f"cannot write {path}: {reason}")


def busy_error(path: str | Path) -> InputError:
    return OutputTaken(f"{path} is being written by another streamer process right now; "
                       "wait for it to finish or choose another output")


def _try_lock(fd: int) -> bool:
    """An exclusive advisory lock on ``fd``'s open file, without waiting; the kernel drops it if we die."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a file system without locks (some network mounts): go on unlocked
        return True
    return True


#: the longest file name most file systems take, in bytes
NAME_MAX = 255
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def part_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed: a hidden ``.NAME.part`` beside it (same file system).

    A name too long for that (``NAME`` over 249 bytes) gets ``.NAME-START~HASH.part`` instead: still hidden,
    still ``.part``, still unique to ``NAME``, and within the file system's 255 bytes."""
    name = f".{path.name}.part"
    if len(os.fsencode(name)) <= NAME_MAX:
        return path.with_name(name)
    raw = os.fsencode(path.name)
    digest = hashlib.sha256(raw).hexdigest()[:16]
    start = raw[:NAME_MAX - len(digest) - len(".~.part")].decode("utf-8", errors="ignore")
    return path.with_name(f".{start}~{digest}.part")


def _names(fd: int, path: Path) -> bool:
    """Whether ``path`` (not followed) is still the file open as ``fd``."""
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except OSError:
        return False


class AtomicOutput:
    """An output file written to ``.NAME.part`` beside it under an exclusive lock, renamed to ``NAME`` by commit().

    Why: a crash, a full disk or a signal never leaves a half-written file at the final name; a second
    process writing the same output refuses at once (the lock); and the kernel drops the lock when a
    process dies, so a ``.part`` left by a killed run (SIGKILL, power loss) is taken over and replaced
    by the next run instead of blocking it or lying there forever. Created before any heavy work, so
    a read-only folder or a busy output fails in a second. ``overwrite=False`` refuses an existing
    output before the temp file is touched, and again under the lock, so two runs cannot both decide
    the name is free. The temp file is always a new one (O_EXCL, never following a link): a link or
    a file of someone else's at the ``.part`` name is refused, never written through.
    """

    def __init__(self, path: str | Path, overwrite: bool = True) -> None:
        self.path = Path(path)
        self.tmp_path = part_path(self.path)
        self._fd: int | None = None
        check_overwrite(self.path, overwrite)  # a refusal touches nothing
        self._fd = self._create()
        try:
            check_overwrite(self.path, overwrite)  # another run may have finished the same output meanwhile
        except InputError:
            self.discard()
            raise

    def _create(self) -> int:
        """A new, empty temp file of our own, locked; a stale one of ours is removed first."""
        for _ in range(5):  # another run may take the name between our steps: look again
            try:
                fd = os.open(self.tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666)
            except FileExistsError:
                self._remove_stale()
                continue
            except OSError as exc:
                raise write_error(self.path, exc) from None
            if _try_lock(fd) and _names(fd, self.tmp_path):
                return fd
            os.close(fd)  # another run locked it first (took it for stale) and replaced it
        raise busy_error(self.path)

    def _remove_stale(self) -> None:
        """A ``.part`` is already there. One left by a killed run of ours (a plain file with no other name and
        no lock held) is removed; one being written is a busy output; anything else (a symbolic link, a hard
        link to another file, a folder, a FIFO) may lead to a file of the user's: refused, never opened for
        writing and never removed."""
        try:
            fd = os.open(self.tmp_path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC)
        except FileNotFoundError:
            return  # gone meanwhile
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):
                raise self._foreign("a symbolic link") from None
            raise write_error(self.path, exc) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise self._foreign("a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file")
            if st.st_nlink != 1:
                raise self._foreign("a hard link to another file")
            if not _try_lock(fd):
                raise busy_error(self.path)
            if _names(fd, self.tmp_path):
                os.unlink(self.tmp_path)
        except OSError as exc:
            raise write_error(self.path, exc) from None
        finally:
            os.close(fd)

    def _foreign(self, what: str) -> InputError:
        return InputError(f"cannot write {self.path}: its temporary name {self.tmp_path.name} is taken by {what}, "
                          "not a file streamer left; remove it and run again")

    def file(self) -> BinaryIO:
        """The temp file, open for writing (our own descriptor: the name is not looked up again)."""
        if self._fd is None:
            raise RuntimeError(f"{self.path}: already committed or discarded")
        return os.fdopen(os.dup(self._fd), "wb")

    def write_all(self, data: bytes) -> Path:
        """The whole file's content at once, then commit(); a write error is one line."""
        try:
            with self.file() as f:
                f.write(data)
        except OSError as exc:
            self.discard()
            raise write_error(self.path, exc) from None
        return self.commit()

    @property
    def active(self) -> bool:
        return self._fd is not None

    def commit(self) -> Path:
        """Flush the finished temp file to disk and move it to its final name (atomic on one file system)."""
        if self._fd is None:
            raise RuntimeError(f"{self.path}: already committed or discarded")
        try:
            os.fsync(self._fd)  # the data is on disk before the name points at it
            if not _names(self._fd, self.tmp_path):  # someone replaced our temp file: publish nothing of theirs
                raise FileNotFoundError(errno.ENOENT, f"{self.tmp_path.name} was removed or replaced")
            os.replace(self.tmp_path, self.path)
        except OSError as exc:
            self.discard()
            raise write_error(self.path, exc) from None
        os.close(self._fd)
        self._fd = None
        return self.path

    def discard(self) -> None:
        """Remove the temp file (still under our lock, so no other run's file is touched); idempotent."""
        if self._fd is None:
            return
        if _names(self._fd, self.tmp_path):  # only our own file: never one that replaced it
            try:
                self.tmp_path.unlink()
            except OSError:
                pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def __del__(self) -> None:  # a forgotten output: never leave the temp file behind
        if getattr(self, "_fd", None) is not None:
            self.discard()


def numbered_output(stem: Path, suffix: str, start: int = 1) -> tuple[AtomicOutput, int]:
    """A new output ``STEM-NNN.SUFFIX`` at the first free number from ``start``, and that number: never a file
    that is there already, nor one another process is writing (two of them picking names in the same second)."""
    for number in range(start, start + 1000):
        try:
            return AtomicOutput(stem.with_name(f"{stem.name}-{number:03d}{suffix}"), overwrite=False), number
        except OutputTaken:
            continue
    raise InputError(f"no free name for {stem.name}-NNN{suffix} in {stem.parent}")


class FolderLock:
    """An exclusive lock on an output folder, so two folder renders into it cannot interleave; released on close."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None
        if fcntl is None:
            return
        try:
            self._fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise write_error(folder, exc) from None
        if not _try_lock(self._fd):
            self.close()
            raise busy_error(folder)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def make_output_folder(folder: Path) -> bool:
    """Create ``folder`` (and parents) if needed; True when we created it. Write problems are one line."""
    if folder.is_dir():
        return False
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        return False
    except OSError as exc:
        raise write_error(folder, exc) from None
    return True


# -- standard output ------------------------------------------------------------------------------------
def print_stdout(text: str) -> None:
    """``print(text)``, flushed at once: see :func:`flush_stdout` for what a failure means."""
    if sys.stdout is None:  # started with ``>&-``
        raise InputError("cannot write the results: standard output is closed")
    with _stdout_errors():
        print(text)
        sys.stdout.flush()


def flush_stdout() -> None:
    """Flush stdout. A reader that went away (``| head``) raises BrokenPipeError, which the CLI ends quietly
    with 141; a closed stdout or a full disk behind ``>`` is one line (exit 2). Either way what is left in the
    buffer is dropped, so the interpreter's own flush at exit does not fail on it again."""
    if sys.stdout is not None:
        with _stdout_errors():
            sys.stdout.flush()


@contextlib.contextmanager
def _stdout_errors() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        drop_stdout()
        raise write_error("standard output", exc) from None
    except ValueError:  # the file object was closed
        drop_stdout()
        raise InputError("cannot write the results: standard output is closed") from None


def drop_stdout(stream=None) -> None:
    """Point ``stream``'s file descriptor (default stdout's) at the null device: what is left in its buffer, and
    anything written later, goes nowhere, so Python's own flush at exit does not fail on it again."""
    try:
        fd = (stream or sys.stdout).fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
