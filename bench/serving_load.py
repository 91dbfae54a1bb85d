"""Serving load: closed-loop clients against ``/classify`` (and ``/detect``, ``/segment``).

Scenarios, all in one run so that their ratios are taken on the same machine state:

* ``raw``: the model's runtime and the whole handler pipeline in this process, no HTTP (the
  reference for the gateway's overhead); runtimes ``auto`` (the demo models', its decision
  shared with every server through ``SEPVIT_CACHE_DIR``) and ``eager``;
* ``embedded-<runtime>-batch``: ``sepvit-serve`` with the embedded backend and dynamic batching
  (``batchSize``/``maxBatchDelay`` of the model's ``model-config.yaml``);
* ``embedded-<runtime>-batch-nodelay``: the same batch size with ``max_delay_ms: 0`` (a batch is
  whatever queued while the previous one ran, as Triton's default queue delay of 0 does);
* ``embedded-<runtime>-nobatch``: the same with ``max_batch_size: 1``;
* ``torchserve-backend-<runtime>``: ``sepvit-serve --backend torchserve`` in front of a
  TorchServe serving the same checkpoint as a ``.mar`` (only where the torchserve backend exists);
* ``torchserve-direct-<runtime>``: the same TorchServe, clients posting to ``/predictions``;
* ``tasks``: ``/detect`` and ``/segment`` (rle, png, overlay) at one concurrency, with response
  sizes.

Each (scenario, concurrency) cell runs ``--repeats`` times (``--warmup`` s unmeasured, then
``--duration`` s measured); the JSON keeps each repeat and the medians. Batch sizes come from the
gateway's ``sepvit_batch_size`` histogram (difference of ``/metrics`` around the run) and from
TorchServe's ``x-sepvit-batch-size`` response header. The demo checkpoints of ``model_store/``
are used when they exist, else random-weight models of the same architecture (speed does not
depend on the weights); the JSON says which.

    python bench/serving_load.py                                    # the full run (~35 min)
    python bench/serving_load.py --duration 1 --warmup 0.5 --repeats 1 --concurrency 1 4 \\
        --runtimes eager --output /tmp/serving_smoke.json            # a smoke test

Run it on a quiet machine with ``OMP_WAIT_POLICY=PASSIVE``. The load generator runs in this
process and shares the CPU with the server, as a sidecar client would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.hostinfo import gemm_peaks, host_facts, write_results  # noqa: E402
from bench.loadgen import Request, run_closed_loop, summarize  # noqa: E402
from service.processes import GatewayProcess, start_gateway  # noqa: E402
from service.torchserve.process import TorchServeProcess, build_archives, missing  # noqa: E402

STORE = ROOT / "model_store"
DEMO = {
    "classify": "sepvit_lite_shapes_cls",
    "detect": "sepvit_lite_shapes_det",
    "segment": "sepvit_lite_shapes_seg",
}
# the demo models' architectures (Makefile `models`), for random-weight stand-ins
STAND_INS: dict[str, dict[str, Any]] = {
    "classify": {"img_size": 224},
    "detect": {
        "img_size": 256,
        "fpn_channels": 96,
        "head_channels": 96,
        "head_convs": 2,
        "head_norm": "gn",
    },
    "segment": {"img_size": 256, "fpn_channels": 64, "head_channels": 64},
}


# -- inputs ----------------------------------------------------------------------------------
def checkpoint_for(task: str, tmp: Path) -> tuple[Path, Path, str]:
    """(checkpoint, model-config.yaml, "demo" | "random") for ``task``."""
    name = DEMO[task]
    ckpt, config = STORE / name / "model.safetensors", STORE / name / "model-config.yaml"
    if ckpt.is_file():
        return ckpt, config, "demo"
    from sepvit import create_model, save_checkpoint
    from sepvit.data.shapes import CLASSES

    labels = list(CLASSES) if task != "segment" else ["background", *CLASSES]
    torch.manual_seed(0)
    model = create_model(
        "sepvit_lite", task=task, num_classes=len(labels), label_names=labels, **STAND_INS[task]
    )
    out = tmp / f"{name}.safetensors"
    save_checkpoint(model, out)
    return out, config, "random"


def images(task: str, size: int, n: int = 32) -> list[bytes]:
    """``n`` SepViT-Shapes test scenes as JPEG (quality 90)."""
    from sepvit.data.shapes import ShapesDataset

    ds = ShapesDataset("test", task, size, length=n)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(ds[i].image).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_config(base: Path, runtime: str, dest: Path) -> Path:
    """A copy of ``model-config.yaml`` with ``handler.runtime`` set."""
    cfg = yaml.safe_load(base.read_text()) or {}
    cfg.setdefault("handler", {})["runtime"] = runtime
    dest.write_text(yaml.safe_dump(cfg))
    return dest


# -- servers ---------------------------------------------------------------------------------
@contextlib.contextmanager
def gateway(work: Path, models: list[dict[str, Any]], **settings: Any) -> Iterator[GatewayProcess]:
    """A ``sepvit-serve`` process on loopback (HTTP only), stopped on exit."""
    config = {"models": models, "grpc_port": None, "log_level": "warning", **settings}
    gw = start_gateway(work, config, timeout=300)
    try:
        yield gw
    finally:
        gw.stop()


def batch_histogram(text: str, model: str) -> dict[str, float]:
    """Cumulative ``sepvit_batch_size_bucket`` counts by ``le`` for ``model``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("sepvit_batch_size_bucket{") and f'model="{model}"' in line:
            le = line.split('le="')[1].split('"')[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


def batch_distribution(before: str, after: str, model: str) -> dict[str, Any]:
    """Batches per histogram bucket (``le`` upper bounds) executed between two scrapes."""
    b, a = batch_histogram(before, model), batch_histogram(after, model)
    counts, prev = {}, 0.0
    for le in sorted(a, key=lambda k: float(k)):
        cum = a[le] - b.get(le, 0.0)
        if cum - prev:
            counts[le] = int(cum - prev)
        prev = cum

    def scalar(text: str, suffix: str) -> float:
        key = f'sepvit_batch_size_{suffix}{{model="{model}"}} '
        return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(key))

    images = scalar(after, "sum") - scalar(before, "sum")
    batches = scalar(after, "count") - scalar(before, "count")
    return {
        "batches_by_le": counts,
        "batches": int(batches),
        "mean_batch_size": round(images / batches, 2) if batches else None,
    }


