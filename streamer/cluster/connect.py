"""Joining a Ray cluster, or starting one on this machine: fast, and in one line when it cannot be done.

Ray itself retries an unreachable address for minutes, prints its own warnings for a refused token and
takes over SIGTERM in the driver. Here an address is resolved (``auto``: ``RAY_ADDRESS``, else the cluster
Ray last started on this machine) and tried over TCP in seconds; the cluster's token is used the way Ray
documents it for clients (``RAY_AUTH_MODE=token`` with ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token``), and a cluster that refuses it says so in one line; streamer's own signal handlers
(streamer.signals) are put back once Ray has started.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engines.errors import DeviceError, InputError
from streamer.signals import STOP_SIGNALS, Interrupted, note_stop_signal

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'streamer[cluster]'"
#: seconds to wait for a TCP answer from a cluster address before calling it unreachable
CONNECT_TIMEOUT = 3.0
#: where Ray writes the address of the cluster it last started on this machine (what ``auto`` finds)
RAY_CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")
_HANDLED = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def import_ray():
    try:
        import ray
    except ImportError:
        raise DeviceError(f"--cluster needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port`` or ``ray://host:port``; None for ``auto``/``local``."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(f"--cluster must be host:port, ray://host:port, auto or local, not '{address}'")
    return host.strip("[]") or "127.0.0.1", int(port)


def resolve_address(address: str) -> str:
    """``auto`` -> ``RAY_ADDRESS``, else the address in Ray's ``ray_current_cluster`` file; others as given."""
    if address != "auto":
        return address
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env != "auto":
        return env
    try:
        found = RAY_CURRENT_CLUSTER.read_text().strip()
    except OSError:
        found = ""
    if not found:
        raise DeviceError("--cluster auto found no Ray cluster: RAY_ADDRESS is not set and no cluster was started "
                          "on this machine; give --cluster host:port, or use --cluster local")
    return found


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT, given: str | None = None) -> None:
    """Fail in seconds, in one line, when nothing listens at ``address`` (Ray itself retries for minutes)."""
    target = host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        via = f" (--cluster {given})" if given and given != address else ""
        raise DeviceError(f"no Ray cluster answers at {address}{via} ({exc.strerror or exc}); start one with "
                          "`ray start --head` or use --cluster local") from None


# -- token authentication (Ray 2.52+) ------------------------------------------------------------
def token_source() -> str | None:
    """Where Ray would read the cluster's token from, in Ray's order; None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if path:
        try:
            if Path(path).read_text().strip():
                return path
        except OSError as exc:
            raise InputError(f"RAY_AUTH_TOKEN_PATH names {path}, which cannot be read ({exc.strerror or exc})") \
                from None
        raise InputError(f"RAY_AUTH_TOKEN_PATH names {path}, which is empty")
    default = Path.home() / ".ray" / "auth_token"
    with contextlib.suppress(OSError):
        if default.read_text().strip():
            return str(default)
    return None


def use_token_if_present() -> None:
    """Where the user set no ``RAY_AUTH_MODE`` and a token is there, present it (Ray 2.60 does that only for
    ``auto``; an explicit address goes without and is refused by a cluster with token authentication on)."""
    if os.environ.get("RAY_AUTH_MODE") is None and token_source():
        os.environ["RAY_AUTH_MODE"] = "token"
        raylet = sys.modules.get("ray._raylet")
        if raylet is not None:  # Ray read its settings already: let it read them again
            with contextlib.suppress(Exception):
                raylet.Config.initialize("")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Ray's C++ core prints each refused attempt on fd 2; the one line that explains it comes from us."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_token(address: str) -> None:
    """Ask the cluster's GCS once (under a second) whether it takes our token: a missing or wrong one is one
    line, instead of Ray's 20 s of warnings ending in "Failed to connect"."""
    if "://" in address:  # Ray Client: its own server checks the token
        return
    try:
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # another Ray: let ray.init say what it says
        return
    try:
        with _quiet_stderr():
            GcsClient(address=address)
    except AuthenticationError:
        source = token_source()
        if source is None or os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            raise DeviceError(f"the Ray cluster at {address} wants a token and none was found: set RAY_AUTH_TOKEN, "
                              "or put the cluster's token (`ray get-auth-token` on the head) in ~/.ray/auth_token"
                              ) from None
        raise DeviceError(f"the Ray cluster at {address} refused the token from {source}: it is not this cluster's "
                          "token (`ray get-auth-token` on the head prints it)") from None
    except Exception as exc:  # noqa: BLE001 - not an auth problem: ray.init tells the rest
        log.debug("GCS probe of %s: %s", address, exc)


# -- connecting ----------------------------------------------------------------------------------
def connect(ray, address: str, num_cpus: int, object_store: int, verbose: int, runtime_env: dict) -> None:
    """``ray.init`` for ``address`` (``local``: a new cluster on this machine, whatever RAY_ADDRESS or an old
    cluster file say), with streamer's signal handlers kept."""
    import logging as _logging

    quiet: dict[str, Any] = {"log_to_driver": verbose > 0, "runtime_env": runtime_env,
                             "logging_level": _logging.WARNING if verbose == 0 else _logging.INFO}
    handlers = {s: signal.getsignal(s) for s in _HANDLED}
    use_token_if_present()
    try:
        if address == "local":
            ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store, include_dashboard=False,
                     **quiet)
        else:
            resolved = resolve_address(address)
            check_reachable(resolved, given=address)
            check_token(resolved)
            target = host_port(resolved)
            if target is not None and target[0] in ("127.0.0.1", "localhost") and "://" not in resolved:
                quiet["_node_ip_address"] = "127.0.0.1"  # a cluster on this machine's loopback: join it there
            ray.init(address=resolved, **quiet)
    except (DeviceError, InputError):
        raise
    except SystemExit as exc:  # Ray's own SIGTERM/SIGHUP handler, in place while ray.init runs, exits with it
        if exc.code not in STOP_SIGNALS:
            raise
        note_stop_signal(int(exc.code))
        raise Interrupted(int(exc.code)) from None
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        first = str(exc).strip().splitlines()
        raise DeviceError(f"cannot join the Ray cluster at {address}: {first[0] if first else exc}") from None
    finally:
        for s, handler in handlers.items():  # Ray's driver takes SIGTERM (sys.exit): streamer.signals' path instead
            if handler is not None:
                with contextlib.suppress(ValueError, OSError):
                    signal.signal(s, handler)


