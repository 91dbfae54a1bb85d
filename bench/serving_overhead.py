"""Serving overhead: CPU seconds per request spent outside inference, gateway vs TorchServe.

Both servers serve the same demo classifier with the same ``model-config.yaml`` (runtime
``--runtime``, default ``auto``: the in-process run decides, both servers reuse the decision from
the cache; one intra-op thread) to closed-loop clients. For each server and concurrency the run
measures the server processes' CPU time (the whole process tree: the gateway; TorchServe's Java
frontend and its Python worker) across a fixed-length load, divided by the requests answered.
The in-process pipeline (decode, preprocess, runtime, postprocess; no HTTP) is measured the same
way at every batch size from 1 to the largest concurrency. Each server reports the batches it
really ran (the gateway its statistics extension, TorchServe's worker the
``x-sepvit-batch-size`` header on each answer), so the pipeline's share of a request is the
in-process CPU per image at the batch sizes that server ran, weighted by images. Overhead per
request = server CPU per request - that share. (The naive figure, which assumes every batch is
as large as the concurrency, is kept as ``..._assuming_full_batches``.) Latency percentiles
come from the same runs; the raw runtime's and the gateway's throughput give the ``>= 0.95``
ratio.

Targets (issue 21): gateway overhead <= 1/3 of TorchServe's; gateway throughput >= 0.95 of the
raw runtime (in-process pipeline) with ``auto``.

    python bench/serving_overhead.py                       # ~5 min
    python bench/serving_overhead.py --duration 2 --concurrency 1 --no-torchserve \\
        --output /tmp/overhead_smoke.json                  # a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.hostinfo import gemm_peaks, host_facts, write_results  # noqa: E402
from bench.loadgen import Request, run_closed_loop, summarize  # noqa: E402
from bench.serving_load import (  # noqa: E402
    checkpoint_for,
    gateway,
    images,
    write_config,
)
from service.torchserve.process import TorchServeProcess, build_archives, missing  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (Linux ``/proc``)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    return total


BatchCounter = Callable[[], dict[int, int]]


def gateway_batch_images(url: str, model: str) -> BatchCounter:
    """Images the gateway has run per batch size, from its statistics extension."""

    def read() -> dict[int, int]:
        with urllib.request.urlopen(f"{url}/v2/models/{model}/stats", timeout=10) as r:
            stats = json.load(r)["model_stats"][0]
        return {
            int(b["batch_size"]): int(b["batch_size"]) * int(b["compute_infer"]["count"])
            for b in stats["batch_stats"]
        }

    return read


def load(
    url: str,
    make: Callable[[int], Request],
    pid: int,
    concurrency: int,
    args: argparse.Namespace,
    batch_images: BatchCounter | None = None,
) -> dict[str, Any]:
    """A warm-up, then ``--duration`` s of closed-loop load with the server tree's CPU time and
    the images run per batch size: from ``batch_images()`` (before/after) or, without it, from
    each answer's ``x-sepvit-batch-size`` header."""
    asyncio.run(run_closed_loop(url, make, concurrency=concurrency, duration_s=args.warmup))
    before = batch_images() if batch_images else {}
    cpu0 = tree_cpu_seconds(pid)
    result = asyncio.run(
        run_closed_loop(
            url,
            make,
            concurrency=concurrency,
            duration_s=args.duration,
            keep_headers=("x-sepvit-batch-size",),
        )
    )
    cpu = tree_cpu_seconds(pid) - cpu0
    if batch_images:
        after = batch_images()
        by_size = {k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)}
    else:
        sizes = [int(s.headers.get("x-sepvit-batch-size", 0)) for s in result.samples]
        by_size = {k: sizes.count(k) for k in sorted(set(sizes)) if k > 0}
    row = summarize(result)
    row["images_by_batch_size"] = {str(k): n for k, n in sorted(by_size.items())}
    # every request started in the run was answered in it (in-flight ones are awaited)
    answered = sum(s.status == 200 for s in result.samples)
    row["cpu_ms_per_request"] = round(cpu / answered * 1000, 2) if answered else None
    row["server_cpu_s"] = round(cpu, 2)
    print(
        f"    c={concurrency} {row['throughput_rps']:7.1f} req/s p50 {row['latency_ms']['p50']} ms "
        f"{row['cpu_ms_per_request']} CPU-ms/request",
        flush=True,
    )
    return row


