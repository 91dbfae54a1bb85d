"""Write ``docs/performance.md`` and its plots (``docs/img/*.png``) from ``bench/results/*.json``.

    python bench/report.py                                   # after `make bench`
    python bench/report.py --results /tmp/r --docs /tmp/d    # elsewhere (smoke tests)

Every figure in the report comes from the JSON files; sections whose JSON is missing say how
to produce it.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

MODEL_CMD = "python bench/model_throughput.py"
SERVING_CMD = "python bench/serving_load.py"


def cpu_cmd(doc: dict[str, Any] | None) -> str:
    """The command that wrote ``cpu_runtimes.json``, from the settings it recorded."""
    s = (doc or {}).get("settings", {})

    def opt(flag: str, key: str, default: str) -> str:
        v = s.get(key)
        return f" --{flag} " + (" ".join(map(str, v)) if isinstance(v, list) else str(v or default))

    return (
        "python bench/model_throughput.py"
        + opt("variants", "variants", "sepvit_tiny sepvit_lite")
        + opt("batches", "batches", "8")
        + opt("threads", "threads", "2")
        + opt("repeats", "repeats", "3")
        + opt("min-seconds", "min_seconds_per_repeat", "2")
        + opt("runtimes", "runtimes", "eager auto auto-nobf16 bf16 int8 onnxruntime")
        + " --output bench/results/cpu_runtimes.json"
    )


OVERHEAD_CMD = "python bench/serving_overhead.py"


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def tied_to_host(doc: dict[str, Any]) -> bool:
    """Whether a results JSON names its host well enough to be compared (bench/hostinfo.py):
    CPU identity and flags, and GEMM peaks measured in the same run."""
    m = doc.get("machine") or {}
    return bool(m.get("family") and m.get("flags") and (doc.get("gemm_peaks") or {}).get("fp32"))


def _machine(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    flags = ", ".join(f for f, on in (m.get("flags") or {}).items() if on) or "none of note"
    versions = ", ".join(f"{k} {v.split('-')[0]}" for k, v in (m.get("versions") or {}).items())
    peaks = doc.get("gemm_peaks") or {}
    peak_txt = "; ".join(
        f"{dtype} "
        + " / ".join(f"{v:.0f}" for v in peaks[dtype].values())
        + f" GFLOP/s at {' / '.join(peaks[dtype])} thread(s)"
        for dtype in ("fp32", "bf16")
        if peaks.get(dtype)
    )
    load = f"load average {m.get('loadavg')} at the start"
    if doc.get("loadavg_end"):
        load += f", {doc['loadavg_end']} at the end"
    busy = ""
    cores = m.get("cpus_usable") or m.get("cpu_count") or 0
    if max((m.get("loadavg") or [0])[:1] + (doc.get("loadavg_end") or [0])[:1]) > cores:
        busy = (
            "; **the host was busy during this run (load average above its CPU count): absolute "
            "figures and peak fractions are distorted, ratios within a cell less so**"
        )
    return (
        f"{m.get('cpu_model')} (family {m.get('family')} model {m.get('model')} stepping "
        f"{m.get('stepping')}; {m.get('cpus_usable') or m.get('cpu_count')} usable CPUs; flags: "
        f"{flags}), {versions}, OMP_WAIT_POLICY={m.get('OMP_WAIT_POLICY')}; GEMM peaks "
        f"({peaks.get('n', 2048)}³ matmul, this run): {peak_txt}; {load}; run started "
        f"{doc['started']}{busy}"
    )


def _untied(fname: str, cmd: str) -> list[str]:
    return [
        f"`bench/results/{fname}` does not record its host (CPU model, flags, GEMM peaks), so "
        f"its figures are not shown. Re-run `{cmd}`.",
        "",
    ]


# -- model throughput --------------------------------------------------------------------------
def model_section(
    doc: dict[str, Any] | None,
    img: Path,
    rel: str,
    title: str = "## 1. Model throughput",
    fname: str = "model_throughput.json",
    cmd: str = MODEL_CMD,
) -> list[str]:
    out = [title, ""]
    if doc is None:
        return [*out, f"Not measured yet: `{cmd}`.", ""]
    if not tied_to_host(doc):
        return [*out, *_untied(fname, cmd)]
    s = doc["settings"]
    out += [
        f"`bench/results/{fname}` (`{cmd}`): images/s at {s['img_size']}², the median "
        f"of {s['repeats']} interleaved repeats of at least {s['min_seconds_per_repeat']} s each. "
        "`vs eager` is the ratio to eager fp32 PyTorch in the same cell of the same run.",
        "",
        f"Machine: {_machine(doc)}.",
        "",
    ]
    rows = doc["results"]
    runtimes = sorted({r["runtime"] for r in rows}, key=lambda r: (r != "eager", r))
    batches = sorted({r["batch"] for r in rows})
    cell = {(r["variant"], r["threads"], r["runtime"], r["batch"]): r for r in rows}
    head = ["variant", "threads"] + [f"{rt} b{b}" for rt in runtimes for b in batches]
    out += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        for threads in sorted({r["threads"] for r in rows}):
            vals = []
            for rt in runtimes:
                for b in batches:
                    r = cell.get((variant, threads, rt, b))
                    if r is None:
                        vals.append("-")
                    elif rt == "eager" or r.get("vs_eager") is None:
                        vals.append(_fmt(r["img_per_s_median"]))
                    else:
                        vals.append(f"{r['img_per_s_median']:.1f} ({r['vs_eager']:.2f}x)")
                    if r is not None and r.get("peak_fraction") is not None:
                        vals[-1] += f" [{r['peak_fraction']:.0%}]"
            out.append(f"| {variant} | {threads} | " + " | ".join(vals) + " |")
    out += [
        "",
        "`[n%]`: the cell's GFLOP/s (GFLOP/image times img/s) as a fraction of the GEMM peak "
        "of its arithmetic (fp32; bf16 for bf16 and int8) at the same thread count, this run.",
    ]
    picks = {
        f"{r['variant']} t{r['threads']} b{r['batch']} {r['runtime']}": r["served"].get("chosen")
        for r in rows
        if r["runtime"].startswith("auto") and r.get("served")
    }
    if picks:
        out += [
            "",
            "What `auto` picked: " + "; ".join(f"{k} → {v}" for k, v in picks.items()) + ".",
        ]
    if doc.get("skipped"):
        out += ["", "Not run: " + "; ".join(f"{k}: {v}" for k, v in doc["skipped"].items()) + "."]
    if doc.get("failed"):
        cells = ", ".join(
            f"{f['variant']} {f['runtime']} b{f['batch']} threads {f['threads']}"
            for f in doc["failed"]
        )
        out += ["", f"Failed (`-` above; the error is in the JSON): {cells}."]
    stem = fname.removesuffix(".json")
    _plot_models(doc, img / f"{stem}.png")
    out += ["", f"![model throughput]({rel}/{stem}.png)", ""]
    return out


def _plot_models(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["results"] if r["threads"] == max(x["threads"] for x in doc["results"])]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    runtimes = sorted({r["runtime"] for r in rows}, key=lambda r: (r != "eager", r))
    batch = max(r["batch"] for r in rows if r["batch"] <= 8) if rows else 1
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(runtimes), 1)
    for k, rt in enumerate(runtimes):
        vals = [
            next(
                (
                    r["img_per_s_median"]
                    for r in rows
                    if r["variant"] == v and r["runtime"] == rt and r["batch"] == batch
                ),
                0.0,
            )
            for v in variants
        ]
        ax.bar([i + k * width for i in range(len(variants))], vals, width, label=rt)
    ax.set_xticks([i + width * (len(runtimes) - 1) / 2 for i in range(len(variants))])
    ax.set_xticklabels(variants, rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel("images/s (log)")
    ax.set_title(f"Model throughput, batch {batch}, {rows[0]['threads'] if rows else '?'} threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- serving load ------------------------------------------------------------------------------
def serving_section(
    doc: dict[str, Any] | None,
    img: Path,
    rel: str,
    title: str = "## 2. Serving load (`/classify`)",
    fname: str = "serving_load.json",
    stem: str = "serving",
) -> list[str]:
    out = [title, ""]
    if doc is None:
        return [*out, f"Not measured yet: `{SERVING_CMD}`.", ""]
    if not tied_to_host(doc):
        tasks = ["## 3. Detection and segmentation", "", f"Part of `{fname}`: not shown.", ""]
        return [*out, *_untied(fname, SERVING_CMD), *(tasks if stem == "serving" else [])]
    s = doc["settings"]
    out += [
        f"`bench/results/{fname}`: {s['client']}; {s['warmup']} s warm-up, then "
        f"{s['duration']} s measured, {s['repeats']} repeats (medians shown). Server: one "
        f"worker, {s['threads']} intra-op thread(s); weights: {s.get('weights')}; TorchServe "
        f"batching from model-config.yaml: {s.get('model_config')}.",
        "",
        f"Machine: {_machine(doc)}.",
        "",
        "| scenario | concurrency | req/s | p50 ms | p95 ms | p99 ms | mean batch |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    series: dict[str, list[dict[str, Any]]] = {}
    for name, sc in doc["scenarios"].items():
        if name.startswith("raw-") or name == "tasks" or "cells" not in sc:
            continue
        series[name] = sc["cells"]
        for c in sc["cells"]:
            sizes = [r.get("batch_sizes", {}).get("mean_batch_size") for r in c["repeats"]]
            sizes = [x for x in sizes if x]
            mean_batch = f"{sum(sizes) / len(sizes):.2f}" if sizes else "-"
            out.append(
                f"| {name} | {c['concurrency']} | {_fmt(c['throughput_rps'])} | "
                f"{_fmt(c['p50_ms'])} | {_fmt(c['p95_ms'])} | {_fmt(c['p99_ms'])} | {mean_batch} |"
            )
    raws = {k: v for k, v in doc["scenarios"].items() if k.startswith("raw-")}
    if raws:
        out += [
            "",
            "In-process reference (no HTTP), same runtime and threads:",
            "",
            "| runtime | model b1 img/s | model b1 p50 ms | pipeline b1 p50 ms | "
            "model bN img/s | pipeline bN img/s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, r in raws.items():
            big = max(int(k.split("_b")[1].split("_")[0]) for k in r if k.startswith("model_b"))
            out.append(
                f"| {name[4:]} | {_fmt(r.get('model_b1_img_per_s'))} | "
                f"{_fmt(r.get('model_b1_p50_ms'))} | {_fmt(r.get('pipeline_b1_p50_ms'))} | "
                f"{_fmt(r.get(f'model_b{big}_img_per_s'))} (b{big}) | "
                f"{_fmt(r.get(f'pipeline_b{big}_img_per_s'))} |"
            )
    if doc.get("ratios"):
        out += ["", "Ratios from this run (targets in issue 7):", ""]
        out += [f"- `{k}`: {v}" for k, v in doc["ratios"].items()]
    if doc.get("skipped"):
        out += ["", "Not run: " + "; ".join(f"{k}: {v}" for k, v in doc["skipped"].items()) + "."]
    if series:
        _plot_serving(series, img, stem)
        out += [
            "",
            f"![throughput vs concurrency]({rel}/{stem}_throughput.png)",
            f"![latency vs concurrency]({rel}/{stem}_latency.png)",
        ]
    if stem == "serving":
        out += ["", *tasks_section(doc.get("scenarios", {}).get("tasks"))]
    return [*out, ""]


def _plot_serving(series: dict[str, list[dict[str, Any]]], img: Path, stem: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, cells in series.items():
        ax.plot(
            [c["concurrency"] for c in cells],
            [c["throughput_rps"] for c in cells],
            "o-",
            label=name,
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("requests/s (1 image each)")
    ax.set_title("Throughput vs concurrency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / f"{stem}_throughput.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (name, cells) in enumerate(series.items()):
        xs = [c["concurrency"] for c in cells]
        color = f"C{k}"
        ax.plot(xs, [c["p50_ms"] for c in cells], "o-", color=color, label=f"{name} p50")
        ax.plot(xs, [c["p99_ms"] for c in cells], "x--", color=color, label=f"{name} p99")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("latency ms (log)")
    ax.set_title("Latency vs concurrency")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(img / f"{stem}_latency.png", dpi=110)
    plt.close(fig)


# prose, not results: where the gateway's CPU per request goes, from profiling (issue 21)
OVERHEAD_PROFILE = """### Where the gateway's CPU per request goes