# -- the cluster and its workers -------------------------------------------------------------------
#: object store per node for `--cluster local` (chunks and inputs pass through it; small is enough)
LOCAL_OBJECT_STORE = 200 << 20
#: seconds for the workers to start (import torch, connect); longer means the cluster has no room for them
ACTOR_START_TIMEOUT = 180.0
#: a worker process killed mid-chunk: how often Ray restarts the actor and retries its chunk
RETRIES = 3


def _project_root() -> str:
    return str(Path(__file__).resolve().parents[2])


class Progress:
    """Frames done per task, max of what its attempts reported (a retried chunk does not count twice)."""

    def __init__(self) -> None:
        self.done: dict[Any, int] = {}

    def set(self, key: Any, frames: int) -> None:
        self.done[key] = max(self.done.get(key, 0), frames)

    def total(self) -> int:
        return sum(self.done.values())


class Cluster:
    """A connection to Ray (or a local cluster it starts) and the engine actors; all stopped on exit.

    ``worker_class``: the actor class (streamer.cluster.worker.ChunkWorker; tests give a subclass)."""

    def __init__(self, settings, address: str, workers: int | None, *, device: str = "auto",
                 worker_class: type | None = None) -> None:
        from streamer.cluster.worker import ChunkWorker

        if workers is not None and workers <= 0:
            raise InputError("--workers must be a positive number of processes")
        if settings.worker_threads <= 0:
            raise InputError("--worker-threads must be a positive number of threads")
        host_port(address)  # a malformed address: one line now
        self.ray = import_ray()
        self.settings, self.address, self.workers, self.device = settings, address, workers, device
        self.worker_class = worker_class or ChunkWorker
        self.actors: list[Any] = []
        self.progress = None

    def __enter__(self) -> Cluster:
        env = {"PYTHONPATH": os.pathsep.join(p for p in (_project_root(), os.environ.get("PYTHONPATH")) if p)}
        threads = self.settings.worker_threads
        try:
            connect(self.ray, self.address, (self.workers or 2) * threads, LOCAL_OBJECT_STORE, self.settings.verbose,
                    {"env_vars": env})
            self._start_actors()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start_actors(self) -> None:
        ray, threads = self.ray, self.settings.worker_threads
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0)) if self.device != "cpu" else 0
        count = self.workers or (gpus or max(1, int(res.get("CPU", 1)) // threads))
        options = {"num_cpus": threads, "num_gpus": 1 if gpus else 0, "max_restarts": RETRIES,
                   "max_task_retries": RETRIES}
        remote = ray.remote(**options)(self.worker_class)
        self.actors = [remote.remote(self.settings, slot) for slot in range(count)]
        self.progress = ray.remote(num_cpus=0)(Progress).remote()
        try:
            infos = ray.get([a.info.remote() for a in self.actors], timeout=ACTOR_START_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise DeviceError(f"the cluster did not start {count} workers of {threads} CPUs"
                              f"{' and 1 GPU' if gpus else ''} each in {ACTOR_START_TIMEOUT:.0f} s: it has "
                              f"{res.get('CPU', 0):g} CPUs; ask for fewer --workers") from None
        log.info("cluster %s: %d workers (%s)", self.address, len(infos),
                 ", ".join(f"{i['host']}:{i['pid']}" for i in infos))

    def __exit__(self, *exc_info) -> None:
        """Stop every actor we started, then leave Ray (a `local` cluster stops with it)."""
        self.stop_workers()
        with contextlib.suppress(Exception):
            self.ray.shutdown()

    def stop_workers(self) -> None:
        """Kill every actor we started (no restart): a run that stops early leaves none writing."""
        for actor in [*self.actors, self.progress]:
            if actor is not None:
                with contextlib.suppress(Exception):  # already gone
                    self.ray.kill(actor)
        self.actors, self.progress = [], None

    def visible(self, paths: list[Path]) -> list[bool]:
        """For each of ``paths``: whether every worker reads it as the driver's file (a shared filesystem)."""
        stats = [(str(p.resolve()), p.stat()) for p in paths]
        answers = self.ray.get([a.sees_all.remote([(name, st.st_size, st.st_mtime_ns) for name, st in stats])
                                for a in self.actors])
        return [all(a[i] for a in answers) for i in range(len(paths))]

    def send(self, path: Path, max_bytes: int) -> list:
        """[object ref of ``path``'s bytes] (put once, read by every worker that needs it)."""
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError(f"{path} ({size >> 20} MiB) is not visible to every worker and is larger than "
                             f"{max_bytes >> 20} MiB, the most sent through Ray: put it on a shared filesystem")
        log.info("%s is not visible to every worker: sending its %d KiB through Ray", path, size >> 10)
        return [self.ray.put(path.read_bytes())]
