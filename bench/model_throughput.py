"""Model throughput: variant x runtime x batch x CPU threads, images/s at 224x224.

Runtimes: ``eager`` (fp32, inference_mode), ``compile`` (torch.compile, inductor), ``onnxruntime``
(CPU provider, graph optimisations on), ``bf16`` and ``int8`` (handlers/cpu_runtimes.py, built
by the serving code), ``auto`` (the serving runtime ``auto``: its fresh search on this host, with
its accuracy gate; the row records what it picked), ``auto-nobf16`` (the same with the bf16
flags masked: what auto picks on a host without native bf16), and ``tensorrt`` (fp16 engine)
where a CUDA GPU and the ``tensorrt`` package are present; runtimes this host cannot run are
listed under ``skipped``.

Within a cell (variant, threads, batch) every runtime is built first, then the ``--repeats``
are interleaved (eager, compile, ..., eager, compile, ...), so a load change on a shared machine
hits every runtime alike. The JSON (``bench/results/model_throughput.json``) keeps every repeat
and the median, the host facts and fp32/bf16 GEMM peaks measured in the same run
(bench/hostinfo.py), the load average before and after, each model's GFLOP per image and each
cell's achieved GFLOP/s as a fraction of the matching peak. Run with
``OMP_WAIT_POLICY=PASSIVE`` (the Makefile sets it): spinning OpenMP threads distort CPU timings
on small machines.

    python bench/model_throughput.py                      # everything (batches 1 and 8)
    python bench/model_throughput.py --variants sepvit_lite --batches 1 --repeats 1 \
        --min-seconds 0.2 --output /tmp/mt_smoke.json      # a smoke test
    python bench/model_throughput.py --variants sepvit_lite --runtimes eager onnxruntime
    python bench/model_throughput.py --variants sepvit_tiny sepvit_lite --batches 8 \
        --threads 2 --runtimes eager auto auto-nobf16 bf16 int8 onnxruntime \
        --output bench/results/cpu_runtimes.json     # the fast-CPU-runtime targets (issue 21)

Default variants: the four SepViT ones, plus SeT-8 and SeT-16 (``set_33`` on request).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.hostinfo import gemm_peaks, host_facts, loadavg, model_gflops  # noqa: E402
from sepvit import create_model, list_models  # noqa: E402
from sepvit.export import export_onnx  # noqa: E402

RUNTIMES = (
    "eager",
    "compile",
    "onnxruntime",
    "bf16",
    "bf16-torch",
    "int8",
    "int8-static",
    "auto",
    "auto-nobf16",
    "tensorrt",
)
DEFAULT_RUNTIMES = ("eager", "compile", "onnxruntime", "auto", "tensorrt")
# the GEMM peak each runtime's arithmetic is held to (int8: no int8 peak is measured; the bf16
# one is the nearest, and what auto competes with)
PEAK_DTYPE = {"bf16": "bf16", "int8": "bf16", "tensorrt": None}
# the serving code's runtimes: bench name -> (runtime, options)
SERVED: dict[str, tuple[str, dict[str, Any]]] = {
    "bf16": ("bf16", {}),  # its default engine: OpenVINO where installed
    "bf16-torch": ("bf16", {"bf16_engine": "torch"}),
    "int8": ("int8", {}),  # dynamic
    "int8-static": ("int8", {"int8_method": "static"}),
    "auto": ("auto", {}),
    "auto-nobf16": ("auto", {}),
}
NO_BF16 = "avx512_bf16,amx_bf16"
DEFAULT_VARIANTS = [m for m in list_models() if m.startswith("sepvit")] + ["set_8", "set_16"]


def time_repeat(fn: Callable[[], object], batch: int, min_seconds: float) -> float:
    """Images/s of ``fn`` over one repeat: calls until ``min_seconds`` have passed."""
    n = 0
    t0 = time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return n * batch / elapsed


def make_runner(
    runtime: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    threads: int,
    onnx_path: Path | None,
    cache: Path,
    info: dict[str, Any],
) -> Callable[[], object]:
    """A no-argument call running ``runtime`` on batch ``x``; ``info`` gets what the serving
    runtime reports (engine, auto's decision)."""
    if runtime == "eager":

        def run() -> object:
            with torch.inference_mode():
                return model(x)

        return run
    if runtime == "compile":
        compiled = torch.compile(model, dynamic=False)

        def run_c() -> object:
            with torch.inference_mode():
                return compiled(x)

        return run_c
    if runtime == "onnxruntime":
        import onnxruntime as ort

        assert onnx_path is not None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x.numpy()}
        return lambda: sess.run(None, feed)
    if runtime in SERVED:
        from handlers.runtime import build_runtime

        size = (x.shape[2], x.shape[3])
        name, opts = SERVED[runtime]
        if runtime == "auto-nobf16":
            os.environ["SEPVIT_CPU_FLAGS_MASK"] = NO_BF16
        try:  # a fresh cache per run: auto decides on this host, now
            served = build_runtime(
                name, model, size, cache_dir=cache, threads=threads, options=opts
            )
        finally:
            os.environ.pop("SEPVIT_CPU_FLAGS_MASK", None)
        keep = ("engine", "method", "chosen", "img_per_s", "candidates", "search_seconds")
        info.update({k: v for k, v in served.info.items() if k in keep}, runtime=served.name)
        return lambda: served(x)
    if runtime == "tensorrt":  # pragma: no cover - needs a GPU
        from handlers.runtime import build_runtime

        trt = build_runtime("tensorrt", model, (x.shape[2], x.shape[3]))

        def run_t() -> object:
            out = trt(x)
            torch.cuda.synchronize()
            return out

        return run_t
    raise ValueError(runtime)


