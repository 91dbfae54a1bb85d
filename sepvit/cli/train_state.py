"""``python -m sepvit.cli.train_state``: export a training run's ``state.pt`` as a native
checkpoint, to initialise other models from a run before it ends."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..train import export_state


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sepvit-train-state", description=__doc__)
    p.add_argument("--state", type=Path, required=True, help="runs/<name>/state.pt")
    p.add_argument("--output", type=Path, required=True, help="native .safetensors to write")
    p.add_argument("--half", action="store_true", help="store the weights in fp16")
    a = p.parse_args(argv)
    step = export_state(a.state, a.output, half=a.half)
    print(f"{a.output}: model at step {step}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
