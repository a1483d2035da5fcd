"""What this machine is: CPU model, physical cores, instruction sets, GPU. Engines and `streamer bench` use it.

Also the one process-wide memory setting the application makes (:func:`reuse_freed_memory`).
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys
from pathlib import Path

#: glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: the largest mmap threshold glibc accepts on 64-bit systems
_MMAP_THRESHOLD_MAX = 32 << 20
_KEEP_FREE_BYTES = 512 << 20
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


def has_native_bf16() -> bool:
    """bf16 arithmetic in hardware (AVX512-BF16 or AMX); without it bf16 is emulated and slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA install must not stop a CPU run
        pass
    return None


def reuse_freed_memory() -> bool:
    """Have glibc keep freed blocks up to 32 MiB for reuse instead of handing them back to the kernel.

    By default glibc serves large blocks with fresh mmaps and unmaps them on free, below a threshold it
    raises only as the process frees ever larger blocks. Eager torch allocates every intermediate tensor
    anew, so a frame paid for its memory again in page faults: MicroAST at 640x360 took 36,000 of them
    and 275 ms, against none and 213 ms with this; and which of the two a process got depended on its
    allocation history (218 and 275 ms in two identical bench runs). Returns whether it took effect.
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
    _allocator_tuned = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _KEEP_FREE_BYTES))
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
