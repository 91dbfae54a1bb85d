"""``sepvit-train``: train a SepViT model on SepViT-Shapes (resumable)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..registry import TASKS
from ..train import TrainConfig, train


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="sepvit-train",
        description="Train on SepViT-Shapes. Re-running with the same --output resumes.",
    )

    def option(name: str, help: str | None = None, **kwargs: Any) -> None:
        """``--name`` for the ``TrainConfig`` field ``name``: its default, and its type."""
        default = getattr(d, name)
        if default is not None:
            kwargs.setdefault("type", type(default))
        p.add_argument("--" + name.replace("_", "-"), default=default, help=help, **kwargs)

    option("task", choices=TASKS)
    option("model")
    option(
        "head",
        help="detect: retinanet (default) or mask_rcnn; segment: semantic_fpn (default) or upernet",
    )
    p.add_argument("--output", type=Path, required=True, help="run directory (state, log, model)")
    for name in ["img_size", "batch_size", "steps", "lr", "min_lr", "weight_decay",
                 "warmup_steps", "grad_clip", "drop_path_rate", "seed", "threads"]:  # fmt: skip
        option(name)
    option("device", help="cpu or cuda")
    option(
        "init_from",
        help="native checkpoint: the whole model if the same variant/task/args, else its backbone",
    )
    option("val_images")
    option("train_images", help="0: endless stream")
    option(
        "first_image",
        help="index of the first training scene (give a continuation scenes it has not seen)",
    )
    option(
        "curriculum_steps",
        help="easy-to-full scene curriculum over this many steps (0: full difficulty throughout)",
    )
    option(
        "style",
        choices=(1, 2, 3),
        help="scene recipe: 1 the original, 2 domain-randomised, 3 style 2 with thin outlines, "
        "hatch fills and text (docs/shapes.md)",
    )
    option(
        "replay", help="with --style 2 or 3: fraction of training scenes drawn from style 1 instead"
    )
    option(
        "stop_after",
        help="save the state at this step and exit (re-run without it to finish the run)",
    )
    option("log_every")
    option("save_every")
    p.add_argument("--fp32-output", action="store_true", help="store the final weights in fp32")
    option(
        "model_args",
        type=json.loads,
        help='JSON of extra model arguments, e.g. \'{"fpn_channels": 64, "head_convs": 2}\'',
    )
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    given = {f.name: getattr(a, f.name) for f in fields(TrainConfig) if f.name != "half_output"}
    cfg = TrainConfig(**given, half_output=not a.fp32_output)
    try:
        metrics = train(cfg, a.output)
    except ValueError as exc:
        print(f"sepvit-train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in metrics.items() if not k.startswith("per_class")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
