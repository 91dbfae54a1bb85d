"""Golden outputs of OpenMMLab's own RetinaNet, Mask R-CNN (mmdet 3.x), Semantic FPN and UperNet
(mmseg 1.x).

Run by hand, never in CI, in a separate environment that has OpenMMLab (mmdet/mmseg/mmcv never
enter the project's runtime or test dependencies)::

    python -m venv /work/mmvenv && /work/mmvenv/bin/pip install torch==2.13.0 mmengine==0.10.7 \\
        numpy scipy safetensors terminaltables pycocotools shapely ftfy regex prettytable
    /work/mmvenv/bin/pip install --no-deps mmcv-lite==2.1.0 mmdet==3.2.0 mmsegmentation==1.2.2
    /work/mmvenv/bin/python tools/golden/openmmlab.py \\
        --official-sepvit <liwei109/SepViT checkout>/detection/sepvit.py

What it does, per model:

1. builds the model with mmdet's / mmseg's registries from the official configs
   (``retinanet_sepvit_t_fpn_1x_coco_pvt_setting.py``, ``fpn_sepvit_t_512x512_80k_ade20k.py``,
   written in mmdet 3.x / mmseg 1.x syntax), with the official SepViT-T backbone: the official
   ``detection/sepvit.py`` is executed with small stand-ins for the timm 0.3.2 / mmcv 1.x helpers it
   imports (``DropPath``, ``to_2tuple``, ``trunc_normal_``, timm's ``Block`` base, ``auto_fp16``);
2. fills every tensor of its ``state_dict()`` with seeded weights
   (:func:`tests.golden.seeded_openmmlab_state`) and writes the checkpoint with mmengine's own
   ``save_checkpoint`` (``--keep-checkpoints``: kept beside the goldens, too large to commit);
3. runs ``model.predict`` on a seeded normalised input (``rescale=False``; whole-mode inference);
4. stores in ``tests/data/openmmlab_<head>.safetensors``: the detections; the segmenter's logits
   at seeded pixel positions, its full label map and per-class logit means and maxima; and, as
   JSON metadata, the key template (names, shapes, dtypes), seeds, per-tensor checksums and
   versions.

Another head is one more :class:`Golden` entry in ``GOLDENS`` (its config, seed and run function);
``--only`` regenerates some of them.

Mask R-CNN (``mask_rcnn_sepvit_t_fpn_1x_coco_pvt_setting.py``) and UperNet
(``upernet_sepvit_t_512x512_160k_ade20k_swin_setting.py``) run on a batch of two images; the
instance masks are stored as zlib-compressed bits.

mmcv-lite has no compiled ops. ``mmcv._ext`` is provided here: ``nms`` in pure torch, following
mmcv's CPU kernel (sort by score, suppress IoU ``> iou_threshold``, ``offset`` added to widths),
``roi_align_forward`` (average pooling) written loop by loop after mmcv's CPU kernel
(:func:`roi_align_reference`, deliberately independent of ``sepvit.ops.roi_align``, which the unit
tests check against it), and every other op raising ``NotImplementedError`` (inference of these
models calls none).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.golden import seeded_input, seeded_openmmlab_state  # noqa: E402

OUT_DIR = ROOT / "tests" / "data"
MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
INPUT_HW = (256, 320)
DET_SEED, SEG_SEED, INPUT_SEED, PIXELS_SEED = 15, 16, 17, 18
# shift of the class biases: leaves a few dozen detections above score_thr=0.05 after NMS
DET_CLS_BIAS = -4.0
N_PIXELS = 2048
MASK_RCNN_SEED, UPERNET_SEED, TWO_IMAGE_SEED = 19, 20, 21
# Mask R-CNN: smaller RPN deltas (compact proposals), class logits narrow enough that a few dozen
# detections per image clear score_thr (fewer than max_per_img, so no ranking cut decides the
# set), mask logits wide enough that few pixels sit near mask_thr_binary
MASK_RCNN_SCALES = {
    "rpn_head.rpn_reg.weight": 0.2,
    "roi_head.bbox_head.fc_cls.weight": 0.52,
    "roi_head.mask_head.conv_logits.weight": 30.0,
}


# ---------------------------------------------------------------------------------------------
# stand-ins for what mmcv-lite and the official backbone's imports lack
# ---------------------------------------------------------------------------------------------
def _nms(boxes: Tensor, scores: Tensor, iou_threshold: float, offset: int = 0) -> Tensor:
    """mmcv's ``nms_impl`` on CPU, in torch: kept indices in decreasing score order."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1 + offset) * (y2 - y1 + offset)
    order = scores.sort(0, descending=True).indices
    keep = torch.ones(len(order), dtype=torch.bool)
    for a in range(len(order)):
        if not keep[a]:
            continue
        i, rest = order[a], order[a + 1 :]
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest]) + offset).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest]) + offset).clamp(min=0)
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        keep[a + 1 :] &= ~(ovr > iou_threshold)
    return order[keep]