def header_distribution(samples: list[Any]) -> dict[str, Any]:
    """Batch sizes from TorchServe's ``x-sepvit-batch-size`` header (per request)."""
    sizes = [int(s.headers["x-sepvit-batch-size"]) for s in samples if s.headers]
    if not sizes:
        return {}
    hist: dict[str, int] = {}
    for v in sizes:
        hist[str(v)] = hist.get(str(v), 0) + 1
    return {"requests_by_batch_size": dict(sorted(hist.items(), key=lambda kv: int(kv[0])))}


# -- measuring -------------------------------------------------------------------------------
def median_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(get: Callable[[dict[str, Any]], float]) -> float:
        vals = [get(r) for r in runs if get(r) == get(r)]  # drop NaN
        return round(statistics.median(vals), 2) if vals else float("nan")

    return {
        "throughput_rps": med(lambda r: r["throughput_rps"]),
        "p50_ms": med(lambda r: r["latency_ms"]["p50"]),
        "p95_ms": med(lambda r: r["latency_ms"]["p95"]),
        "p99_ms": med(lambda r: r["latency_ms"]["p99"]),
        "response_bytes_mean": med(lambda r: r["response_bytes_mean"]),
    }


def measure(
    url: str,
    make: Callable[[int], Request],
    concurrency: int,
    args: argparse.Namespace,
    scrape: Callable[[], str] | None = None,
    model: str | None = None,
    keep_headers: tuple[str, ...] = (),
) -> dict[str, Any]:
    runs = []
    for _ in range(args.repeats):
        before = scrape() if scrape else ""
        result = asyncio.run(
            run_closed_loop(
                url,
                make,
                concurrency=concurrency,
                duration_s=args.duration,
                warmup_s=args.warmup,
                keep_headers=keep_headers,
            )
        )
        row = summarize(result)
        if scrape and model:
            row["batch_sizes"] = batch_distribution(before, scrape(), model)
        elif keep_headers:
            row["batch_sizes"] = header_distribution(result.window())
        runs.append(row)
    out = {"concurrency": concurrency, **median_summary(runs), "repeats": runs}
    print(
        f"    c={concurrency:3d} {out['throughput_rps']:8.1f} req/s  p50 {out['p50_ms']:7.1f} ms"
        f"  p99 {out['p99_ms']:7.1f} ms  statuses {runs[-1]['statuses']}",
        flush=True,
    )
    return out


