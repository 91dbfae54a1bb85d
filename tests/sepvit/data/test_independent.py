"""The independent evaluation set: matplotlib-drawn, deterministic, labels that agree with the
pixels, and never read by training."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sepvit.data.independent import INDEPENDENT_SEED, IndependentShapes


@pytest.mark.parametrize("task", ["classify", "detect"])
def test_deterministic_halves_and_consistent_labels(task: str) -> None:
    ds = IndependentShapes(task, 96, length=8)
    plain = IndependentShapes(task, 96, length=4, variant="plain")
    varied = IndependentShapes(task, 96, length=4, variant="varied")
    assert ds.seed == INDEPENDENT_SEED
    for i in range(8):
        sc = ds[i]
        half = (plain if i % 2 == 0 else varied)[i // 2]
        assert np.array_equal(sc.image, half.image) and sc.labels == half.labels
        assert 1 <= len(sc.labels) <= (1 if task == "classify" else 5)
        for cls, box, mask in zip(sc.labels, sc.boxes, sc.masks, strict=True):
            ys, xs = np.nonzero(mask)
            assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert (sc.segmentation[mask] == cls + 1).all()
            # the drawn object differs from the background around its box
            x1, y1, x2, y2 = (int(v) for v in box)
            inside = sc.image[mask].astype(float).mean(0)
            ring = np.ones(mask.shape, bool)
            ring[max(0, y1 - 2) : y2 + 2, max(0, x1 - 2) : x2 + 2] = False
            if task == "classify" and ring.any():
                assert np.abs(inside - sc.image[ring].astype(float).mean(0)).max() > 10
    with pytest.raises(ValueError, match="variant"):
        IndependentShapes("classify", 96, variant="odd")


def test_a_plain_scene_has_a_saturated_solid_background() -> None:
    sc = IndependentShapes("classify", 96, length=2)[0]
    corner = sc.image[0, 0].astype(int)
    assert corner.max() - corner.min() > 60  # saturated


def test_training_never_imports_the_independent_set() -> None:
    code = (
        "import sys, sepvit.train, sepvit.cli.train; "
        "sys.exit('sepvit.data.independent' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
