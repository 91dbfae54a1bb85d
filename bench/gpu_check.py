"""GPU check: TensorRT fp16 engines, ONNX Runtime CUDA and eager CUDA, and the gateway on a GPU.

Run by ``bench/gpu_check.sh`` on a machine with a CUDA GPU (it installs what is missing). For
the three demo models (their trained weights; random weights of the same architecture where
``make models`` has not been run) and SepViT-Tiny at 224 (random weights, 1000 classes):

1. builds each runtime: ``tensorrt`` (an fp16 engine via ``handlers.runtime.build_runtime``),
   ``onnxruntime`` (CUDA execution provider when the installed onnxruntime has it) and
   ``eager`` (fp32 on the GPU);
2. checks each against eager fp32 with the serving code's checks: parity on the golden inputs
   and, for the demo models, the accuracy gate on SepViT-Shapes validation images;
3. measures batch 1 and batch 8: latency percentiles of single calls (CUDA-synchronised) and
   throughput over ``--seconds``;
4. starts the gateway (``sepvit-serve``, embedded backend) with the demo classifier configured
   ``runtime: tensorrt``, runs a closed-loop load for ``--load-seconds`` and records throughput,
   latency and the runtime ``/models`` reports (a fallback to eager is a result, not a pass);
5. writes ``bench/results/gpu_<gpu>.json`` with the host facts, GPU, versions and every cell,
   including the cells that failed and why.

    python bench/gpu_check.py                  # after bench/gpu_check.sh has installed things
    python bench/gpu_check.py --seconds 1 --load-seconds 3 --models sepvit_tiny   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.hostinfo import host_facts, write_results  # noqa: E402

RUNTIMES = ("eager", "onnxruntime", "tensorrt")
MODELS = ("cls", "det", "seg", "sepvit_tiny")
PAPER = {"sepvit_tiny": "TensorRT on a T4, batch 8: 23.7 ms (the SepViT paper)"}


def gpu_facts() -> dict[str, Any]:
    out: dict[str, Any] = {"cuda_available": torch.cuda.is_available(), "torch": torch.__version__}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(
            name=p.name,
            capability=f"{p.major}.{p.minor}",
            memory_gib=round(p.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    for mod in ("tensorrt", "onnxruntime"):
        try:
            m = __import__(mod)
            out[mod] = m.__version__
            if mod == "onnxruntime":
                out["onnxruntime_providers"] = m.get_available_providers()
        except ImportError as exc:
            out[mod] = f"not installed ({exc})"
    return out


def load_model(which: str) -> tuple[torch.nn.Module, tuple[int, int], str]:
    """(model, input size, weights) for a demo model name (cls/det/seg) or a variant."""
    from bench.serving_load import checkpoint_for
    from sepvit import create_model, read_metadata

    if which in ("cls", "det", "seg"):
        task = {"cls": "classify", "det": "detect", "seg": "segment"}[which]
        ckpt, _cfg, weights = checkpoint_for(task, Path("/tmp"))
        meta = read_metadata(ckpt)
        model = create_model(meta["variant"], task=meta["task"], checkpoint=ckpt)
    else:
        model, weights = create_model(which, num_classes=1000, img_size=224), "random"
    cfg = model.pretrained_cfg  # type: ignore[union-attr]
    return model.eval(), (int(cfg["input_size"][1]), int(cfg["input_size"][2])), weights


def on_cpu(rt: Any) -> Any:
    """``rt`` with its outputs moved to the CPU."""
    from handlers.runtime import Runtime

    return Runtime(rt.name, lambda x: [t.cpu() for t in rt(x)], torch.device("cpu"), rt.info)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timings(run: Any, x: torch.Tensor, seconds: float) -> dict[str, Any]:
    """Single-call latency percentiles (ms) and throughput (img/s) of ``run`` on batch ``x``."""
    for _ in range(3):
        run(x)
    sync()
    lat = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(lat) < 10:
        t0 = time.perf_counter()
        run(x)
        sync()
        lat.append((time.perf_counter() - t0) * 1000)
    lat.sort()
    return {
        "calls": len(lat),
        "p50_ms": round(lat[len(lat) // 2], 3),
        "p90_ms": round(lat[int(len(lat) * 0.9)], 3),
        "img_per_s": round(len(x) * len(lat) / (sum(lat) / 1000), 1),
    }


def check_model(which: str, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    from handlers.cpu_runtimes import gate, gate_inputs
    from handlers.runtime import build_runtime, check_parity, golden_inputs

    model, size, weights = load_model(which)
    task = model.pretrained_cfg["task"]  # type: ignore[index]
    out: dict[str, Any] = {"input_size": list(size), "task": task, "weights": weights, "cells": {}}
    if which in PAPER:
        out["paper"] = PAPER[which]
    gpu_model = model.to(args.device)
    eager = build_runtime("eager", gpu_model, size)
    decode = None
    if task == "detect":

        def decode(raw: list[torch.Tensor]) -> Any:
            return gpu_model.postprocess(raw[0], raw[1], size)  # type: ignore[operator]

    for name in args.runtimes:
        cell: dict[str, Any] = {}
        out["cells"][name] = cell
        t0 = time.perf_counter()
        try:
            rt = eager
            if name != "eager":
                opts = {"precision": "fp16"} if name == "tensorrt" else {}
                rt = build_runtime(name, gpu_model, size, cache_dir=cache, options=opts)
            cell["build_s"] = round(time.perf_counter() - t0, 1)
            if name != "eager":  # compared on the CPU: runtimes answer on either device
                got, want = on_cpu(rt), on_cpu(eager)
                report = check_parity(task, got, want, golden_inputs(size), decode=decode)
                cell["parity"] = {"ok": report.ok, **report.metrics}
                if weights == "demo":  # a gate on random weights measures noise
                    g = gate(task, got, want, gate_inputs(model, size), decode)
                    cell["gate"] = {"ok": g.ok, **g.metrics}
            for b in (1, 8):
                x = torch.randn(b, 3, *size, device=args.device)
                cell[f"b{b}"] = timings(rt, x, args.seconds)
            print(f"  {which} {name}: {cell}", flush=True)
        except Exception as exc:  # a runtime that cannot build or run is a result
            cell["error"] = f"{type(exc).__name__}: {exc}"[:800]
            cell["traceback"] = traceback.format_exc()[-2000:]
            print(f"  {which} {name}: FAILED {cell['error']}", flush=True)
    model.cpu()
    return out


def gateway_load(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The gateway with the demo classifier on ``runtime: tensorrt`` under closed-loop load."""
    from bench.loadgen import Request, run_closed_loop, summarize
    from bench.serving_load import checkpoint_for, gateway, images, write_config

    ckpt, base_cfg, weights = checkpoint_for("classify", work)
    cfg = write_config(base_cfg, "tensorrt", work / "model-config-trt.yaml")
    entry = {"name": "cls", "checkpoint": str(ckpt), "model_config_file": str(cfg)}
    payloads = images("classify", 224)
    out: dict[str, Any] = {"weights": weights, "concurrency": args.concurrency}
    with gateway(work, [entry], max_queue=1024, max_concurrent_requests=1024) as gw:
        with urllib.request.urlopen(f"{gw.url}/models", timeout=10) as r:
            models = json.loads(r.read())["models"]
        out["models"] = models
        served = models[0].get("runtime")
        out["runtime_served"] = served
        jpeg = (("Content-Type", "image/jpeg"),)

        def make(i: int) -> Request:
            return Request("POST", "/classify?model=cls", payloads[i % len(payloads)], jpeg)

        res = asyncio.run(
            run_closed_loop(
                gw.url,
                make,
                concurrency=args.concurrency,
                duration_s=args.load_seconds,
                warmup_s=2.0,
            )
        )
        out["load"] = summarize(res)
    out["ok"] = served == "tensorrt" and out["load"]["ok"] > 0
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    p.add_argument("--seconds", type=float, default=3.0, help="timing per batch size")
    p.add_argument("--load-seconds", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--no-gateway", dest="gateway", action="store_false")
    p.add_argument(
        "--device", default="cuda", help="cpu: a dry run of this script's code paths (no GPU)"
    )
    p.add_argument("--output", type=Path, default=None, help="default bench/results/gpu_<gpu>.json")
    args = p.parse_args(argv)
    doc: dict[str, Any] = {
        "benchmark": "gpu_check",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": host_facts(),
        "gpu": gpu_facts(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "models": {},
    }
    print(json.dumps(doc["gpu"], indent=2), flush=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch", file=sys.stderr)
        return 3
    work = Path("/tmp/sepvit-gpu-check")
    work.mkdir(parents=True, exist_ok=True)
    for which in args.models:
        print(which, flush=True)
        doc["models"][which] = check_model(which, args, work / "cache")
    if args.gateway:
        print("gateway, runtime tensorrt", flush=True)
        try:
            doc["gateway"] = gateway_load(args, work)
        except Exception as exc:
            doc["gateway"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        print(json.dumps({k: v for k, v in doc["gateway"].items() if k != "models"}), flush=True)
    rows = [
        f"{m} {rt} b{b}: {c[f'b{b}']['p50_ms']} ms, {c[f'b{b}']['img_per_s']} img/s"
        for m, r in doc["models"].items()
        for rt, c in r["cells"].items()
        for b in (1, 8)
        if f"b{b}" in c
    ]
    doc["summary"] = rows
    name = doc["gpu"].get("name", "none")
    slug = "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")
    print("\n".join(rows))
    write_results(doc, args.output or ROOT / "bench" / "results" / f"gpu_{slug}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
