"""``sepvit-train``: train a SepViT model on SepViT-Shapes (resumable)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..registry import TASKS
from ..train import TrainConfig, train


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="sepvit-train",
        description="Train on SepViT-Shapes. Re-running with the same --output resumes.",
    )
    p.add_argument("--task", choices=TASKS, default=d.task)
    p.add_argument("--model", default=d.model)
    p.add_argument(
        "--head",
        default=d.head,
        help="detect: retinanet (default) or mask_rcnn; segment: semantic_fpn (default) or upernet",
    )
    p.add_argument("--output", type=Path, required=True, help="run directory (state, log, model)")
    p.add_argument("--img-size", type=int, default=d.img_size)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--min-lr", type=float, default=d.min_lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--drop-path-rate", type=float, default=d.drop_path_rate)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--device", default=d.device, help="cpu or cuda")
    p.add_argument(
        "--init-from",
        default=None,
        help="native checkpoint: the whole model if the same variant/task/args, else its backbone",
    )
    p.add_argument("--val-images", type=int, default=d.val_images)
    p.add_argument("--train-images", type=int, default=d.train_images, help="0: endless stream")
    p.add_argument(
        "--first-image",
        type=int,
        default=d.first_image,
        help="index of the first training scene (give a continuation scenes it has not seen)",
    )
    p.add_argument(
        "--curriculum-steps",
        type=int,
        default=d.curriculum_steps,
        help="easy-to-full scene curriculum over this many steps (0: full difficulty throughout)",
    )
    p.add_argument(
        "--style",
        type=int,
        choices=(1, 2),
        default=d.style,
        help="scene recipe: 1 the original, 2 domain-randomised (docs/shapes.md)",
    )
    p.add_argument(
        "--replay",
        type=float,
        default=d.replay,
        help="with --style 2: fraction of training scenes drawn from style 1 instead",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=0,
        help="save the state at this step and exit (re-run without it to finish the run)",
    )
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--fp32-output", action="store_true", help="store the final weights in fp32")
    p.add_argument(
        "--model-args",
        type=json.loads,
        default={},
        help='JSON of extra model arguments, e.g. \'{"fpn_channels": 64, "head_convs": 2}\'',
    )
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    cfg = TrainConfig(
        task=a.task,
        model=a.model,
        head=a.head,
        img_size=a.img_size,
        batch_size=a.batch_size,
        steps=a.steps,
        lr=a.lr,
        min_lr=a.min_lr,
        weight_decay=a.weight_decay,
        warmup_steps=a.warmup_steps,
        grad_clip=a.grad_clip,
        drop_path_rate=a.drop_path_rate,
        seed=a.seed,
        threads=a.threads,
        device=a.device,
        init_from=a.init_from,
        val_images=a.val_images,
        train_images=a.train_images,
        first_image=a.first_image,
        curriculum_steps=a.curriculum_steps,
        style=a.style,
        replay=a.replay,
        stop_after=a.stop_after,
        log_every=a.log_every,
        save_every=a.save_every,
        half_output=not a.fp32_output,
        model_args=a.model_args,
    )
    try:
        metrics = train(cfg, a.output)
    except ValueError as exc:
        print(f"sepvit-train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in metrics.items() if not k.startswith("per_class")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