def roi_align_reference(
    features: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """mmcv's ``ROIAlignForward`` with average pooling (``csrc/pytorch/cpu/roi_align.cpp``), one
    RoI, bin and sample at a time, in float32 as the kernel computes it."""
    ph_n, pw_n = output_size
    _, c, height, width = features.shape
    out = features.new_zeros((rois.shape[0], c, ph_n, pw_n))

    def f32(v: float) -> Tensor:
        return torch.tensor(v, dtype=torch.float32)

    for n, roi in enumerate(rois.to(torch.float32)):
        fm = features[int(roi[0])]
        off = f32(0.5 if aligned else 0.0)
        start_w = roi[1] * spatial_scale - off
        start_h = roi[2] * spatial_scale - off
        roi_w = roi[3] * spatial_scale - off - start_w
        roi_h = roi[4] * spatial_scale - off - start_h
        if not aligned:
            roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
        bin_h, bin_w = roi_h / ph_n, roi_w / pw_n
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(float(roi_h / ph_n))
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(float(roi_w / pw_n))
        count = max(gh * gw, 1)
        for ph in range(ph_n):
            for pw in range(pw_n):
                acc = torch.zeros(c, dtype=torch.float32)
                for iy in range(gh):
                    y = start_h + ph * bin_h + f32(iy + 0.5) * bin_h / f32(gh)
                    for ix in range(gw):
                        x = start_w + pw * bin_w + f32(ix + 0.5) * bin_w / f32(gw)
                        if not (-1.0 <= float(y) <= height and -1.0 <= float(x) <= width):
                            continue  # a sample beyond one pixel outside the map counts as 0
                        yv, xv = y.clamp(min=0), x.clamp(min=0)
                        y_low, x_low = int(yv), int(xv)
                        if y_low >= height - 1:
                            y_low = y_high = height - 1
                            yv = f32(y_low)
                        else:
                            y_high = y_low + 1
                        if x_low >= width - 1:
                            x_low = x_high = width - 1
                            xv = f32(x_low)
                        else:
                            x_high = x_low + 1
                        ly, lx = yv - y_low, xv - x_low
                        hy, hx = 1.0 - ly, 1.0 - lx
                        acc += (
                            (hy * hx) * fm[:, y_low, x_low]
                            + (hy * lx) * fm[:, y_low, x_high]
                            + (ly * hx) * fm[:, y_high, x_low]
                            + (ly * lx) * fm[:, y_high, x_high]
                        )
                out[n, :, ph, pw] = acc / count
    return out


def install_mmcv_ext() -> None:
    ext = types.ModuleType("mmcv._ext")

    def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, offset: int = 0) -> Tensor:
        return _nms(boxes, scores, iou_threshold, offset)

    def missing(name: str) -> Callable[..., Any]:
        if name.startswith("__"):
            raise AttributeError(name)

        def op(*args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError(f"mmcv._ext.{name}: no compiled ops in mmcv-lite")

        return op

    def roi_align_forward(
        input: Tensor,
        rois: Tensor,
        output: Tensor,
        argmax_y: Tensor,
        argmax_x: Tensor,
        aligned_height: int,
        aligned_width: int,
        spatial_scale: float,
        sampling_ratio: int,
        pool_mode: int,
        aligned: bool,
    ) -> None:
        if pool_mode != 1:
            raise NotImplementedError("roi_align_forward: only average pooling is provided")
        size = (aligned_height, aligned_width)
        output.copy_(roi_align_reference(input, rois, size, spatial_scale, sampling_ratio, aligned))

    ext.__file__ = __file__
    ext.nms = nms  # type: ignore[attr-defined]
    ext.roi_align_forward = roi_align_forward  # type: ignore[attr-defined]
    ext.__getattr__ = missing  # type: ignore[attr-defined]
    sys.modules["mmcv._ext"] = ext


class _DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return x  # inference only


def load_official_backbone(path: Path) -> type[nn.Module]:
    """``SepViT_Tiny`` from the official ``detection/sepvit.py``, its foreign imports replaced."""
    source = path.read_text()
    kept = [ln for ln in source.splitlines() if not ln.startswith(("from timm", "from mmdet"))]
    kept = [ln for ln in kept if not ln.startswith("from mmcv")]
    ns: dict[str, Any] = {"__name__": "official_sepvit"}

    class TimmBlock(nn.Module):
        """timm 0.3.2's ``vision_transformer.Block`` as far as ``SepViTBlock`` uses it."""

        def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = False,
            qk_scale: float | None = None,
            drop: float = 0.0,
            attn_drop: float = 0.0,
            drop_path: float = 0.0,
            act_layer: type[nn.Module] = nn.GELU,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        ) -> None:
            super().__init__()
            self.norm1 = norm_layer(dim)
            self.attn = nn.Identity()  # the official block deletes and rebuilds it
            self.drop_path = _DropPath(drop_path) if drop_path > 0 else nn.Identity()
            self.norm2 = norm_layer(dim)
            self.mlp = ns["Mlp"](dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def identity_decorator(*args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        return lambda fn: fn

    ns.update(
        DropPath=_DropPath,
        to_2tuple=lambda x: tuple(x) if isinstance(x, tuple | list) else (x, x),
        trunc_normal_=nn.init.trunc_normal_,
        register_model=lambda fn: fn,
        _cfg=lambda **kw: kw,
        BACKBONES=types.SimpleNamespace(register_module=identity_decorator),
        get_root_logger=logging.getLogger,
        TimmBlock=TimmBlock,
        auto_fp16=identity_decorator,
        force_fp32=identity_decorator,
    )
    exec(compile("\n".join(kept), str(path), "exec"), ns)  # a local file named on the command line
    return ns["SepViT_Tiny"]


# ---------------------------------------------------------------------------------------------
# the official configs, in mmdet 3.x / mmseg 1.x syntax
# ---------------------------------------------------------------------------------------------
def _detector(type_: str, **parts: Any) -> dict[str, Any]:
    """An mmdet model of ``type_``: the official preprocessing and backbone, then ``parts``."""
    preprocess = dict(
        type="DetDataPreprocessor", mean=MEAN, std=STD, bgr_to_rgb=True, pad_size_divisor=32
    )
    backbone = dict(type="SepViT_Tiny", style="pytorch")
    return dict(type=type_, data_preprocessor=preprocess, backbone=backbone, **parts)


def _segmenter(**parts: Any) -> dict[str, Any]:
    """An mmseg ``EncoderDecoder``: the official preprocessing and backbone, ``parts``, and
    whole-image inference."""
    preprocess = dict(type="SegDataPreProcessor", mean=MEAN, std=STD, bgr_to_rgb=True, pad_val=0)
    backbone = dict(type="SepViT_Tiny", style="pytorch")
    return dict(
        type="EncoderDecoder",
        data_preprocessor=preprocess,
        backbone=backbone,
        **parts,
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )


def _decode_head(type_: str, channels: int, loss_weight: float = 1.0, **kw: Any) -> dict[str, Any]:
    """An mmseg decode head as the official ADE20K configs set it: 150 classes, SyncBN, dropout
    0.1, cross-entropy (weight ``loss_weight``); ``kw``: its own arguments."""
    return dict(
        type=type_,
        **kw,
        channels=channels,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=dict(type="SyncBN", requires_grad=True),
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=loss_weight),
    )


def _delta_coder(stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)) -> dict[str, Any]:
    return dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=list(stds))


