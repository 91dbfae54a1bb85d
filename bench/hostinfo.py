"""Host facts and GEMM peaks that every ``bench/results/*.json`` records.

A throughput figure means little without the machine it came from: :func:`host_facts` names the
CPU (model name, family/model/stepping, the SIMD flags that decide which runtimes are fast, core
count), the library versions and the load at the time; :func:`gemm_peaks` measures what this
host's cores can do *in the same run* (a 2048³ ``torch.matmul`` in fp32 and bf16, on 1 and N
threads), so each benchmark cell can be stated as a fraction of the matching peak.

    python bench/hostinfo.py            # print both as JSON
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handlers.cpu_runtimes import cpu_flags, library_versions  # noqa: E402

GEMM_N = 2048


def cpuinfo(path: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """The first processor's identity and the flags that decide fp32 / bf16 / int8 speed
    (:data:`handlers.cpu_runtimes.CPU_FLAGS`, unmasked); {} where ``path`` is unreadable."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    first: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if first:
                break
            continue
        key, _, value = line.partition(":")
        first[key.strip()] = value.strip()
    return {
        "cpu_model": first.get("model name"),
        "vendor": first.get("vendor_id"),
        "family": first.get("cpu family"),
        "model": first.get("model"),
        "stepping": first.get("stepping"),
        "flags": cpu_flags(path, mask=False),
    }


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def host_facts() -> dict[str, Any]:
    """CPU identity and flags, core counts, library versions, threading settings, load."""
    return {
        **cpuinfo(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "versions": {"python": platform.python_version(), **library_versions()},
        "SEPVIT_CPU_FLAGS_MASK": os.environ.get("SEPVIT_CPU_FLAGS_MASK"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "loadavg": loadavg(),
    }


def _gemm_gflops(dtype: torch.dtype, threads: int, seconds: float) -> float:
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(GEMM_N, GEMM_N, generator=g).to(dtype)
        b = torch.randn(GEMM_N, GEMM_N, generator=g).to(dtype)
        torch.matmul(a, b)  # warm-up
        best, t_end = 0.0, time.perf_counter() + seconds
        while True:  # the best of several: a peak, not a typical rate
            t0 = time.perf_counter()
            torch.matmul(a, b)
            dt = time.perf_counter() - t0
            best = max(best, 2 * GEMM_N**3 / dt / 1e9)
            if time.perf_counter() >= t_end:
                return round(best, 1)
    finally:
        torch.set_num_threads(prev)


def gemm_peaks(threads: list[int] | None = None, seconds: float = 1.0) -> dict[str, Any]:
    """fp32 and bf16 GFLOP/s of a 2048³ matmul, best of ``seconds`` of repeats, per thread count.

    ``{"fp32": {"1": ..., "2": ...}, "bf16": {...}, "n": 2048}``; bf16 runs only where the CPU
    has native bf16 (avx512_bf16 or AMX), since elsewhere torch emulates it at a fraction of fp32.
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    counts = sorted(set(threads or [1, usable or 1]))
    flags = cpuinfo().get("flags", {})
    out: dict[str, Any] = {"n": GEMM_N, "statistic": "best of repeats", "fp32": {}, "bf16": {}}
    for n in counts:
        out["fp32"][str(n)] = _gemm_gflops(torch.float32, n, seconds)
        if flags.get("avx512_bf16") or flags.get("amx_bf16"):
            out["bf16"][str(n)] = _gemm_gflops(torch.bfloat16, n, seconds)
    return out


def peak_fraction(
    peaks: dict[str, Any], gflop_per_image: float, img_per_s: float, threads: int, dtype: str
) -> float | None:
    """``img_per_s`` as a fraction of the ``dtype`` GEMM peak at ``threads``; None if unmeasured."""
    peak = peaks.get(dtype, {}).get(str(threads))
    if not peak or not gflop_per_image:
        return None
    return round(img_per_s * gflop_per_image / peak, 3)


def model_gflops(model: torch.nn.Module, img_size: tuple[int, int]) -> float:
    """Multiply-adds x 2 of one image's forward pass (FLOP counter over aten ops), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, *img_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():  # the counter's module hooks need autograd views
        model(x)
    return round(counter.get_total_flops() / 1e9, 3)


def write_results(doc: dict[str, Any], path: Path) -> None:
    """Stamp ``doc`` with its end time and load average and write it as JSON to ``path``."""
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    doc["loadavg_end"] = loadavg()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    print(json.dumps({"host": host_facts(), "gemm_peaks": gemm_peaks()}, indent=2))