def tensorrt_unavailable() -> str | None:
    """Why TensorRT rows cannot run here (None: they can)."""
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt package is not installed"
    return None


def write(
    args: argparse.Namespace,
    started: str,
    results: list[dict[str, Any]],
    skipped: dict[str, str],
    failed: list[dict[str, Any]],
    complete: bool,
    env: dict[str, Any],
) -> None:
    """Write the JSON document so far: rows, failures, best runtime per cell, ratios to eager."""
    best: dict[str, dict[str, Any]] = {}
    for r in results:
        key = f"{r['variant']}/batch{r['batch']}/threads{r['threads']}"
        if key not in best or r["img_per_s_median"] > best[key]["img_per_s_median"]:
            best[key] = {"runtime": r["runtime"], "img_per_s_median": r["img_per_s_median"]}
    # ratios taken within this run: each runtime over eager at the same cell
    eager = {
        (r["variant"], r["batch"], r["threads"]): r["img_per_s_median"]
        for r in results
        if r["runtime"] == "eager"
    }
    for r in results:
        base = eager.get((r["variant"], r["batch"], r["threads"]))
        r["vs_eager"] = round(r["img_per_s_median"] / base, 3) if base else None
    doc: dict[str, Any] = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z") if complete else None,
        "benchmark": "model_throughput",
        "started": started,
        **env,
        "loadavg_end": loadavg() if complete else None,
        "settings": {
            "img_size": args.img_size,
            "repeats": args.repeats,
            "interleaved": True,
            "min_seconds_per_repeat": args.min_seconds,
            "statistic": "median of repeats",
            "variants": args.variants,
            "runtimes": args.runtimes,
            "batches": args.batches,
            "threads": args.threads,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        },
        "complete": complete,
        "results": results,
        "skipped": skipped,
        "failed": failed,
        "best_runtime": best,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    staged = args.output.with_suffix(".json.tmp")
    staged.write_text(json.dumps(doc, indent=2) + "\n")
    staged.replace(args.output)


