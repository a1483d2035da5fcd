"""What this machine is: CPU model, physical cores, instruction sets, GPU. Engines and `streamer bench` use it.

Also the one process-wide memory setting the application makes (:func:`reuse_freed_memory`).
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys
import time
from pathlib import Path

#: glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
#: free memory the heap may keep at its top before giving it back
_KEEP_FREE_BYTES = 1 << 30
_allocator_tuned = False


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Instruction-set flags the OS reports (Linux); empty elsewhere, which only disables optional paths."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def physical_cores() -> int:
    """Cores, not hyper-threads, that this process may use: the right thread count for conv-heavy inference."""
    usable = usable_cpus()
    cores: set[str] = set()
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        cpus = set(range(os.cpu_count() or 1))
    for cpu in cpus:
        sib = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(sib.read_text().strip())
        except OSError:
            return usable
    return max(1, min(len(cores), usable))


def _matmul_gflops(n: int, repeats: int) -> float:
    import torch

    a, b = torch.rand(n, n), torch.rand(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def measure_peak_gflops(n: int = 2048, repeats: int = 4) -> float:
    """fp32 GFLOP/s of a large matmul: the practical ceiling for conv-heavy graphs.

    The best of all cores together and of one core times the core count: on a shared machine the
    multi-threaded figure alone undershoots (one stalled thread stalls the team)."""
    import torch

    together = _matmul_gflops(n, repeats)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _matmul_gflops(n, repeats)
    finally:
        torch.set_num_threads(threads)
    return max(together, one * min(physical_cores(), threads))


def gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA install must not stop a CPU run
        pass
    return None


def reuse_freed_memory() -> bool:
    """Have glibc reuse freed memory for the next frame instead of handing it back to the kernel.

    By default glibc serves large blocks with fresh mmaps (below a threshold it raises only as larger
    blocks are freed, and never past 32 MiB) and gives threads their own arenas of at most 64 MiB. Eager
    torch allocates every intermediate tensor anew, so each frame paid for its memory again in page
    faults: MicroAST at 640x360 took 36,000 of them and 275 ms, and at 1280x720 in the engine thread
    380,000 and 1430 ms, against none and 213 / 875 ms with this (peak memory 940 -> 776 MB). And which
    a process got depended on its allocation history (218 and 275 ms in two identical bench runs).
    So: no mmap for blocks, one arena for all threads, and 1 GiB of free heap kept. Returns whether it
    took effect (glibc on Linux only).
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    _allocator_tuned = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_MAX, 0), (_M_ARENA_MAX, 1), (_M_TRIM_THRESHOLD, _KEEP_FREE_BYTES)))
    return _allocator_tuned


def describe_machine() -> dict:
    """The facts a benchmark table must state to be comparable."""
    import torch

    flags = cpu_flags()
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    return {
        "cpu": cpu_name(),
        "physical_cores": physical_cores(),
        "logical_cpus": usable_cpus(),
        "isa": isa,
        "gpu": gpu_name(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "freed_memory_reused": _allocator_tuned,
    }
