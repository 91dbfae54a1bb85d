"""One pipeline per task: decode -> preprocess -> infer -> postprocess.

The same :class:`Pipeline` serves the TorchServe entry points and the gateway's embedded
backend, so both give identical answers. ``handle(payloads, params)`` takes N encoded images and
returns N results in order; an image that fails (undecodable, too large, bad parameter) yields its
own :class:`~handlers.errors.PipelineError` in its slot while the others are answered.

Results (JSON-ready dicts; pixel coordinates refer to the original image after EXIF orientation):

* classify: ``{"top_k": [{"label", "index", "score"}]}``
* detect: ``{"detections": [{"label", "index", "score", "box": [x1, y1, x2, y2]}]}``; a Mask
  R-CNN model adds ``"mask": {"size", "counts"}`` (COCO RLE at the original size) per detection,
  and answers ``format=png`` (instance-id map: 0 background, ``i + 1`` for detection ``i``) and
  ``format=overlay`` (instance colours and boxes) with a PNG.
* segment: ``{"segments": [{"label", "index", "area", "rle": {"size", "counts"}}]}`` (default),
  or ``{"media_type": "image/png", "data": bytes}`` for ``format=png`` (label map) and
  ``format=overlay`` (colour overlay).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cpu_runtimes import gate, gate_inputs
from .decode import DecodeLimits, PixelBudget, decode_image, image_pixels
from .errors import BadParameterError, PipelineError, TooManyImagesError
from .geometry import Letterbox, classify_transform, keep_ratio_resize, letterbox
from .outputs import (
    InstanceMask,
    instance_map_png,
    instance_overlay_png,
    label_map_png,
    overlay_png,
    rle_encode_crop,
    segments_from_labels,
)
from .params import RequestParams
from .runtime import GATED, Runtime, build_runtime, check_parity, golden_inputs

__all__ = ["Pipeline", "PipelineConfig", "Prepared"]

log = logging.getLogger(__name__)

# bilinear-upsampling the logits to the original size costs K*H*W floats; above this many
# elements (64 MB of float32) the label map is upsampled by nearest neighbour instead, which
# costs one byte per original pixel
MAX_UPSAMPLE_ELEMENTS = 16_000_000


@dataclass
class PipelineConfig:
    """Per-model handler options (``model-config.yaml`` ``handler:`` section)."""

    runtime: str = "eager"  # eager | onnxruntime | tensorrt | bf16 | int8 | auto
    on_parity_failure: str = "fallback"  # or "fail"
    top_k: int = 5
    score_threshold: float | None = None  # detection; None: the model's own
    max_detections: int = 100
    buckets: list[tuple[int, int]] | None = None  # detection/segmentation; None: the input size
    max_images: int = 32
    threads: int = 0
    runtime_options: dict[str, Any] = field(default_factory=dict)
    limits: DecodeLimits = field(default_factory=DecodeLimits)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> PipelineConfig:
        d = dict(data or {})
        limits = DecodeLimits(**d.pop("limits", {}))
        buckets = d.pop("buckets", None)
        known = {f for f in cls.__dataclass_fields__ if f != "limits"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown handler options: {sorted(unknown)}")
        cfg = cls(**d, limits=limits)
        if buckets is not None:
            cfg.buckets = [(int(b[0]), int(b[1])) for b in buckets]
        if cfg.on_parity_failure not in ("fallback", "fail"):
            raise ValueError("on_parity_failure must be 'fallback' or 'fail'")
        return cfg


@dataclass
class _Item:
    index: int
    payload: bytes  # the encoded image (an overlay decodes it again rather than holding pixels)
    tensor: np.ndarray  # preprocessed [H, W, 3] uint8 (network input size)
    box: Letterbox | None
    params: RequestParams


@dataclass
class Prepared:
    """Decoded, preprocessed images grouped by network input shape (:meth:`Pipeline.prepare`)."""

    results: list[dict[str, Any] | PipelineError | None]  # per image: its error, or None
    groups: dict[tuple[int, int], list[_Item]] = field(default_factory=dict)


class Pipeline:
    """Decode/preprocess/infer/postprocess for one model built by ``sepvit.create_model``."""

    def __init__(
        self,
        model: nn.Module,
        config: PipelineConfig | None = None,
        budget: PixelBudget | None = None,
    ) -> None:
        """``budget`` bounds the decoded pixels alive at once; share one between pipelines to
        bound a whole process (default: one full-size image at a time in this pipeline)."""
        from sepvit import model_config

        self.config = config or PipelineConfig()
        self.budget = budget or PixelBudget(self.config.limits.max_pixels)
        self.model = model.eval()
        self.cfg = model_config(model)
        self.task: str = self.cfg["task"]
        self.labels: list[str] | None = self.cfg.get("label_names")
        self.input_size = (int(self.cfg["input_size"][1]), int(self.cfg["input_size"][2]))
        self.mean = torch.tensor(self.cfg["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(self.cfg["std"]).view(1, 3, 1, 1)
        self.buckets = self.config.buckets or [self.input_size]
        # OpenMMLab presets: keep-ratio resize and pad per image (configured buckets override)
        self.keep_ratio = (
            self.task != "classify"
            and self.cfg.get("resize") == "keep_ratio"
            and not self.config.buckets
        )
        self.pad_divisor = int(self.cfg.get("pad_divisor") or 1)
        self.background = 0 if (self.labels and self.labels[0] == "background") else None
        self.has_masks = self.cfg.get("head") == "mask_rcnn"  # instance masks per detection
        self.runtime, self.parity = self._load_runtime()

    # -- loading -----------------------------------------------------------------------------
    def _load_runtime(self) -> tuple[Runtime, Any]:
        eager = build_runtime("eager", self.model, self.input_size)
        name = self.config.runtime
        # what /models reports: the runtime asked for, the one serving, auto's decision (its
        # "chosen" candidate, speeds, gates) and why a runtime fell back to eager
        self.runtime_info: dict[str, Any] = {"requested": name, "serving": "eager"}
        if name == "eager":
            return eager, None
        if self.task != "classify" and len(self.buckets) > 1:
            raise ValueError("non-eager runtimes serve one shape bucket; configure a single bucket")
        size = self.buckets[0] if self.task != "classify" else self.input_size
        try:
            if self.keep_ratio:
                raise ValueError(
                    "keep-ratio preprocessing gives each image its own shape; configure one "
                    "shape bucket (handler option buckets) for a non-eager runtime"
                )
            candidate = build_runtime(
                name,
                self.model,
                size,
                threads=self.config.threads,
                options=self.config.runtime_options,
            )
            self.runtime_info.update(candidate.info)
            if candidate.name == "eager":  # auto found nothing faster that passed its gate
                log.info("runtime %s -> eager", name)
                return candidate, None
            checked = self._check(name, candidate, eager, size)
        except Exception as exc:  # a runtime that cannot load is a parity failure too
            report = None
            reason = f"{name} runtime unavailable: {exc}"
        else:
            report = checked
            if checked.ok:
                log.info("runtime %s", checked)
                self.runtime_info["serving"] = candidate.name
                return candidate, checked
            reason = str(checked)
        if self.config.on_parity_failure == "fail":
            raise RuntimeError(f"refusing to load: {reason}")
        log.warning("%s; falling back to eager", reason)
        self.runtime_info["fallback"] = reason
        return eager, report

    def _check(self, name: str, candidate: Runtime, eager: Runtime, size: tuple[int, int]) -> Any:
        """Reduced-precision runtimes: the accuracy gate on dataset images (a short one when auto
        has just gated it, or cached the decision); others: parity on the golden inputs."""
        decode = self._decode_raw if self.task == "detect" else None
        if candidate.name in GATED:
            inputs = gate_inputs(self.model, size, quick=name == "auto")
            return gate(self.task, candidate, eager, inputs, decode=decode)
        return check_parity(self.task, candidate, eager, golden_inputs(size), decode=decode)

    # -- stages ------------------------------------------------------------------------------
    def decode(self, payload: bytes) -> np.ndarray:
        return decode_image(payload, self.config.limits)

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox | None]:
        interp = self.cfg.get("interpolation", "bicubic")
        if self.task == "classify":
            crop = float(self.cfg.get("crop_pct", 0.875))
            return classify_transform(image, self.input_size, crop, interp), None
        if self.keep_ratio:
            return keep_ratio_resize(image, self.input_size, self.pad_divisor)
        return letterbox(image, self.buckets, interpolation="bilinear")

    def _to_batch(
        self, arrays: Sequence[np.ndarray], valid: Sequence[tuple[int, int]] | None = None
    ) -> Tensor:
        """Normalised ``[B, 3, H, W]``; with ``valid`` sizes, the padding beyond them is zero
        *after* normalisation (mmdet/mmseg pad the normalised batch)."""
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - self.mean) / self.std
        for i, (vh, vw) in enumerate(valid or ()):
            x[i, :, vh:] = 0.0
            x[i, :, :, vw:] = 0.0
        return x

    def infer(self, batch: Tensor) -> list[Tensor]:
        return [t.cpu() for t in self.runtime(batch)]

    def _decode_raw(self, raw: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections in bucket pixels for a raw detector output (parity checks)."""
        return self.model.postprocess(  # type: ignore[operator]
            *raw, image_size=self.buckets[0], max_detections=self.config.max_detections
        )

    def postprocess(
        self, raw: list[Tensor], items: Sequence[_Item], hw: tuple[int, int]
    ) -> list[dict[str, Any]]:
        if self.task == "classify":
            return [self._classify_result(raw[0][i], it.params) for i, it in enumerate(items)]
        if self.task == "detect":
            out = []
            for i, it in enumerate(items):
                thresh = (
                    it.params.score_threshold
                    if it.params.score_threshold is not None
                    else self.config.score_threshold
                )
                limit = self.config.max_detections
                if it.params.max_detections is not None:
                    limit = min(limit, it.params.max_detections)
                (det,) = self.model.postprocess(  # type: ignore[operator]
                    *(r[i : i + 1] for r in raw),
                    image_size=hw,
                    score_thresh=thresh,
                    max_detections=limit,
                    clip_size=it.box.valid_hw if self.keep_ratio and it.box else None,
                )
                out.append(self._detect_result(det, it))
            return out
        return [self._segment_result(raw[0][i], it) for i, it in enumerate(items)]

    def _label(self, idx: int) -> str:
        return self.labels[idx] if self.labels and 0 <= idx < len(self.labels) else str(idx)

    def _classify_result(self, logits: Tensor, params: RequestParams) -> dict[str, Any]:
        probs = logits.float().softmax(-1)
        k = min(params.top_k or self.config.top_k, probs.numel())
        scores, idx = probs.topk(k)
        return {
            "top_k": [
                {"label": self._label(int(i)), "index": int(i), "score": float(s)}
                for s, i in zip(scores, idx, strict=True)
            ]
        }

    def _detect_result(self, det: dict[str, Tensor], it: _Item) -> dict[str, Any]:
        assert it.box is not None
        boxes = it.box.boxes_to_original(det["boxes"].numpy())
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        detections = [
            {
                "label": self._label(int(lbl)),
                "index": int(lbl),
                "score": float(score),
                "box": [round(float(v), 2) for v in box],
            }
            for box, score, lbl, k in zip(boxes, det["scores"], det["labels"], keep, strict=True)
            if k
        ]
        if "mask_probs" not in det:
            return {"detections": detections}
        masks = self._instance_masks(det["mask_probs"][torch.from_numpy(keep)], boxes[keep], it)
        size = (it.box.orig_h, it.box.orig_w)
        if it.params.format == "png":
            return {"media_type": "image/png", "data": instance_map_png(masks, size)}
        if it.params.format == "overlay":
            with self.budget.hold(size[0] * size[1]):
                image = self.decode(it.payload)
                data = instance_overlay_png(image, masks, boxes[keep].tolist())
            return {"media_type": "image/png", "data": data}
        for d, m in zip(detections, masks, strict=True):
            d["mask"] = rle_encode_crop(m, size)
        return {"detections": detections}

    def _instance_masks(self, probs: Tensor, boxes: np.ndarray, it: _Item) -> list[InstanceMask]:
        """Mask R-CNN's ``[n, 28, 28]`` probabilities pasted at the original image size, each
        into its own box region only (mmdet's ``rescale=True`` pasting)."""
        from sepvit.heads.mask_rcnn import paste_mask

        assert it.box is not None
        size = (it.box.orig_h, it.box.orig_w)
        thresh = float(getattr(self.model, "mask_thresh", 0.5))
        out = []
        for p, b in zip(probs, torch.from_numpy(boxes).float(), strict=True):
            crop, x0, y0 = paste_mask(p, b, size, thresh)
            out.append(InstanceMask(crop.numpy(), x0, y0))
        return out

    def label_map(self, logits: Tensor, box: Letterbox) -> np.ndarray:
        """``[K, Hb, Wb]`` bucket logits -> ``[H, W]`` labels at the original image size."""
        vh, vw = box.valid_hw
        valid = logits[:, :vh, :vw].float()
        k = valid.shape[0]
        if k * box.orig_h * box.orig_w <= MAX_UPSAMPLE_ELEMENTS:
            up = F.interpolate(
                valid[None], size=(box.orig_h, box.orig_w), mode="bilinear", align_corners=False
            )
            return up[0].argmax(0).numpy().astype(np.uint8)
        # nearest neighbour by index (torch's rule: source = floor(dst * in / out)), uint8 only
        small = valid.argmax(0).numpy().astype(np.uint8)
        rows = np.minimum(np.arange(box.orig_h) * vh // box.orig_h, vh - 1)
        cols = np.minimum(np.arange(box.orig_w) * vw // box.orig_w, vw - 1)
        return small[rows[:, None], cols[None, :]]

    def _segment_result(self, logits: Tensor, it: _Item) -> dict[str, Any]:
        assert it.box is not None
        labels = self.label_map(logits, it.box)
        fmt = it.params.format or "rle"
        if fmt == "png":
            return {"media_type": "image/png", "data": label_map_png(labels)}
        if fmt == "overlay":
            with self.budget.hold(labels.size):
                image = self.decode(it.payload)
                data = overlay_png(image, labels, background=self.background)
            return {"media_type": "image/png", "data": data}
        return {"segments": segments_from_labels(labels, self.labels, self.background)}

    # -- the whole path ----------------------------------------------------------------------
    def handle(
        self, payloads: Sequence[bytes], params: Sequence[Mapping[str, Any] | None] | None = None
    ) -> list[dict[str, Any] | PipelineError]:
        """Answer N images in order; each slot is a result dict or that image's error."""
        return self.run(self.prepare(payloads, params))

    def prepare(
        self, payloads: Sequence[bytes], params: Sequence[Mapping[str, Any] | None] | None = None
    ) -> Prepared:
        """The CPU-side first half of :meth:`handle`: parse parameters, decode and preprocess.

        A server may prepare the next batch in another thread while :meth:`run` infers the
        current one (Pillow and numpy release the GIL for most of the work)."""
        if len(payloads) > self.config.max_images:
            raise TooManyImagesError(
                f"{len(payloads)} images in one request; the limit is {self.config.max_images}"
            )
        plist = list(params) if params is not None else [None] * len(payloads)
        if len(plist) != len(payloads):
            raise ValueError("one parameter set per image is needed")
        out = Prepared([None] * len(payloads))
        for i, (payload, raw_params) in enumerate(zip(payloads, plist, strict=True)):
            try:
                p = RequestParams.parse(raw_params)
                if p.format is not None and self.task != "segment" and not self.has_masks:
                    raise BadParameterError(
                        "format applies to segmentation and instance segmentation only"
                    )
                if p.format == "rle" and self.task == "detect":
                    p.format = None  # detections with RLE masks are the default answer
                with self.budget.hold(image_pixels(payload)):
                    arr, box = self.preprocess(self.decode(payload))
                self._check_input(arr)
            except PipelineError as exc:
                out.results[i] = exc
                continue
            out.groups.setdefault(arr.shape[:2], []).append(_Item(i, payload, arr, box, p))
        return out

    def _check_input(self, arr: np.ndarray) -> None:
        """The limit that matters is on the tensor the model sees: one of its input shapes, or
        (keep-ratio models) within the configured scale, padded."""
        h, w = arr.shape[:2]
        if self.task != "classify" and self.keep_ratio:
            d = max(1, int(self.pad_divisor))
            side = -(-max(self.input_size) // d) * d
            ok = h <= side and w <= side and min(h, w) <= -(-min(self.input_size) // d) * d
        else:
            ok = (h, w) in ([self.input_size] if self.task == "classify" else self.buckets)
        if not ok or arr.shape[2:] != (3,):
            raise RuntimeError(f"preprocessing produced {arr.shape}, beyond the model's input")

    def run(self, prepared: Prepared) -> list[dict[str, Any] | PipelineError]:
        """The second half of :meth:`handle`: infer each shape group, postprocess, in order."""
        results = prepared.results
        for hw, items in prepared.groups.items():
            valid = [it.box.valid_hw for it in items if it.box] if self.keep_ratio else None
            raw = self.infer(self._to_batch([it.tensor for it in items], valid))
            for it, res in zip(items, self.postprocess(raw, items, hw), strict=True):
                results[it.index] = res
        return [r for r in results if r is not None]
