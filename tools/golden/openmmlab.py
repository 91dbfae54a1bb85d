"""Golden outputs of OpenMMLab's own RetinaNet (mmdet 3.x) and Semantic FPN (mmseg 1.x).

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

mmcv-lite has no compiled ops. ``mmcv._ext`` is provided here: ``nms`` in pure torch, following
mmcv's CPU kernel (sort by score, suppress IoU ``> iou_threshold``, ``offset`` added to widths),
and every other op raising ``NotImplementedError`` (inference of these two models calls none).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
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

    ext.__file__ = __file__
    ext.nms = nms  # type: ignore[attr-defined]
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
def retinanet_cfg() -> dict[str, Any]:
    return dict(
        type="RetinaNet",
        data_preprocessor=dict(
            type="DetDataPreprocessor", mean=MEAN, std=STD, bgr_to_rgb=True, pad_size_divisor=32
        ),
        backbone=dict(type="SepViT_Tiny", style="pytorch"),
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
            bbox_coder=dict(
                type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4
            ),
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
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(
            type="SegDataPreProcessor", mean=MEAN, std=STD, bgr_to_rgb=True, pad_val=0
        ),
        backbone=dict(type="SepViT_Tiny", style="pytorch"),
        neck=dict(type="FPN", in_channels=[96, 192, 384, 768], out_channels=256, num_outs=4),
        decode_head=dict(
            type="FPNHead",
            in_channels=[256, 256, 256, 256],
            in_index=[0, 1, 2, 3],
            feature_strides=[4, 8, 16, 32],
            channels=128,
            dropout_ratio=0.1,
            num_classes=150,
            norm_cfg=dict(type="SyncBN", requires_grad=True),
            align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        ),
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )


# ---------------------------------------------------------------------------------------------
def seed_model(
    model: nn.Module, seed: int, overrides: dict[str, float]
) -> tuple[dict[str, Any], dict[str, float]]:
    template = {
        k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in model.state_dict().items()
    }
    state = seeded_openmmlab_state(template, seed, overrides)
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


def run_segmenter(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """mmseg ``predict`` (whole mode): logits at ``x``'s size, stored at seeded pixels plus the
    label map and per-class means and maxima (the full map is too large to commit)."""
    from mmseg.structures import SegDataSample

    h, w = x.shape[-2:]
    with torch.no_grad():
        (out,) = model.predict(x, [SegDataSample(metainfo=meta_info(h, w))])
    logits = out.seg_logits.data.float()  # [C, H, W]
    g = torch.Generator().manual_seed(PIXELS_SEED)
    rows = torch.randint(0, h, (N_PIXELS,), generator=g)
    cols = torch.randint(0, w, (N_PIXELS,), generator=g)
    print(f"  logits {tuple(logits.shape)}, |max| {float(logits.abs().max()):.3f}")
    return {
        "seg_positions": torch.stack((rows, cols), 1),
        "seg_logits_at": logits[:, rows, cols].T.contiguous(),  # [P, C]
        "seg_labels": logits.argmax(0).to(torch.uint8),
        "seg_channel_mean": logits.mean((1, 2)),
        "seg_channel_max": logits.amax((1, 2)),
    }


@dataclass(frozen=True)
class Golden:
    """One model to run: written to ``tests/data/openmmlab_<name>.safetensors``."""

    name: str  # the sepvit head name
    scope: str  # "mmdet" or "mmseg"
    config: Callable[[], dict[str, Any]]
    seed: int
    run: Callable[[nn.Module, Tensor], dict[str, Tensor]]
    overrides: dict[str, float] = field(default_factory=dict)


GOLDENS = [
    Golden("retinanet", "mmdet", retinanet_cfg, DET_SEED, run_detector,
           {"bbox_head.retina_cls.bias": DET_CLS_BIAS}),
    Golden("semantic_fpn", "mmseg", semantic_fpn_cfg, SEG_SEED, run_segmenter),
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
    x = seeded_input((1, 3, h, w), INPUT_SEED)
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
        template, checksums = seed_model(model, golden.seed, golden.overrides)
        tensors = golden.run(model, x)
        meta = {
            "input": {"shape": [1, 3, h, w], "seed": INPUT_SEED},
            "seed": golden.seed,
            "overrides": golden.overrides,
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