def raw_reference(
    ckpt: Path, runtime: str, payloads: list[bytes], batch: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The runtime alone (model on a preprocessed batch) and the whole pipeline in-process."""
    from handlers.pipeline import Pipeline, PipelineConfig
    from sepvit import create_model, read_metadata

    torch.set_num_threads(args.threads)
    meta = read_metadata(ckpt)
    model = create_model(meta["variant"], task=meta["task"], checkpoint=ckpt)
    pipe = Pipeline(model, PipelineConfig(runtime=runtime, threads=args.threads, max_images=64))
    h, w = pipe.input_size
    out: dict[str, Any] = {"runtime": pipe.runtime.name}
    seconds = max(args.duration / 2, 0.5)

    def timed(call: Callable[[], object], b: int) -> tuple[float, float]:
        """(images/s median over repeats, p50 ms of one call) of ``call`` on ``b`` images."""
        call()  # warm-up
        rates, lat = [], []
        for _ in range(args.repeats):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                t = time.perf_counter()
                call()
                lat.append(time.perf_counter() - t)
                n += 1
            rates.append(n * b / (time.perf_counter() - t0))
        return round(statistics.median(rates), 2), round(statistics.median(lat) * 1000, 2)

    for b in sorted({1, batch}):
        x = torch.randn(b, 3, h, w)
        chunk = [payloads[i % len(payloads)] for i in range(b)]
        for kind, call in (
            ("model", lambda x=x: pipe.infer(x)),
            ("pipeline", lambda chunk=chunk: pipe.handle(chunk)),
        ):
            rate, p50 = timed(call, b)
            out[f"{kind}_b{b}_img_per_s"], out[f"{kind}_b{b}_p50_ms"] = rate, p50
    return out


# -- the run ---------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    work = Path(tempfile.mkdtemp(prefix="sepvit-bench-"))
    doc: dict[str, Any] = {
        "benchmark": "serving_load",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": host_facts(),
        "gemm_peaks": gemm_peaks([1, args.threads]),
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("output",) and not callable(v)
        },
        "scenarios": {},
        "skipped": {},
    }
    doc["settings"]["client"] = "bench/loadgen.py closed loop, one keep-alive connection each"
    doc["settings"]["statistic"] = "median of repeats; latency percentiles per repeat"
    try:
        ckpt, base_cfg, weights = checkpoint_for("classify", work)
        doc["settings"]["weights"] = weights
        ts_cfg = yaml.safe_load(base_cfg.read_text()) or {}
        batch, delay = int(ts_cfg.get("batchSize", 8)), float(ts_cfg.get("maxBatchDelay", 5))
        doc["settings"]["model_config"] = {
            "batchSize": batch,
            "maxBatchDelay": delay,
            "runtime": (ts_cfg.get("handler") or {}).get("runtime", "eager"),  # the default
        }
        payloads = images("classify", 224)
        body_path = "/classify?model=cls"

        def make_gw(i: int) -> Request:
            return Request(
                "POST", body_path, payloads[i % len(payloads)], (("Content-Type", "image/jpeg"),)
            )

        common = {"max_queue": 1024, "max_concurrent_requests": 1024}
        common["torch_threads"] = args.threads
        ts_reason = None if args.torchserve else "disabled (--no-torchserve)"
        ts_reason = ts_reason or missing()
        for runtime in args.runtimes:
            cfg = write_config(base_cfg, runtime, work / f"model-config-{runtime}.yaml")
            print(f"raw reference ({runtime})", flush=True)
            doc["scenarios"][f"raw-{runtime}"] = raw_reference(ckpt, runtime, payloads, batch, args)
            entry = {"name": "cls", "checkpoint": str(ckpt), "model_config_file": str(cfg)}
            # (per-model batching, server settings); the default is pipelining on
            variants: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
                "batch": ({"max_batch_size": batch, "max_delay_ms": delay}, {}),
                # decode in the batch thread, after the previous batch's inference
                "batch-nopipe": (
                    {"max_batch_size": batch, "max_delay_ms": delay},
                    {"pipelining": False},
                ),
                # no waiting: a batch is whatever queued while the previous one ran
                "batch-nodelay": ({"max_batch_size": batch, "max_delay_ms": 0}, {}),
                "nobatch": ({"max_batch_size": 1, "max_delay_ms": 0}, {}),
            }
            for label, (batching, server) in variants.items():
                name = f"embedded-{runtime}-{label}"
                if name not in args.scenarios and "all" not in args.scenarios:
                    continue
                print(name, flush=True)
                with gateway(work, [{**entry, **batching}], **common, **server) as gw:
                    doc["scenarios"][name] = {
                        "cells": [
                            measure(gw.url, make_gw, c, args, gw.metrics, "cls")
                            for c in args.concurrency
                        ]
                    }
            if ts_reason:
                doc["skipped"][f"torchserve-*-{runtime}"] = ts_reason
                continue
            doc["scenarios"].update(torchserve_scenarios(work, ckpt, cfg, runtime, args, common))
        if "tasks" in args.scenarios or "all" in args.scenarios:
            doc["scenarios"]["tasks"] = task_scenarios(work, args, common)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc["ratios"] = ratios(doc)
    return doc


def torchserve_scenarios(
    work: Path, ckpt: Path, cfg: Path, runtime: str, args: argparse.Namespace, common: dict
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    payloads = images("classify", 224)
    store = build_archives({"cls": (ckpt, cfg)}, work / f"store-{runtime}")
    ts = TorchServeProcess(work / f"ts-{runtime}", store, ["cls"])
    ts.start()
    try:
        name = f"torchserve-direct-{runtime}"
        print(name, flush=True)
        auth = ("Authorization", f"Bearer {ts.token}")

        def make_ts(i: int) -> Request:
            body = payloads[i % len(payloads)]
            return Request("POST", "/predictions/cls", body, (auth, ("Content-Type", "image/jpeg")))

        out[name] = {
            "cells": [
                measure(ts.inference, make_ts, c, args, keep_headers=("x-sepvit-batch-size",))
                for c in args.concurrency
            ]
        }
        name = f"torchserve-backend-{runtime}"
        print(name, flush=True)
        entry = {"name": "cls", "checkpoint": str(ckpt), "model_config_file": str(cfg)}
        settings = {
            **common,
            "backend": "torchserve",
            "torchserve_address": ts.grpc,
            "torchserve_token_file": str(ts.key_file),
        }
        with gateway(work, [entry], **settings) as gw:

            def make_gw(i: int) -> Request:
                body = payloads[i % len(payloads)]
                return Request(
                    "POST", "/classify?model=cls", body, (("Content-Type", "image/jpeg"),)
                )

            out[name] = {"cells": [measure(gw.url, make_gw, c, args) for c in args.concurrency]}
    finally:
        ts.stop()
    return out


def task_scenarios(work: Path, args: argparse.Namespace, common: dict) -> dict[str, Any]:
    """``/detect`` and ``/segment`` in every output format at ``--task-concurrency``."""
    models, weights = [], {}
    for task, name in (("detect", "det"), ("segment", "seg")):
        ckpt, cfg, weights[task] = checkpoint_for(task, work)
        cfg = write_config(cfg, args.runtimes[0], work / f"model-config-{name}.yaml")
        models.append({"name": name, "checkpoint": str(ckpt), "model_config_file": str(cfg)})
    payloads = images("detect", 256)
    routes = {
        "detect": ("/detect?model=det", "det"),
        "segment-rle": ("/segment?model=seg", "seg"),
        "segment-png": ("/segment?model=seg&format=png", "seg"),
        "segment-overlay": ("/segment?model=seg&format=overlay", "seg"),
    }
    out: dict[str, Any] = {"weights": weights, "runtime": args.runtimes[0], "cells": {}}
    with gateway(work, models, **common) as gw:
        for label, (path, model) in routes.items():
            print(f"tasks {label}", flush=True)

            def make(i: int, path: str = path) -> Request:
                body = payloads[i % len(payloads)]
                return Request("POST", path, body, (("Content-Type", "image/jpeg"),))

            cell = measure(gw.url, make, args.task_concurrency, args, gw.metrics, model)
            cell["request_bytes_mean"] = round(sum(map(len, payloads)) / len(payloads), 1)
            out["cells"][label] = cell
    return out


def ratios(doc: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, computed from this run's own numbers."""
    sc = doc["scenarios"]
    out: dict[str, Any] = {}

    def best(name: str) -> float | None:
        cells = sc.get(name, {}).get("cells")
        return max(c["throughput_rps"] for c in cells) if cells else None

    def at(name: str, conc: int, key: str) -> float | None:
        for c in sc.get(name, {}).get("cells") or []:
            if c["concurrency"] == conc:
                return float(c[key])
        return None

    batch = doc["settings"].get("model_config", {}).get("batchSize", 8)
    for runtime in doc["settings"]["runtimes"]:
        raw = sc.get(f"raw-{runtime}", {})
        pipe, nopipe = best(f"embedded-{runtime}-batch"), best(f"embedded-{runtime}-batch-nopipe")
        if pipe and nopipe:
            out[f"embedded-{runtime}-batch_pipelining_gain"] = round(pipe / nopipe, 3)
        for gw in (
            f"embedded-{runtime}-batch",
            f"embedded-{runtime}-batch-nopipe",
            f"embedded-{runtime}-batch-nodelay",
        ):
            top = best(gw)
            if top and raw.get(f"model_b{batch}_img_per_s"):
                out[f"{gw}_saturation_vs_raw_model_b{batch}"] = round(
                    top / raw[f"model_b{batch}_img_per_s"], 3
                )
                out[f"{gw}_saturation_vs_raw_pipeline_b{batch}"] = round(
                    top / raw[f"pipeline_b{batch}_img_per_s"], 3
                )
            p50 = at(gw, 1, "p50_ms")
            if p50 is not None and "pipeline_b1_p50_ms" in raw:
                out[f"{gw}_c1_p50_overhead_ms_vs_raw_pipeline"] = round(
                    p50 - raw["pipeline_b1_p50_ms"], 2
                )
            for other in (f"torchserve-backend-{runtime}", f"torchserve-direct-{runtime}"):
                if best(gw) and best(other):
                    out[f"{gw}_vs_{other}"] = round(best(gw) / best(other), 3)  # type: ignore[operator]
                    # per concurrency too: at saturation both sides are bound by the same runtime
                    per: dict[str, float] = {}
                    for cell in sc[gw]["cells"]:
                        c = cell["concurrency"]
                        theirs = at(other, c, "throughput_rps")
                        if theirs:
                            per[str(c)] = round(cell["throughput_rps"] / theirs, 3)
                    out[f"{gw}_vs_{other}_by_concurrency"] = per
    rts = doc["settings"]["runtimes"]
    if "eager" in rts:
        for runtime in rts:
            a, b = best(f"embedded-{runtime}-batch"), best("embedded-eager-batch")
            if runtime != "eager" and a and b:
                out[f"embedded-{runtime}_vs_eager"] = round(a / b, 3)
        default = doc["settings"].get("model_config", {}).get("runtime")
        if default and f"embedded-{default}_vs_eager" in out:
            out["default_runtime_vs_eager"] = out[f"embedded-{default}_vs_eager"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16, 64])
    # auto: the demo models' runtime (what `make serve` runs); eager: the baseline
    p.add_argument("--runtimes", nargs="+", default=["auto", "eager"])
    p.add_argument(
        "--scenarios",
        nargs="+",
        default=["all"],
        help="all, or embedded-<runtime>-batch|nobatch and tasks (torchserve runs with its "
        "runtime unless --no-torchserve)",
    )
    p.add_argument("--no-torchserve", dest="torchserve", action="store_false")
    p.add_argument("--task-concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per repeat")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of the server")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "serving_load.json")
    args = p.parse_args(argv)
    # one cache for every process: the in-process reference decides `auto`, and the gateways and
    # TorchServe's workers serve that same decision (their own default would be their cwd)
    os.environ.setdefault("SEPVIT_CACHE_DIR", str(ROOT / ".cache"))
    doc = run(args)
    print(json.dumps(doc["ratios"], indent=2))
    write_results(doc, args.output)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
