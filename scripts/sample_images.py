"""Write the README's example images into a folder (default: the working directory).

- ``circle.png``: the first circle of the SepViT-Shapes classification test split (224x224);
- ``scene.jpg``: the first multi-object scene of the detection/segmentation test split
  (256x256, JPEG quality 90).

Both are pure functions of the dataset's seeds, so every checkout writes the same pixels.

    .venv/bin/python scripts/sample_images.py [--output DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from sepvit.data.shapes import CLASSES, ShapesDataset


def write_samples(output: Path) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    classify = ShapesDataset("test", "classify", size=224, length=100)
    circle = next(s for s in classify if s.label == CLASSES.index("circle"))
    scene = ShapesDataset("test", "detect", size=256, length=1)[0]
    paths = [output / "circle.png", output / "scene.jpg"]
    Image.fromarray(circle.image).save(paths[0])
    Image.fromarray(scene.image).save(paths[1], quality=90)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", type=Path, default=Path("."), help="folder (default: .)")
    for path in write_samples(p.parse_args(argv).output):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
