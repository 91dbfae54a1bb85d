"""``sepvit-export``: export a model to ONNX (with eager parity check) or a TensorRT engine."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from ..checkpoint import CheckpointError
from ..export import (
    ParityError,
    TensorRTUnavailable,
    build_tensorrt_engine,
    export_onnx,
    require_tensorrt,
)
from ..registry import TASKS, UnknownModelError, create_model, load_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sepvit-export",
        description="Export a SepViT model to ONNX (parity-checked against eager) or TensorRT.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint", type=Path, help="native .safetensors or mmdet/mmseg .pth checkpoint"
    )
    src.add_argument("--model", help="backbone name with random weights (e.g. sepvit_lite)")
    p.add_argument("--task", choices=TASKS, default=None, help="task when --model is used")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx")
    p.add_argument("--output", "-o", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--img-size", type=int, nargs="+", default=None, help="H [W]")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs diff vs eager")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity check")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp16")
    p.add_argument(
        "--batch-profile", type=int, nargs=3, default=(1, 8, 32), metavar=("MIN", "OPT", "MAX")
    )
    p.add_argument("--engine-cache", type=Path, default=Path(".cache/tensorrt"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("sepvit").setLevel(logging.INFO)
    warnings.filterwarnings("ignore", module="onnxscript")
    img_size = None
    if args.img_size:
        if len(args.img_size) > 2:
            print("sepvit-export: --img-size takes H or H W", file=sys.stderr)
            return 2
        img_size = (args.img_size[0], args.img_size[-1])
    if args.checkpoint is not None and (args.task or args.num_classes):
        print(
            "sepvit-export: --task and --num-classes go with --model; a checkpoint carries its own",
            file=sys.stderr,
        )
        return 2
    try:
        if args.format == "tensorrt":
            require_tensorrt()  # before the export: no CUDA or TensorRT fails at once
        if args.checkpoint is not None:
            model = load_model(args.checkpoint)  # native, or an mmdet/mmseg .pth
        else:
            model = create_model(
                args.model, task=args.task or "classify", num_classes=args.num_classes
            )
        result = export_onnx(
            model,
            args.output,
            img_size=img_size,
            opset=args.opset,
            check=not args.no_check,
            tolerance=args.tolerance,
        )
        print(result.to_json())
        if args.format == "tensorrt":
            size = (result.input_size[1], result.input_size[2])
            engine = build_tensorrt_engine(
                args.output,
                args.engine_cache,
                precision=args.precision,
                profile=tuple(args.batch_profile),
                img_size=size,
            )
            print(json.dumps({"engine": str(engine)}))
    except (CheckpointError, UnknownModelError, ValueError) as exc:
        print(f"sepvit-export: {exc}", file=sys.stderr)
        return 2
    except ParityError as exc:
        print(f"sepvit-export: parity check FAILED: {exc}", file=sys.stderr)
        return 1
    except TensorRTUnavailable as exc:
        print(f"sepvit-export: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
