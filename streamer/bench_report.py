"""`streamer bench`'s results: the rows, the interleaved timing that fills them, and the printed report."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

#: idle time between two engines' runs: runtimes' worker threads spin for a while after a run, which
#: would otherwise be billed to whichever engine runs next
SWITCH_PAUSE_S = 0.05


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000.0


# -- results ------------------------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    engine: str
    precision: str
    size: str
    ms: float | None = None
    fps: float | None = None
    speedup: float | None = None
    psnr_db: float | None = None
    gflops: float | None = None
    peak_pct: float | None = None
    runs: int = 0
    note: str = ""
    times_ms: list[float] = field(default_factory=list)


@dataclass
class RenderRow:
    model: str
    engine: str
    precision: str
    fps: float | None = None
    frames: int = 0
    speedup: float | None = None
    note: str = ""


def engine_label(kind: str, precision: str) -> str:
    return f"{kind}/{precision}"


def synced_call(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` that returns only once a GPU has finished its work: CUDA kernels are asynchronous, so a
    timer around the launch alone measures the launch (the result is a CUDA tensor, not yet computed)."""

    def call() -> object:
        out = fn()
        if getattr(out, "is_cuda", False):
            torch.cuda.synchronize(out.device)
        return out

    return call


def time_side_by_side(runs: dict[str, Callable[[], object]], repeats: int, warmup: int, budget_s: float,
                      min_repeats: int = 2) -> dict[str, list[float]]:
    """Interleaved timing: each round calls every runner once; stop at ``repeats`` rounds or when over budget.

    Warm-up matters most for torch eager, whose first frames grow the heap (page faults) and pick oneDNN
    kernels: MicroAST at 640x360 took 280-350 ms for two or three frames, then 210. Warm-up rounds also
    stop when over budget, so slow models do not pay minutes for it.
    """
    start = time.perf_counter()
    for _ in range(warmup):
        for fn in runs.values():
            fn()
        if time.perf_counter() - start > budget_s * len(runs):
            break
    times: dict[str, list[float]] = {k: [] for k in runs}
    start = time.perf_counter()
    for r in range(repeats):
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
            time.sleep(SWITCH_PAUSE_S)
        if r + 1 >= min_repeats and time.perf_counter() - start > budget_s * len(runs):
            break
    return times


def _fmt(v, spec: str = "", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def format_report(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"machine: {m['cpu']} | {m['physical_cores']} physical cores ({m['logical_cpus']} logical) | "
        f"ISA {' '.join(m['isa']) or '?'} | GPU: {m['gpu'] or 'none'} | torch {m['torch']} | "
        + ("freed memory reused (no page faults per torch frame)" if m.get("freed_memory_reused")
           else "default allocator (torch eager pays page faults per frame)"),
        f"fp32 peak: {report['peak_gflops']:.0f} GFLOP/s (best 2048^3 matmul measured in this run; %peak is "
        "against it)",
        "",
    ]
    for name, info in report["models"].items():
        lines.append(f"{name}: {info['weights']}; style encoding {info['style_encode_ms']:.0f} ms (512 px); "
                     "GFLOP/frame " + ", ".join(f"{k} {v}" for k, v in info["gflop"].items()))
    lines.append("")
    head = (f"{'model':10} {'engine':12} {'prec':5} {'size':>9} {'ms/frame':>9} {'fps':>6} {'x torch':>7} "
            f"{'PSNR':>6} {'GFLOP/s':>8} {'%peak':>6} {'runs':>4}  note")
    lines += ["content side (median of timed runs, engines interleaved; x torch = speedup vs torch fp32 eager)",
              head, "-" * len(head)]
    for r in report["content"]:
        lines.append(
            f"{r['model']:10} {r['engine']:12} {r['precision']:5} {r['size']:>9} {_fmt(r['ms'], '9.1f'):>9} "
            f"{_fmt(r['fps'], '6.2f'):>6} {_fmt(r['speedup'], '6.2f') + ('x' if r['speedup'] else ''):>7} "
            f"{_fmt(r['psnr_db'], '6.1f'):>6} {_fmt(r['gflops'], '8.1f'):>8} {_fmt(r['peak_pct'], '5.1f'):>6} "
            f"{r['runs']:>4}  {r['note']}")
    if report["render"]:
        lines += ["", f"end-to-end render of {report['clip']} (decode + stylize + encode of the first frames, "
                      f"engines taking turns)",
                  f"{'model':10} {'engine':12} {'prec':5} {'frames':>6} {'fps':>6} {'x torch':>7}  note"]
        for r in report["render"]:
            lines.append(f"{r['model']:10} {r['engine']:12} {r['precision']:5} {r['frames']:>6} "
                         f"{_fmt(r['fps'], '6.2f'):>6} {_fmt(r['speedup'], '6.2f') + ('x' if r['speedup'] else ''):>7}"
                         f"  {r['note']}")
    elif report["clip"] is None:
        lines += ["", "end-to-end render: n/a (no clip; pass --clip VIDEO)"]
    if report.get("upscale"):
        lines += ["", "way back to the output size (--upscale; CPU, ms a frame, median, ways interleaved)",
                  f"{'size':>9} {'from':>9} {'bicubic':>8} {'guided':>8}"]
        for r in report["upscale"]:
            lines.append(f"{r['size']:>9} {r['from']:>9} {_fmt(r.get('bicubic_ms'), '8.1f'):>8} "
                         f"{_fmt(r.get('guided_ms'), '8.1f'):>8}")
    return "\n".join(lines)
