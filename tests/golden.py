"""Deterministic weights and inputs shared by the golden-parity test and its generator.

The golden outputs in ``tests/data/golden_official.safetensors`` were produced by the official
SepViT implementation (liwei109/SepViT @ 2b420d3, ``classification/sepvit.py`` and
``detection/sepvit.py``, run with torch 2.13 CPU and a minimal stand-in for the three timm 0.3.2
helpers it imports) after loading exactly the weights that :func:`seeded_state_dict` builds here.
The OpenMMLab records ``tests/data/openmmlab_<head>.safetensors`` (:func:`load_golden`) name their
weights by template and seed; :func:`openmmlab_checkpoint` rebuilds that checkpoint as a ``.pth``.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

DATA = Path(__file__).parent / "data"


def load_golden(head: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The OpenMMLab record ``tests/data/openmmlab_<head>.safetensors``: outputs, metadata."""
    path = DATA / f"openmmlab_{head}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})["openmmlab"])
    return load_file(str(path)), meta


def openmmlab_checkpoint(meta: dict[str, Any], path: Path, classes: tuple[str, ...]) -> Path:
    """The seeded checkpoint OpenMMLab ran with, as an mmengine ``.pth`` (``state_dict`` under
    mmdet/mmseg key names, ``meta.dataset_meta.classes``) at ``path``."""
    template = {k: (tuple(s), d) for k, (s, d) in meta["template"].items()}
    state = seeded_openmmlab_state(template, meta["seed"], meta["overrides"], meta.get("scales"))
    for k, v in state.items():  # the very weights OpenMMLab ran with
        assert math.isclose(
            float(v.double().sum()), meta["checksums"][k], rel_tol=1e-9, abs_tol=1e-9
        )
    ckpt = {"meta": {"dataset_meta": {"classes": classes}}, "state_dict": OrderedDict(state)}
    torch.save(ckpt, path)
    return path


def seeded_state_dict(template: dict[str, Tensor], seed: int = 0) -> dict[str, Tensor]:
    """Random weights for every tensor of ``template`` (keys in sorted order, fixed generator).

    LayerNorm weights are ``1 + 0.1 n``, everything else ``0.05 n`` with ``n ~ N(0, 1)``, so all
    parameters (window tokens included) are non-trivial.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in sorted(template):
        shape = template[k].shape
        n = torch.randn(shape, generator=g)
        out[k] = (
            1.0 + 0.1 * n
            if ("norm" in k and k.endswith(".weight") and len(shape) == 1)
            else 0.05 * n
        )
    return out


def seeded_input(shape: tuple[int, ...], seed: int = 1) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def seeded_openmmlab_state(
    template: dict[str, tuple[tuple[int, ...], str]],
    seed: int = 0,
    overrides: dict[str, float] | None = None,
    scales: dict[str, float] | None = None,
) -> dict[str, Tensor]:
    """Random but non-trivial weights for an OpenMMLab detector/segmenter state dict.

    ``template`` maps each key (as mmdet/mmseg name it) to ``(shape, dtype)``. Keys are visited in
    sorted order with one generator, ``n ~ N(0, 1)``:

    * ``backbone.*`` as :func:`seeded_state_dict` (norm weights ``1 + 0.1 n``, else ``0.05 n``);
    * neck/head conv weights ``n / sqrt(fan_in)`` (activations stay of order one through the
      stacked convs), norm weights ``1 + 0.1 n``, BN running means ``0.1 n`` and variances
      ``0.5 + |n|``, biases ``0.05 n``; ``num_batches_tracked`` 0;
    * ``overrides[key]`` shifts that tensor by a constant (e.g. the class bias, so that a known
      share of the scores clears the detector's ``score_thr``); ``scales[key]`` multiplies it
      first (e.g. wider class or mask logits).
    """
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for k in sorted(template):
        shape, dtype = template[k]
        if not dtype.startswith("float"):
            out[k] = torch.zeros(shape, dtype=getattr(torch, dtype))
            continue
        n = torch.randn(shape, generator=g)
        norm_weight = k.endswith(".weight") and len(shape) == 1
        if k.startswith("backbone."):
            v = 1.0 + 0.1 * n if ("norm" in k and norm_weight) else 0.05 * n
        elif k.endswith("running_var"):
            v = 0.5 + n.abs()
        elif k.endswith("running_mean"):
            v = 0.1 * n
        elif norm_weight:
            v = 1.0 + 0.1 * n
        elif len(shape) > 1:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            v = n / fan_in**0.5
        else:
            v = 0.05 * n
        out[k] = v * (scales or {}).get(k, 1.0) + (overrides or {}).get(k, 0.0)
    return out


def unpack_masks(data: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Inverse of the golden generator's ``pack_masks``: zlib-compressed bits -> bool ``shape``."""
    import zlib

    import numpy as np

    bits = np.unpackbits(np.frombuffer(zlib.decompress(data.numpy().tobytes()), np.uint8))
    return torch.from_numpy(bits[: int(np.prod(shape))].reshape(shape).astype(bool))


def assert_same_detections(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Two served detection lists agree as the golden tests require: every detection of one has a
    same-label box in the other with IoU >= 0.98 and its score within 2e-3.

    Detections whose score is within 2e-3 of the lowest kept score are exempt: a different thread
    count changes the last float bits, which can swap near-tied boxes across ``max_per_img`` or the
    score threshold (and reorder ties), without either answer being wrong."""
    from sepvit.ops import box_iou

    if not want and not got:
        return
    floor = min(d["score"] for d in [*got, *want]) + 2e-3

    def covered(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
        if not b:
            return all(d["score"] <= floor for d in a)
        boxes_b = torch.tensor([d["box"] for d in b], dtype=torch.float64)
        for d in a:
            if d["score"] <= floor:
                continue
            iou = box_iou(torch.tensor([d["box"]], dtype=torch.float64), boxes_b)[0]
            if not any(
                e["label"] == d["label"] and abs(e["score"] - d["score"]) <= 2e-3 and iou[i] >= 0.98
                for i, e in enumerate(b)
            ):
                return False
        return True

    assert covered(got, want) and covered(want, got), (got, want)