From profiling, not from a benchmark run: the figures below were taken on the 2-core development
host while other jobs loaded it (load average about 10), so they show proportions, not speeds.
Method: a gateway serving a 64-pixel random-weight classifier (runtime `bf16`, one thread) to
closed-loop clients at concurrency 1 and 4, the CPU time of each of its threads read from
`/proc` before and after, and the busy stacks sampled with py-spy and yappi.

- **The batch threads cost what the pipeline costs.** Their CPU per image matched the in-process
  pipeline's at the same batch size (about 5.3 CPU-ms at batch 1 and 2.3 at batch 4 for that
  model). Splitting a batch's prepare and run over two threads, overlapping them, or calling
  the runtime from alternating threads added no measurable CPU either (the demo classifier on
  OpenVINO bf16 at batch 4: 8.7-9.0 CPU-ms per image in every arrangement, in one process).
- **The rest is the event-loop thread**: about 1.5 CPU-ms per request at concurrency 1 and
  0.7 at concurrency 4 on that host. Per-batch work (the executor hop, the wake-ups, the
  batch's metrics and statistics) is shared by the requests of a batch, so it shrinks per
  request as batches fill. About half of the loop's busy time is FastAPI and Starlette
  (routing, their exception and exit-stack middlewares, dependency and query-parameter
  resolution), about a fifth uvicorn's h11 parser and the socket writes, and the rest the
  gateway's own middleware, admission, data plane and batcher.
- **Removed:** a thread-pool hop per request (the route's data-plane dependency was a plain
  function, which FastAPI runs in its thread pool; it is a coroutine now); a second hop per
  request to render small JSON answers (answers without masks or PNGs and with at most 256
  entries are written on the event loop; the others still are rendered in a thread); a task
  and an `asyncio.Event` per request for the drain's cut-off (one future now); a task per body
  message for the body's time limit, and the `wait_for` machinery on each request's deadline
  (timeout scopes now); the access-log record when the access log is off; and the `labels()`
  lookups of `/metrics` per request and per batch (each labelled child is looked up once). In
  interleaved runs on that host the gateway's CPU outside the pipeline went from about 1.0 to
  0.8 ms per request at concurrency 4 (medians of five runs each), and its event-loop thread's
  from 0.6-0.85 to 0.5-0.7; at concurrency 1 the change was within the host's noise.
- **Noise, and what it is not.** CPU outside the pipeline is the difference of two figures near
  10 CPU-ms per image, and the in-process reference moves by 0.5-1 ms between measurements
  minutes apart, so single runs disagreed widely (one gave the gateway 1.18 times TorchServe's
  overhead at concurrency 4, the next 0.22). The bench therefore runs interleaved rounds and
  reports medians with their ranges. An earlier guess, that inference slows when the other core
  decodes the next batch (so the one-thread reference undercounts the gateway's pipeline), did
  not hold: the pipeline at batch 4 cost 10.8-11.4 CPU-ms per image alone, 11.0 beside a
  busy-looping process and 10.7-11.1 beside one decoding JPEGs (Intel host, two rounds).
  Pipelining on or off made no difference beyond noise in the serving-load run (a gain of
  0.99 with `auto`, 1.07 with eager). With 4 closed-loop clients and batches of 4 nothing waits
  to be decoded while a batch infers, so the overlap has nothing to hide; what separates the gateway
  from the in-process pipeline there is the gap between batches (the answers' writes, the
  clients' next requests and their parsing). At concurrency 16 (batches of 8) TorchServe spends
  less CPU outside the model per request than the gateway (about 0.5 against 1.1 ms): its Java
  front end costs less per request than the gateway's Python event loop (FastAPI and Starlette
  about half of the loop's busy time, h11 and the socket writes a fifth, above).
"""


def overhead_section(doc: dict[str, Any] | None) -> list[str]:
    out = ["## 4. Serving overhead (CPU per request outside inference)", ""]
    if doc is None:
        return [*out, f"Not measured yet: `{OVERHEAD_CMD}`.", "", OVERHEAD_PROFILE]
    if not tied_to_host(doc):
        return [*out, *_untied("serving_overhead.json", OVERHEAD_CMD), OVERHEAD_PROFILE]
    st, pipe = doc["settings"], doc["pipeline"]
    out += [
        f"`bench/results/serving_overhead.json` (`{OVERHEAD_CMD}`): the demo classifier, runtime "
        f"`{st['runtime']}` (served by `{pipe['runtime']}`), one intra-op thread, closed-loop "
        f"clients for {st['duration']} s per cell. Server CPU = user + system time of the "
        "server's process tree over the cell ÷ requests answered; the pipeline's CPU per image "
        "is measured in-process at every batch size and weighted by the batch sizes each server "
        "really ran (the gateway's statistics extension; TorchServe's `x-sepvit-batch-size` "
        "header).",
        "",
        f"Machine: {_machine(doc)}.",
        "",
        "| server | concurrency | req/s | p50 ms | p99 ms | CPU-ms/request | "
        "CPU-ms outside the pipeline |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    ov = doc.get("overhead", {})
    for server, cells in doc["servers"].items():
        for c, r in cells.items():
            out.append(
                f"| {server} | {c} | {_fmt(r['throughput_rps'])} | {_fmt(r['latency_ms']['p50'])} "
                f"| {_fmt(r['latency_ms']['p99'])} | {_fmt(r['cpu_ms_per_request'])} | "
                f"{_fmt(ov.get(f'{server}_c{c}_cpu_ms_outside_pipeline'))} |"
            )
    out += [
        "",
        "In-process pipeline: "
        + "; ".join(
            f"batch {k[1:]}: {v['cpu_ms_per_image']} CPU-ms/image, {v['img_per_s']} img/s"
            for k, v in pipe.items()
            if k.startswith("b")
        )
        + ".",
    ]
    out += ["", "Ratios from this run:", ""] + [f"- `{k}`: {v}" for k, v in ov.items()]
    if doc.get("skipped"):
        out += ["", "Not run: " + "; ".join(f"{k}: {v}" for k, v in doc["skipped"].items()) + "."]
    return [*out, "", OVERHEAD_PROFILE]


def tasks_section(tasks: dict[str, Any] | None) -> list[str]:
    out = ["## 3. Detection and segmentation", ""]
    if not tasks:
        return [*out, f"Not measured yet: `{SERVING_CMD}` (scenario `tasks`).", ""]
    out += [
        f"Embedded backend, runtime {tasks['runtime']}, weights {tasks['weights']}, "
        "256² JPEG inputs.",
        "",
        "| route | concurrency | req/s | p50 ms | p99 ms | request bytes | response bytes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, c in tasks["cells"].items():
        out.append(
            f"| {label} | {c['concurrency']} | {_fmt(c['throughput_rps'])} | {_fmt(c['p50_ms'])} | "
            f"{_fmt(c['p99_ms'])} | {_fmt(c.get('request_bytes_mean'))} | "
            f"{_fmt(c['response_bytes_mean'])} |"
        )
    return out


HEADER = """# Performance

Generated by `bench/report.py` from `bench/results/*.json`; do not edit by hand. Reproduce with
`make bench` on a quiet machine (nothing else running: the figures are only as good as the
machine's idleness). Methodology:

- `OMP_WAIT_POLICY=PASSIVE` and fixed thread counts (recorded in each JSON), so idle OpenMP
  threads do not spin on the cores the other work needs.
- Every cell is repeated; tables show medians, and the JSON keeps every repeat.
- Ratios (gateway vs raw runtime, embedded vs TorchServe, runtime vs eager) are taken within one
  run of one script, never across runs.
- The load generator (`bench/loadgen.py`) is closed-loop: N clients, each on a keep-alive
  connection, send the next request as soon as the previous answer is in. It runs on the same
  machine as the server, as a sidecar would, and shares its CPU.
- Every JSON records its host (bench/hostinfo.py: CPU model, family/model/stepping, the flags
  that decide fp32/bf16/int8 speed, usable cores, library versions, the load average at the
  start and end) and fp32/bf16 GEMM peaks measured in the same run; a JSON without them is not
  shown here.

The full run, step by step (`make bench` does the same):

```
OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/model_throughput.py   # ~22 min: 6 variants x
    # eager/compile/onnxruntime/auto (TensorRT on a GPU) x batch 1/8 x threads 1/2
OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/serving_load.py       # ~35 min: raw, embedded
    # batching on/off x auto/eager, TorchServe direct and behind the gateway, detect/segment
OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/serving_overhead.py   # ~8 min: CPU per request
    # outside the pipeline, gateway vs TorchServe, concurrency 1, 4 and 16, 3 rounds
OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/model_throughput.py --variants sepvit_tiny \\
    sepvit_lite --batches 8 --threads 2 --runtimes eager auto auto-nobf16 bf16 bf16-torch \\
    int8 int8-static onnxruntime --output bench/results/cpu_runtimes.json    # ~4 min
.venv/bin/python bench/report.py                                    # this page and docs/img/
```

On a GPU machine: `bash bench/gpu_check.sh` (TensorRT / ONNX Runtime CUDA / eager CUDA, and the
gateway on `runtime: tensorrt`; `bench/results/gpu_<gpu>.json`).
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = p.parse_args(argv)
    img = args.docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    lines += model_section(_load(args.results / "model_throughput.json"), img, "img")
    lines += serving_section(_load(args.results / "serving_load.json"), img, "img")
    lines += overhead_section(_load(args.results / "serving_overhead.json"))
    cpu = _load(args.results / "cpu_runtimes.json")
    lines += model_section(
        cpu, img, "img", "## 5. Fast CPU runtimes (bf16, int8, auto)", "cpu_runtimes.json",
        cpu_cmd(cpu),
    )  # fmt: skip
    out = args.docs / "performance.md"
    out.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
