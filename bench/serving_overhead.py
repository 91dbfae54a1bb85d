"""Serving overhead: CPU seconds per request spent outside inference, gateway vs TorchServe.

Both servers serve the same demo classifier with the same ``model-config.yaml`` (runtime
``--runtime``, default ``auto``: the in-process run decides, both servers reuse the decision from
the cache; one intra-op thread) to closed-loop clients. For each server and concurrency the run
measures the server processes' CPU time (the whole process tree: the gateway; TorchServe's Java
frontend and its Python worker) across a fixed-length load, divided by the requests answered.
The in-process pipeline (decode, preprocess, runtime, postprocess; no HTTP) is measured the same
way at the batch sizes the servers run. Both servers stay up for the whole run, and ``--rounds``
(3) interleaved rounds each measure the in-process reference, then every cell of each server
(the first server alternates), so that a load change hits the reference and the servers alike;
the tables show each figure's median over the rounds, and every ratio is the median of the
rounds' ratios, with its range. Each server reports the batches it
really ran (the gateway its statistics extension, TorchServe's worker the
``x-sepvit-batch-size`` header on each answer), so the pipeline's share of a request is the
in-process CPU per image at the batch sizes that server ran, weighted by images. Overhead per
request = server CPU per request - that share. (The naive figure, which assumes every batch is
as large as the concurrency, up to the model's ``batchSize``, is kept as
``..._assuming_full_batches``.) Latency percentiles come from the same runs. The ``>= 0.95``
ratio is the gateway's requests/s over the in-process pipeline's images/s on the same mix of
batch sizes. Concurrency 16 is past the largest batch (8): there a batch waits while one runs,
so the server is saturated; at concurrency = batch size every client waits on the running
batch, and the gap between batches (answers written, the next requests read) is idle time.

Targets (issue 21): gateway overhead <= 1/3 of TorchServe's; gateway throughput >= 0.95 of the
raw runtime (in-process pipeline) with ``auto``.

    python bench/serving_overhead.py                       # ~10 min
    python bench/serving_overhead.py --duration 2 --concurrency 1 --rounds 1 \\
        --no-torchserve --output /tmp/overhead_smoke.json  # a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


def build_pipeline(ckpt: Path, runtime: str) -> Any:
    """The in-process pipeline (decode, preprocess, runtime, postprocess) on one thread."""
    from handlers.pipeline import Pipeline, PipelineConfig
    from sepvit import create_model, read_metadata

    torch.set_num_threads(1)
    meta = read_metadata(ckpt)
    model = create_model(meta["variant"], task=meta["task"], checkpoint=ckpt)
    return Pipeline(model, PipelineConfig(runtime=runtime, threads=1, max_images=64))


def pipeline_cpu(
    pipe: Any, payloads: list[bytes], batches: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    """The in-process pipeline: CPU-ms per image and images/s at each batch size."""
    out: dict[str, Any] = {}
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


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell over the rounds: the median of each figure, the batch sizes summed."""
    out: dict[str, Any] = {"rounds": len(rows)}
    for key in ("throughput_rps", "cpu_ms_per_request", "server_cpu_s", "requests", "ok"):
        vals = [r[key] for r in rows if r.get(key) is not None]
        out[key] = round(statistics.median(vals), 2) if vals else None
    out["latency_ms"] = {
        q: round(statistics.median(r["latency_ms"][q] for r in rows), 2) for q in ("p50", "p99")
    }
    sizes: dict[str, int] = {}
    for r in rows:
        for k, n in r["images_by_batch_size"].items():
            sizes[k] = sizes.get(k, 0) + n
    out["images_by_batch_size"] = dict(sorted(sizes.items(), key=lambda kv: int(kv[0])))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runtime", default="auto")
    # 16: more clients than the largest batch (8), so a batch waits while one runs (saturation)
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument(
        "--rounds", type=int, default=3, help="interleaved repeats of the reference and servers"
    )
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
    # every batch size a server can run is 1..min(concurrency, batchSize); closed-loop clients
    # make them run exactly min(c, batchSize), and those sizes are measured in-process (others
    # count as the nearest measured one)
    max_batch = int((yaml.safe_load(cfg.read_text()) or {}).get("batchSize", 8))
    sizes = sorted({min(c, max_batch) for c in args.concurrency})
    pipe = build_pipeline(ckpt, args.runtime)
    doc["pipeline_runtime"] = {"runtime": pipe.runtime.name, "runtime_info": pipe.runtime_info}
    jpeg = (("Content-Type", "image/jpeg"),)
    entry = {"name": "cls", "checkpoint": str(ckpt), "model_config_file": str(cfg)}
    why = None if args.torchserve else "disabled (--no-torchserve)"
    why = why or missing()
    if why:
        doc["skipped"]["torchserve"] = why
    with contextlib.ExitStack() as stack:
        gw = stack.enter_context(
            gateway(work, [entry], **{"torch_threads": 1, "max_queue": 1024, **extra})
        )

        def make_gw(i: int) -> Request:
            return Request("POST", "/classify?model=cls", payloads[i % len(payloads)], jpeg)

        servers: dict[str, Callable[[int], dict[str, Any]]] = {
            "gateway": lambda c: load(
                gw.url, make_gw, gw.proc.pid, c, args, gateway_batch_images(gw.url, "cls")
            )
        }
        if not why:
            store = build_archives({"cls": (ckpt, cfg)}, work / "store")
            ts = TorchServeProcess(work / "ts", store, ["cls"])
            ts.start()
            stack.callback(ts.stop)
            auth = ("Authorization", f"Bearer {ts.token}")

            def make_ts(i: int) -> Request:
                body = payloads[i % len(payloads)]
                return Request("POST", "/predictions/cls", body, (auth, *jpeg))

            assert ts.proc is not None
            ts_pid = ts.proc.pid
            servers["torchserve"] = lambda c: load(ts.inference, make_ts, ts_pid, c, args)
        # rounds: the in-process reference, then each server (in turn first), every cell again,
        # so that a load change on a shared host hits the reference and the servers alike
        doc["rounds"] = []
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}: in-process pipeline", flush=True)
            rnd: dict[str, Any] = {"pipeline": pipeline_cpu(pipe, payloads, sizes, args)}
            rnd["servers"] = {}
            names = list(servers)
            for name in names[r % len(names) :] + names[: r % len(names)]:
                print(f"round {r + 1}/{args.rounds}: {name}", flush=True)
                rnd["servers"][name] = {str(c): servers[name](c) for c in args.concurrency}
            rnd["overhead"] = overhead(rnd)
            doc["rounds"].append(rnd)
    # the tables: medians over the rounds
    rounds = doc["rounds"]
    doc["pipeline"] = {
        **doc.pop("pipeline_runtime"),
        **{
            b: {
                key: round(statistics.median(rd["pipeline"][b][key] for rd in rounds), 2)
                for key in ("cpu_ms_per_image", "img_per_s")
            }
            for b in rounds[0]["pipeline"]
        },
    }
    doc["servers"] = {
        name: {
            c: median_row([rd["servers"][name][c] for rd in rounds])
            for c in rounds[0]["servers"][name]
        }
        for name in rounds[0]["servers"]
    }
    doc["overhead"] = median_overhead([rd["overhead"] for rd in doc["rounds"]])
    print(json.dumps(doc["overhead"], indent=2))
    write_results(doc, args.output)
    return 0