def retinanet_cfg() -> dict[str, Any]:
    return _detector(
        "RetinaNet",
        neck=dict(
            type="FPN",
            in_channels=[96, 192, 384, 768],
            out_channels=256,
            start_level=1,
            add_extra_convs="on_input",
            num_outs=5,
        ),
        bbox_head=dict(
            type="RetinaHead",
            num_classes=80,
            in_channels=256,
            stacked_convs=4,
            feat_channels=256,
            anchor_generator=dict(
                type="AnchorGenerator",
                octave_base_scale=4,
                scales_per_octave=3,
                ratios=[0.5, 1.0, 2.0],
                strides=[8, 16, 32, 64, 128],
            ),
            bbox_coder=_delta_coder(),
            loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0),
        ),
        test_cfg=dict(
            nms_pre=1000,
            min_bbox_size=0,
            score_thr=0.05,
            nms=dict(type="nms", iou_threshold=0.5),
            max_per_img=100,
        ),
    )


def semantic_fpn_cfg() -> dict[str, Any]:
    return _segmenter(
        neck=dict(type="FPN", in_channels=[96, 192, 384, 768], out_channels=256, num_outs=4),
        decode_head=_decode_head(
            "FPNHead", 128, in_channels=[256] * 4, in_index=[0, 1, 2, 3],
            feature_strides=[4, 8, 16, 32],
        ),
    )  # fmt: skip