def _cell_row(
    variant: str,
    runtime: str,
    batch: int,
    threads: int,
    rates: list[float],
    gflop: float,
    peaks: dict[str, Any],
    info: dict[str, Any],
) -> dict[str, Any]:
    from bench.hostinfo import peak_fraction

    median = statistics.median(rates)
    dtype = info.get("runtime", runtime)  # auto: the dtype of what it picked
    dtype = PEAK_DTYPE.get(dtype, "fp32")
    return {
        "variant": variant,
        "runtime": runtime,
        "batch": batch,
        "threads": threads,
        "img_per_s_median": round(median, 2),
        "img_per_s_repeats": [round(r, 2) for r in rates],
        "gflop_per_s": round(median * gflop, 1),
        "peak_dtype": dtype,
        "peak_fraction": peak_fraction(peaks, gflop, median, threads, dtype) if dtype else None,
        **({"served": info} if info else {}),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--variants", nargs="+", choices=list_models(), default=DEFAULT_VARIANTS, metavar="NAME"
    )
    p.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(DEFAULT_RUNTIMES))
    # batch 32 was never faster than 8 on 2 cores (the last full run): it only took time
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=1.0, help="minimum time per repeat")
    p.add_argument("--peak-seconds", type=float, default=2.0, help="time per GEMM peak")
    p.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "results" / "model_throughput.json"
    )
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")

    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    runtimes = list(args.runtimes)
    if "tensorrt" in runtimes and (why := tensorrt_unavailable()):
        runtimes.remove("tensorrt")
        skipped["tensorrt"] = why
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    env: dict[str, Any] = {"machine": host_facts()}  # loadavg at the start
    env["gemm_peaks"] = gemm_peaks(args.threads, args.peak_seconds)
    env["gflop_per_image"] = {}
    failed: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            model = create_model(variant, num_classes=1000, img_size=args.img_size).eval()
            gflop = model_gflops(model, (args.img_size, args.img_size))
            env["gflop_per_image"][variant] = gflop
            onnx_path = None
            if "onnxruntime" in runtimes:
                onnx_path = Path(tmp) / f"{variant}.onnx"
                export_onnx(model, onnx_path, check=True)
            for threads in args.threads:
                torch.set_num_threads(threads)
                for batch in args.batches:
                    x = torch.randn(batch, 3, args.img_size, args.img_size)
                    runners: dict[str, Callable[[], object]] = {}
                    infos: dict[str, dict[str, Any]] = {}
                    for runtime in runtimes:  # build (and warm up) every runtime of the cell
                        infos[runtime] = {}
                        cache = Path(tmp) / f"cache-{variant}"  # one export per variant
                        try:
                            run = make_runner(
                                runtime, model, x, threads, onnx_path, cache, infos[runtime]
                            )
                            run()
                            run()
                            runners[runtime] = run
                        except Exception as exc:  # a runtime that cannot run a cell is a result
                            last = (str(exc).strip().splitlines() or [""])[-1]
                            msg = f"{type(exc).__name__}: {last}"[:500]
                            failed.append(
                                {
                                    "variant": variant,
                                    "runtime": runtime,
                                    "batch": batch,
                                    "threads": threads,
                                    "error": msg,
                                }
                            )
                            print(f"{variant} {runtime} b{batch} t{threads} FAILED {msg}")
                    rates: dict[str, list[float]] = {r: [] for r in runners}
                    for _ in range(args.repeats):  # interleaved: each repeat visits every runtime
                        for runtime, run in runners.items():
                            rates[runtime].append(time_repeat(run, batch, args.min_seconds))
                    for runtime in runners:
                        row = _cell_row(
                            variant,
                            runtime,
                            batch,
                            threads,
                            rates[runtime],
                            gflop,
                            env["gemm_peaks"],
                            infos[runtime],
                        )
                        results.append(row)
                        picked = infos[runtime].get("runtime", "")
                        print(
                            f"{variant:13s} {runtime:12s} threads={threads} batch={batch:2d} "
                            f"{row['img_per_s_median']:8.2f} img/s "
                            f"({row['peak_fraction']} of {row['peak_dtype']} peak) {picked}",
                            flush=True,
                        )
                    torch._dynamo.reset()
                    # written after every cell: a long run that dies keeps what it measured
                    write(args, started, results, skipped, failed, False, env)
    write(args, started, results, skipped, failed, True, env)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