def overhead(doc: dict[str, Any]) -> dict[str, Any]:
    """Per server and concurrency: CPU-ms per request outside the pipeline, and the ratios."""
    pipe = doc["pipeline"]
    out: dict[str, Any] = {}
    for server, cells in doc["servers"].items():
        for c, row in cells.items():
            largest = max(int(k[1:]) for k in pipe if k[:1] == "b" and k[1:].isdigit())
            ref = pipeline_share(pipe, {str(min(int(c), largest)): 1})
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
                # against the pipeline's speed at the batch sizes the gateway really ran
                out[f"gateway_c{c}_vs_pipeline_throughput"] = round(
                    row["throughput_rps"] / share["img_per_s"], 3
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


def median_overhead(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each ratio's median over the rounds, with its range (``..._range``: min, max)."""
    out: dict[str, Any] = {}
    for key in rounds[0]:
        vals = [r[key] for r in rounds if key in r]
        if all(isinstance(v, bool) for v in vals):
            out[key] = all(vals)
        else:
            out[key] = round(statistics.median(vals), 3)
            if len(vals) > 1 and key.endswith(("_overhead", "_pipeline", "_throughput")):
                out[f"{key}_range"] = [round(min(vals), 3), round(max(vals), 3)]
    return out


def pipeline_share(pipe: dict[str, Any], images_by_size: dict[str, int]) -> dict[str, float]:
    """In-process pipeline CPU-ms per image at the batch sizes a server ran, weighted by images
    (a size that was not measured counts as the nearest measured one); batch 1 when unknown."""
    measured = sorted(int(k[1:]) for k in pipe if k.startswith("b") and k[1:].isdigit())
    counts = {int(k): n for k, n in images_by_size.items() if n > 0} or {1: 1}
    images = sum(counts.values())
    cpu = seconds = 0.0
    for size, n in counts.items():
        nearest = pipe[f"b{min(measured, key=lambda m: (abs(m - size), m))}"]
        cpu += n * nearest["cpu_ms_per_image"]
        seconds += n / nearest["img_per_s"]
    batches = sum(n / size for size, n in counts.items())
    return {
        "cpu_ms_per_image": cpu / images,
        "img_per_s": images / seconds,  # the pipeline's throughput on the same batch mix
        "mean_batch_size": round(images / batches, 2),
    }


if __name__ == "__main__":
    raise SystemExit(main())