def mask_rcnn_cfg() -> dict[str, Any]:
    """``mask_rcnn_r50_fpn`` with ``mask_rcnn_sepvit_t_*``'s backbone/neck, mmdet 3.x test cfg."""
    roi_extractor = dict(
        type="SingleRoIExtractor",
        roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0),
        out_channels=256,
        featmap_strides=[4, 8, 16, 32],
    )
    return _detector(
        "MaskRCNN",
        neck=dict(type="FPN", in_channels=[96, 192, 384, 768], out_channels=256, num_outs=5),
        rpn_head=dict(
            type="RPNHead",
            in_channels=256,
            feat_channels=256,
            anchor_generator=dict(
                type="AnchorGenerator",
                scales=[8],
                ratios=[0.5, 1.0, 2.0],
                strides=[4, 8, 16, 32, 64],
            ),
            bbox_coder=_delta_coder(),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0),
        ),
        roi_head=dict(
            type="StandardRoIHead",
            bbox_roi_extractor=roi_extractor,
            bbox_head=dict(
                type="Shared2FCBBoxHead",
                in_channels=256,
                fc_out_channels=1024,
                roi_feat_size=7,
                num_classes=80,
                bbox_coder=_delta_coder((0.1, 0.1, 0.2, 0.2)),
                reg_class_agnostic=False,
                loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                loss_bbox=dict(type="L1Loss", loss_weight=1.0),
            ),
            mask_roi_extractor={
                **roi_extractor,
                "roi_layer": dict(type="RoIAlign", output_size=14, sampling_ratio=0),
            },
            mask_head=dict(
                type="FCNMaskHead",
                num_convs=4,
                in_channels=256,
                conv_out_channels=256,
                num_classes=80,
                loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0),
            ),
        ),
        train_cfg=None,
        test_cfg=dict(
            rpn=dict(
                nms_pre=1000,
                max_per_img=1000,
                nms=dict(type="nms", iou_threshold=0.7),
                min_bbox_size=0,
            ),
            rcnn=dict(
                score_thr=0.05,
                nms=dict(type="nms", iou_threshold=0.5),
                max_per_img=100,
                mask_thr_binary=0.5,
            ),
        ),
    )


