"""Official-config detectors and segmenters on CPU: images/s at the COCO and ADE20K test sizes.

The models are the OpenMMLab layouts served for official checkpoints (random weights: speed does
not depend on them, except Mask R-CNN's mask stage, which runs per detection: random weights give
the full 100): RetinaNet (FPN 256, 4 x 256 head convs) and Mask R-CNN (RPN, 2 x 1024 fc box head,
4-conv mask head) at 800 x 1333, Mask R-CNN also at 512 x 512, Semantic FPN (FPN 256, head 128)
and UperNet (512 channels) at 512 x 2048, eager fp32, batch 1 by default. Two figures per cell:

* ``model``: ``model(x)`` on the normalised input (backbone, neck, head, and for the detectors
  the mmdet post-processing: per-level top-1000, NMS, top-100; Mask R-CNN's masks pasted at the
  input size);
* ``pipeline``: the served path for one 640 x 480 (detect) or 2048 x 1024 (segment) JPEG through
  :class:`handlers.pipeline.Pipeline` (decode, keep-ratio resize and pad, model, boxes or label
  map back at the original size).

Run on a quiet machine with ``OMP_WAIT_POLICY=PASSIVE``; the JSON keeps every repeat, the median,
the machine and versions in ``bench/results/openmmlab_throughput.json``.

    python bench/openmmlab_throughput.py                                   # Tiny, 1 and all threads
    python bench/openmmlab_throughput.py --variants sepvit_tiny sepvit_small --threads 4
    python bench/openmmlab_throughput.py --configs retinanet mask_rcnn mask_rcnn_512
    python bench/openmmlab_throughput.py --repeats 1 --min-seconds 0 --output /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.hostinfo import gemm_peaks, host_facts, loadavg, write_results  # noqa: E402
from bench.model_throughput import time_repeat  # noqa: E402
from handlers.pipeline import Pipeline  # noqa: E402
from sepvit import create_model  # noqa: E402

# config -> (task, head, network input H x W, a typical original image H x W for the served path)
CONFIGS = {
    "retinanet": ("detect", "retinanet", (800, 1333), (480, 640)),
    "mask_rcnn": ("detect", "mask_rcnn", (800, 1333), (480, 640)),
    "mask_rcnn_512": ("detect", "mask_rcnn", (512, 512), (480, 640)),
    "semantic_fpn": ("segment", "semantic_fpn", (512, 2048), (1024, 2048)),
    "upernet": ("segment", "upernet", (512, 2048), (1024, 2048)),
}


def _jpeg(h: int, w: int) -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bench_cell(
    variant: str, config: str, threads: int, batch: int, repeats: int, min_seconds: float
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    task, head, (h, w), orig = CONFIGS[config]
    preset = "coco" if task == "detect" else "ade20k"
    model = create_model(variant, task=task, head=head, preset=preset, img_size=(h, w)).eval()
    x = torch.randn(batch, 3, h, w)

    def run_model() -> object:
        with torch.inference_mode():
            return model(x)

    pipe = Pipeline(model)
    image = _jpeg(*orig)

    def run_pipeline() -> object:
        with torch.inference_mode():
            return pipe.handle([image])

    for fn in (run_model, run_model, run_pipeline, run_pipeline):  # warm-up
        fn()
    model_rates, pipe_rates = [], []
    for _ in range(repeats):  # interleaved, so a load change hits both alike
        model_rates.append(time_repeat(run_model, batch, min_seconds))
        pipe_rates.append(time_repeat(run_pipeline, 1, min_seconds))
    return {
        "variant": variant,
        "config": config,
        "task": task,
        "head": model.pretrained_cfg["head"],
        "input": [h, w],
        "original": list(orig),
        "threads": threads,
        "batch": batch,
        "model_img_s": model_rates,
        "model_img_s_median": statistics.median(model_rates),
        "pipeline_img_s": pipe_rates,
        "pipeline_img_s_median": statistics.median(pipe_rates),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["sepvit_tiny"])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--threads", nargs="+", type=int, default=[1, os.cpu_count() or 1])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-seconds", type=float, default=10.0)
    p.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "results" / "openmmlab_throughput.json"
    )
    a = p.parse_args(argv)
    started, load_start = time.strftime("%Y-%m-%dT%H:%M:%S%z"), loadavg()
    peaks = gemm_peaks(sorted(set(a.threads)))
    cells = []
    for variant in a.variants:
        for config in a.configs:
            for threads in sorted(set(a.threads)):
                cell = bench_cell(variant, config, threads, a.batch, a.repeats, a.min_seconds)
                cells.append(cell)
                print(
                    f"{variant} {config} {cell['input'][0]}x{cell['input'][1]} "
                    f"threads={threads}: "
                    f"model {cell['model_img_s_median']:.3f} img/s, "
                    f"pipeline {cell['pipeline_img_s_median']:.3f} img/s",
                    flush=True,
                )
    doc = {
        "benchmark": "openmmlab_throughput",
        "started": started,
        "loadavg_start": load_start,
        "machine": host_facts(),
        "gemm_peaks": peaks,
        "settings": {"repeats": a.repeats, "min_seconds": a.min_seconds, "dtype": "float32"},
        "results": cells,
    }
    write_results(doc, a.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