def pipeline_cpu(
    ckpt: Path, runtime: str, payloads: list[bytes], batches: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    """The in-process pipeline: CPU-ms per image and images/s at each batch size."""
    from handlers.pipeline import Pipeline, PipelineConfig
    from sepvit import create_model, read_metadata

    torch.set_num_threads(1)
    meta = read_metadata(ckpt)
    model = create_model(meta["variant"], task=meta["task"], checkpoint=ckpt)
    cfg = PipelineConfig(runtime=runtime, threads=1, max_images=64)
    pipe = Pipeline(model, cfg)
    out: dict[str, Any] = {"runtime": pipe.runtime.name, "runtime_info": pipe.runtime_info}
    for b in sorted(set(batches)):
        chunk = [payloads[i % len(payloads)] for i in range(b)]
        pipe.handle(chunk)
        n, cpu0, t0 = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < args.duration:
            pipe.handle(chunk)
            n += b
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        out[f"b{b}"] = {
            "cpu_ms_per_image": round(cpu / n * 1000, 2),
            "img_per_s": round(n / wall, 2),
        }
        print(f"    pipeline b{b}: {out[f'b{b}']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runtime", default="auto")
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 4])
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--no-torchserve", dest="torchserve", action="store_false")
    p.add_argument(
        "--gateway-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a gateway setting (YAML value), e.g. pipelining=false; repeatable",
    )
    p.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "results" / "serving_overhead.json"
    )
    args = p.parse_args(argv)
    extra: dict[str, Any] = {}
    for item in args.gateway_setting:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--gateway-setting {item!r}: expected KEY=VALUE")
        extra[key] = yaml.safe_load(value)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # one cache for the three: the in-process pipeline decides (auto), the gateway (whose
    # default is .cache in the repository) and TorchServe's worker reuse that decision
    os.environ.setdefault("SEPVIT_CACHE_DIR", str(ROOT / ".cache"))
    doc: dict[str, Any] = {
        "benchmark": "serving_overhead",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": host_facts(),
        "gemm_peaks": gemm_peaks([1], 1.0),
        "settings": {k: str(v) for k, v in vars(args).items() if k != "output"},
        "servers": {},
        "skipped": {},
    }
    work = Path(tempfile.mkdtemp(prefix="sepvit-overhead-"))
    ckpt, base_cfg, weights = checkpoint_for("classify", work)
    cfg = write_config(base_cfg, args.runtime, work / "model-config.yaml")
    doc["settings"]["weights"] = weights
    payloads = images("classify", 224)
    print("in-process pipeline", flush=True)
    sizes = list(range(1, max(args.concurrency) + 1))
    doc["pipeline"] = pipeline_cpu(ckpt, args.runtime, payloads, sizes, args)
    jpeg = (("Content-Type", "image/jpeg"),)
    entry = {"name": "cls", "checkpoint": str(ckpt), "model_config_file": str(cfg)}
    print("gateway", flush=True)
    with gateway(work, [entry], **{"torch_threads": 1, "max_queue": 1024, **extra}) as gw:

        def make_gw(i: int) -> Request:
            return Request("POST", "/classify?model=cls", payloads[i % len(payloads)], jpeg)

        doc["servers"]["gateway"] = {
            str(c): load(gw.url, make_gw, gw.proc.pid, c, args, gateway_batch_images(gw.url, "cls"))
            for c in args.concurrency
        }
    why = None if args.torchserve else "disabled (--no-torchserve)"
    why = why or missing()
    if why:
        doc["skipped"]["torchserve"] = why
    else:
        print("torchserve", flush=True)
        store = build_archives({"cls": (ckpt, cfg)}, work / "store")
        ts = TorchServeProcess(work / "ts", store, ["cls"])
        ts.start()
        try:
            auth = ("Authorization", f"Bearer {ts.token}")

            def make_ts(i: int) -> Request:
                body = payloads[i % len(payloads)]
                return Request("POST", "/predictions/cls", body, (auth, *jpeg))

            assert ts.proc is not None
            doc["servers"]["torchserve"] = {
                str(c): load(ts.inference, make_ts, ts.proc.pid, c, args) for c in args.concurrency
            }
        finally:
            ts.stop()
    doc["overhead"] = overhead(doc)
    print(json.dumps(doc["overhead"], indent=2))
    write_results(doc, args.output)
    return 0


def overhead(doc: dict[str, Any]) -> dict[str, Any]:
    """Per server and concurrency: CPU-ms per request outside the pipeline, and the ratios."""
    pipe = doc["pipeline"]
    out: dict[str, Any] = {}
    for server, cells in doc["servers"].items():
        for c, row in cells.items():
            ref = pipe.get(f"b{c}") or pipe["b1"]
            if row.get("cpu_ms_per_request") is None:
                continue
            observed = row.get("images_by_batch_size") or {}
            # not reported (an older handler): assume full batches, and say so
            share = pipeline_share(pipe, observed or {c: 1})
            out[f"{server}_c{c}_batch_sizes_observed"] = bool(observed)
            out[f"{server}_c{c}_mean_batch_size"] = share["mean_batch_size"]
            out[f"{server}_c{c}_cpu_ms_outside_pipeline"] = round(
                row["cpu_ms_per_request"] - share["cpu_ms_per_image"], 2
            )
            out[f"{server}_c{c}_cpu_ms_outside_pipeline_assuming_full_batches"] = round(
                row["cpu_ms_per_request"] - ref["cpu_ms_per_image"], 2
            )
            if server == "gateway":
                out[f"gateway_c{c}_vs_pipeline_throughput"] = round(
                    row["throughput_rps"] / ref["img_per_s"], 3
                )
    for c in doc["servers"].get("gateway", {}):
        g = out.get(f"gateway_c{c}_cpu_ms_outside_pipeline")
        t = out.get(f"torchserve_c{c}_cpu_ms_outside_pipeline")
        if g is not None and t:
            out[f"c{c}_gateway_over_torchserve_overhead"] = round(g / t, 3)
    out["median_gateway_overhead_ms"] = round(
        statistics.median(
            [v for k, v in out.items() if k.startswith("gateway_") and k.endswith("_pipeline")]
            or [0.0]
        ),
        2,
    )
    return out


def pipeline_share(pipe: dict[str, Any], images_by_size: dict[str, int]) -> dict[str, float]:
    """In-process pipeline CPU-ms per image at the batch sizes a server ran, weighted by images
    (a size that was not measured counts as the nearest measured one); batch 1 when unknown."""
    measured = sorted(int(k[1:]) for k in pipe if k.startswith("b") and k[1:].isdigit())
    counts = {int(k): n for k, n in images_by_size.items() if n > 0} or {1: 1}
    images = sum(counts.values())
    cpu = 0.0
    for size, n in counts.items():
        nearest = min(measured, key=lambda m: (abs(m - size), m))
        cpu += n * pipe[f"b{nearest}"]["cpu_ms_per_image"]
    batches = sum(n / size for size, n in counts.items())
    return {"cpu_ms_per_image": cpu / images, "mean_batch_size": round(images / batches, 2)}


if __name__ == "__main__":
    raise SystemExit(main())
