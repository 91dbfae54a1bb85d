"""``sepvit-eval``: evaluate a native checkpoint on a SepViT-Shapes split, or on the independent
matplotlib-drawn set (``--split independent``: the whole set, then its plain and varied halves)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..checkpoint import CheckpointError, read_metadata
from ..data.independent import VARIANTS, IndependentShapes
from ..data.shapes import Scene, ShapesDataset
from ..evaluate import evaluate
from ..registry import create_model, model_config


def _table(metrics: dict) -> str:
    rows = [(k, v) for k, v in metrics.items() if not isinstance(v, list | dict)]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    for k, v in rows:
        lines.append(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return "\n".join(lines)


def _mpl_version() -> str:
    import matplotlib

    return str(matplotlib.__version__)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sepvit-eval", description="Evaluate on SepViT-Shapes.")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--split", choices=("train", "val", "test", "independent"), default="test")
    p.add_argument(
        "--style", type=int, choices=(1, 2), default=1, help="scene recipe of a Shapes split"
    )
    p.add_argument("--num-images", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", type=Path, default=None, help="write the metrics here")
    a = p.parse_args(argv)
    try:
        meta = read_metadata(a.checkpoint)
        model = create_model(meta["variant"], task=meta["task"], checkpoint=a.checkpoint)
    except CheckpointError as exc:
        print(f"sepvit-eval: {exc}", file=sys.stderr)
        return 2
    size = int(model_config(model)["input_size"][1])
    ds: ShapesDataset | IndependentShapes
    halves: dict[str, list[Scene]] = {}
    if a.split == "independent":
        ds = IndependentShapes(meta["task"], size, length=a.num_images)
        halves = {  # rendered once: the whole set, then each half, are evaluated from memory
            v: list(IndependentShapes(meta["task"], size, a.num_images // 2, variant=v))
            for v in VARIANTS
        }
        scenes: Any = [s for pair in zip(*halves.values(), strict=True) for s in pair]
    else:
        ds = ShapesDataset(a.split, meta["task"], size, length=a.num_images, style=a.style)
        scenes = ds
    metrics = evaluate(model, scenes, batch_size=a.batch_size)
    metrics.update(
        {
            "split": a.split,
            "checkpoint": a.checkpoint.name,
            "dataset_seed": ds.seed,
            "input_size": size,
        }
    )
    if isinstance(ds, ShapesDataset):
        metrics["style"] = a.style
    else:
        metrics["renderer"] = "matplotlib " + _mpl_version()
    print(_table(metrics))
    for variant, half in halves.items():
        metrics[variant] = evaluate(model, half, batch_size=a.batch_size)
        print(f"\n{variant} half:\n{_table(metrics[variant])}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