def upernet_cfg() -> dict[str, Any]:
    """``upernet_r50`` with ``upernet_sepvit_t_*``'s overrides (ADE20K, 150 classes)."""
    return _segmenter(
        decode_head=_decode_head(
            "UPerHead", 512, in_channels=[96, 192, 384, 768], in_index=[0, 1, 2, 3],
            pool_scales=(1, 2, 3, 6),
        ),
        auxiliary_head=_decode_head(
            "FCNHead", 256, 0.4, in_channels=384, in_index=2, num_convs=1, concat_input=False
        ),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
def seed_model(
    model: nn.Module, seed: int, overrides: dict[str, float], scales: dict[str, float]
) -> tuple[dict[str, Any], dict[str, float]]:
    template = {
        k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
    }
    state = seeded_openmmlab_state(template, seed, overrides, scales)
    model.load_state_dict(state, strict=True)
    checksums = {k: float(v.double().sum()) for k, v in state.items()}
    return {k: [list(s), d] for k, (s, d) in template.items()}, checksums


def meta_info(h: int, w: int) -> dict[str, Any]:
    return dict(
        img_shape=(h, w),
        ori_shape=(h, w),
        pad_shape=(h, w),
        batch_input_shape=(h, w),
        scale_factor=(1.0, 1.0),
        padding_size=[0, 0, 0, 0],
        flip=False,
    )


def run_detector(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """mmdet ``predict(rescale=False)``: detections in ``x``'s pixels."""
    from mmdet.structures import DetDataSample

    h, w = x.shape[-2:]
    with torch.no_grad():
        (res,) = model.predict(x, [DetDataSample(metainfo=meta_info(h, w))], rescale=False)
    inst = res.pred_instances
    print(f"  {len(inst.scores)} detections, lowest score {float(inst.scores.min()):.4f}")
    return {
        "det_boxes": inst.bboxes.float().contiguous(),
        "det_scores": inst.scores.float().contiguous(),
        "det_labels": inst.labels.long().contiguous(),
    }


def segment_record(logits: Tensor, prefix: str, n_pixels: int = N_PIXELS) -> dict[str, Tensor]:
    """``[C, H, W]`` logits at ``n_pixels`` seeded pixels, plus the label map and per-class means
    and maxima (the full map is too large to commit)."""
    _, h, w = logits.shape
    g = torch.Generator().manual_seed(PIXELS_SEED)
    rows = torch.randint(0, h, (n_pixels,), generator=g)
    cols = torch.randint(0, w, (n_pixels,), generator=g)
    print(f"  logits {tuple(logits.shape)}, |max| {float(logits.abs().max()):.3f}")
    return {
        f"{prefix}positions": torch.stack((rows, cols), 1),
        f"{prefix}logits_at": logits[:, rows, cols].T.contiguous(),  # [P, C]
        f"{prefix}labels": logits.argmax(0).to(torch.uint8),
        f"{prefix}channel_mean": logits.mean((1, 2)),
        f"{prefix}channel_max": logits.amax((1, 2)),
    }


def _segment(model: nn.Module, x: Tensor) -> list[Tensor]:
    """mmseg ``predict`` (whole mode): ``[C, H, W]`` logits at ``x``'s size per image."""
    from mmseg.structures import SegDataSample

    h, w = x.shape[-2:]
    with torch.no_grad():
        out = model.predict(x, [SegDataSample(metainfo=meta_info(h, w)) for _ in range(len(x))])
    return [o.seg_logits.data.float() for o in out]


def run_segmenter(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """One image: ``seg_*`` records (:func:`segment_record`)."""
    (logits,) = _segment(model, x)
    return segment_record(logits, "seg_")


def run_segmenter_batch(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Several images: ``seg<i>_*`` records per image (256 pixels each: the file stays small)."""
    out: dict[str, Tensor] = {}
    for i, logits in enumerate(_segment(model, x)):
        out.update(segment_record(logits, f"seg{i}_", 256))
    return out


def pack_masks(masks: Tensor) -> Tensor:
    """``[n, H, W]`` bool -> zlib-compressed bits as uint8 (``tests.golden.unpack_masks``)."""
    import zlib

    import numpy as np

    bits = np.packbits(masks.numpy().astype(bool), axis=None).tobytes()
    return torch.frombuffer(bytearray(zlib.compress(bits, 9)), dtype=torch.uint8)


def run_instance_segmenter(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """mmdet ``predict(rescale=False)`` of a Mask R-CNN on a batch: per image ``det<i>_boxes``,
    ``_scores``, ``_labels`` and ``_masks`` (packed ``[n, H, W]``)."""
    from mmdet.structures import DetDataSample

    h, w = x.shape[-2:]
    samples = [DetDataSample(metainfo=meta_info(h, w)) for _ in range(len(x))]
    with torch.no_grad():
        results = model.predict(x, samples, rescale=False)
    out: dict[str, Tensor] = {}
    for i, res in enumerate(results):
        inst = res.pred_instances
        cover = float(inst.masks.float().mean((1, 2)).median())
        print(f"  image {i}: {len(inst.scores)} detections, median mask cover {cover:.3f}")
        out[f"det{i}_boxes"] = inst.bboxes.float().contiguous()
        out[f"det{i}_scores"] = inst.scores.float().contiguous()
        out[f"det{i}_labels"] = inst.labels.long().contiguous()
        out[f"det{i}_masks"] = pack_masks(inst.masks)
    return out


@dataclass(frozen=True)
class Golden:
    """One model to run: written to ``tests/data/openmmlab_<name>.safetensors``."""

    name: str  # the sepvit head name
    scope: str  # "mmdet" or "mmseg"
    config: Callable[[], dict[str, Any]]
    seed: int
    run: Callable[[nn.Module, Tensor], dict[str, Tensor]]
    overrides: dict[str, float] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)  # multiplies before overrides
    batch: int = 1
    input_seed: int = INPUT_SEED


GOLDENS = [
    Golden("retinanet", "mmdet", retinanet_cfg, DET_SEED, run_detector,
           {"bbox_head.retina_cls.bias": DET_CLS_BIAS}),
    Golden("semantic_fpn", "mmseg", semantic_fpn_cfg, SEG_SEED, run_segmenter),
    Golden("mask_rcnn", "mmdet", mask_rcnn_cfg, MASK_RCNN_SEED, run_instance_segmenter,
           scales=MASK_RCNN_SCALES, batch=2, input_seed=TWO_IMAGE_SEED),
    Golden("upernet", "mmseg", upernet_cfg, UPERNET_SEED, run_segmenter_batch,
           batch=2, input_seed=TWO_IMAGE_SEED),
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official-sepvit", type=Path, required=True, help="detection/sepvit.py")
    ap.add_argument("--only", nargs="+", choices=[g.name for g in GOLDENS], help="these models")
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--keep-checkpoints", type=Path, help="also write the .pth files here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    install_mmcv_ext()
    import mmdet
    import mmseg
    from mmdet.registry import MODELS as DET_MODELS
    from mmdet.utils import register_all_modules as register_mmdet
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope
    from mmengine.runner.checkpoint import get_state_dict, save_checkpoint
    from mmseg.registry import MODELS as SEG_MODELS
    from mmseg.utils import register_all_modules as register_mmseg
    from safetensors.torch import save_file

    backbone = load_official_backbone(args.official_sepvit)
    register_mmdet(init_default_scope=False)
    register_mmseg(init_default_scope=False)
    registries = {"mmdet": DET_MODELS, "mmseg": SEG_MODELS}
    h, w = INPUT_HW
    versions = {
        "torch": torch.__version__,
        "mmdet": mmdet.__version__,
        "mmseg": mmseg.__version__,
        "official_sepvit_sha256": hashlib.sha256(args.official_sepvit.read_bytes()).hexdigest(),
    }
    for golden in GOLDENS:
        if args.only and golden.name not in args.only:
            continue
        print(golden.name)
        registry = registries[golden.scope]
        registry.register_module(name="SepViT_Tiny", module=backbone, force=True)
        with DefaultScope.overwrite_default_scope(golden.scope):
            model = registry.build(ConfigDict(golden.config())).eval()
        template, checksums = seed_model(model, golden.seed, golden.overrides, golden.scales)
        shape = (golden.batch, 3, h, w)
        tensors = golden.run(model, seeded_input(shape, golden.input_seed))
        meta = {
            "input": {"shape": list(shape), "seed": golden.input_seed},
            "seed": golden.seed,
            "overrides": golden.overrides,
            "scales": golden.scales,
            "template": template,
            "checksums": checksums,
            "versions": versions,
        }
        out = args.out_dir / f"openmmlab_{golden.name}.safetensors"
        save_file(tensors, str(out), metadata={"openmmlab": json.dumps(meta, sort_keys=True)})
        print(f"  wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
        if args.keep_checkpoints:
            args.keep_checkpoints.mkdir(parents=True, exist_ok=True)
            ckpt = {"meta": {"seed": golden.seed}, "state_dict": get_state_dict(model)}
            save_checkpoint(ckpt, str(args.keep_checkpoints / f"{golden.name}_sepvit_t.pth"))


if __name__ == "__main__":
    main()
