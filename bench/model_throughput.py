"""Model throughput: variant x runtime x batch x CPU threads, images/s at 224x224 (fp32).

Runtimes: ``eager`` (inference_mode), ``compile`` (torch.compile, inductor), ``onnxruntime``
(CPU provider, graph optimisations on), and ``tensorrt`` (fp16 engine, the serving runtime's own
build) where a CUDA GPU and the ``tensorrt`` package are present; without them the TensorRT rows
are listed under ``skipped``. Each cell is timed ``--repeats`` times after warm-up;
the JSON keeps every repeat and the median, plus the machine, versions and settings, in
``bench/results/model_throughput.json``. Run with ``OMP_WAIT_POLICY=PASSIVE`` (the Makefile sets
it): spinning OpenMP threads distort CPU timings on small machines.

    python bench/model_throughput.py                      # everything (batches 1, 8, 32)
    python bench/model_throughput.py --variants sepvit_lite --batches 1 --repeats 1 \
        --min-seconds 0.2 --output /tmp/mt_smoke.json      # a smoke test
    python bench/model_throughput.py --variants sepvit_lite --runtimes eager onnxruntime

Default variants: the four SepViT ones, plus SeT-8 and SeT-16 (``set_33`` on request).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

from sepvit import create_model, list_models  # noqa: E402
from sepvit.export import export_onnx  # noqa: E402

RUNTIMES = ("eager", "compile", "onnxruntime", "tensorrt")
DEFAULT_VARIANTS = [m for m in list_models() if m.startswith("sepvit")] + ["set_8", "set_16"]


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
    except ImportError:
        pass
    return info


def time_fn(fn: Callable[[], object], batch: int, repeats: int, min_seconds: float) -> list[float]:
    """Images/s of ``fn`` per repeat; each repeat loops until ``min_seconds`` have passed."""
    fn()
    fn()  # warm-up (allocations, lazy init, compilation)
    rates = []
    for _ in range(repeats):
        n = 0
        t0 = time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                break
        rates.append(n * batch / elapsed)
    return rates


def make_runner(
    runtime: str, model: torch.nn.Module, x: torch.Tensor, threads: int, onnx_path: Path | None
) -> Callable[[], object]:
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
        "machine": machine_info(),
        "settings": {
            "img_size": args.img_size,
            "dtype": "float32",
            "repeats": args.repeats,
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--variants", nargs="+", choices=list_models(), default=DEFAULT_VARIANTS, metavar="NAME"
    )
    p.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=1.0, help="minimum time per repeat")
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
    failed: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            model = create_model(variant, num_classes=1000, img_size=args.img_size).eval()
            onnx_path = None
            if "onnxruntime" in runtimes:
                onnx_path = Path(tmp) / f"{variant}.onnx"
                export_onnx(model, onnx_path, check=True)
            for threads in args.threads:
                torch.set_num_threads(threads)
                for runtime in runtimes:
                    for batch in args.batches:
                        x = torch.randn(batch, 3, args.img_size, args.img_size)
                        t0 = time.perf_counter()
                        cell = f"{variant:13s} {runtime:12s} threads={threads} batch={batch:2d}"
                        try:
                            run = make_runner(runtime, model, x, threads, onnx_path)
                            rates = time_fn(run, batch, args.repeats, args.min_seconds)
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
                            print(f"{cell} FAILED {msg}", flush=True)
                            torch._dynamo.reset()
                            continue
                        row = {
                            "variant": variant,
                            "runtime": runtime,
                            "batch": batch,
                            "threads": threads,
                            "img_per_s_median": round(statistics.median(rates), 2),
                            "img_per_s_repeats": [round(r, 2) for r in rates],
                            "wall_s": round(time.perf_counter() - t0, 1),
                        }
                        results.append(row)
                        print(f"{cell} {row['img_per_s_median']:8.2f} img/s", flush=True)
                        torch._dynamo.reset()
                        # written after every cell: a long run that dies keeps what it measured
                        write(args, started, results, skipped, failed, complete=False)
    write(args, started, results, skipped, failed, complete=True)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
