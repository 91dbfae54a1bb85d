"""Export to ONNX (with a parity check against eager) and TensorRT engine builds for GPU nodes.

Exported graphs contain the dense part of each task only, with a dynamic batch axis and the
spatial size fixed at export time (detection/segmentation serve fixed shape buckets):

========  =====================  ==========================================================
task      inputs                 outputs
========  =====================  ==========================================================
classify  ``images [B,3,H,W]``   ``logits [B,K]``
detect    ``images [B,3,H,W]``   ``cls_logits [B,N,K]``, ``box_deltas [B,N,4]`` (decode and
                                 NMS run in :meth:`sepvit.heads.RetinaNet.postprocess`)
segment   ``images [B,3,H,W]``   ``logits [B,K,H,W]``
========  =====================  ==========================================================

TensorRT engines are built from the ONNX file and cached on disk under a key made of the ONNX
file's hash, the GPU name and compute capability, the TensorRT version, the precision and the
shape profile, so a node never reuses an engine built for another GPU or profile. ``tensorrt`` is
imported lazily; on a machine without CUDA or TensorRT the build fails with
:class:`TensorRTUnavailable` and a message saying which is missing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ExportResult",
    "ParityError",
    "TensorRTUnavailable",
    "build_tensorrt_engine",
    "export_onnx",
    "export_outputs",
    "exportable",
    "onnx_parity",
    "require_tensorrt",
    "tensorrt_cache_key",
]

log = logging.getLogger(__name__)

ONNX_TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """An exported model disagrees with eager PyTorch beyond the tolerance."""


class TensorRTUnavailable(RuntimeError):
    """TensorRT engines need CUDA and the ``tensorrt`` package; one of them is missing."""


class _DetectRaw(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return self.model.forward_raw(images)  # type: ignore[operator]


def _task(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("task"):
        return str(cfg["task"])
    if hasattr(model, "forward_raw"):
        return "detect"
    return "classify"


def exportable(model: nn.Module) -> nn.Module:
    """The tensor-only module that is exported for ``model``'s task."""
    return _DetectRaw(model) if _task(model) == "detect" else model


def export_outputs(model: nn.Module) -> list[str]:
    """Output names of the exported graph for ``model``'s task."""
    task = _task(model)
    if task != "detect":
        return ["logits"]
    levels = getattr(model, "rpn_strides", None)
    if levels is not None:  # Mask R-CNN: the pyramid and the RPN outputs, per level
        names = ("feat", "objectness", "deltas")
        return [f"{n}_{i}" for n in names for i in range(len(levels))]
    return ["cls_logits", "box_deltas"]


@dataclass
class ExportResult:
    path: str
    task: str
    input_size: list[int]
    outputs: list[str]
    opset: int
    export_seconds: float
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    tolerance: float = ONNX_TOLERANCE

    @property
    def ok(self) -> bool:
        return all(v <= self.tolerance for v in self.max_abs_diff.values())

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ok": self.ok}, indent=2)


def _as_list(out: Any) -> list[Tensor]:
    return list(out) if isinstance(out, tuple | list) else [out]


def onnx_parity(
    model: nn.Module, onnx_path: str | Path, images: Tensor, threads: int | None = None
) -> dict[str, float]:
    """Max absolute difference per output between eager ``model`` and ONNX Runtime."""
    import onnxruntime as ort  # optional dependency, imported where used

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: images.numpy()})
    module = exportable(model).eval()
    with torch.no_grad():
        want = _as_list(module(images))
    names = [o.name for o in sess.get_outputs()]
    return {
        n: float((torch.from_numpy(g) - w).abs().max())
        for n, g, w in zip(names, got, want, strict=True)
    }


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    img_size: tuple[int, int] | None = None,
    opset: int = 18,
    check: bool = True,
    check_batch: int = 2,
    tolerance: float = ONNX_TOLERANCE,
) -> ExportResult:
    """Export ``model`` (fp32, eval mode) to ONNX with a dynamic batch axis.

    With ``check`` the exported graph is run in ONNX Runtime on a seeded random batch of
    ``check_batch`` images and compared with eager; :class:`ParityError` is raised when any output
    differs by more than ``tolerance``.
    """
    if check_batch < 2:
        raise ValueError("check_batch must be >= 2 (a batch of 1 would pin the batch axis)")
    model = copy.deepcopy(model).cpu().float().eval()  # never touch the caller's model
    if img_size is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        size = cfg.get("input_size", [3, 224, 224])
        img_size = (int(size[1]), int(size[2]))
    h, w = img_size
    example = torch.randn(check_batch, 3, h, w, generator=torch.Generator().manual_seed(0))
    module = exportable(model)
    out_names = export_outputs(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=["images"],
        output_names=out_names,
        dynamic_shapes=({0: batch},),  # positional: one spec per example input
        dynamo=True,
        opset_version=opset,
        verbose=False,
    )
    result = ExportResult(
        path=str(path),
        task=_task(model),
        input_size=[3, h, w],
        outputs=out_names,
        opset=opset,
        export_seconds=round(time.perf_counter() - t0, 2),
        tolerance=tolerance,
    )
    if check:
        result.max_abs_diff = onnx_parity(model, path, example)
        if not result.ok:
            raise ParityError(
                f"ONNX export of {path.name} differs from eager: "
                f"{result.max_abs_diff} > {tolerance}"
            )
    return result


# ---------------------------------------------------------------------------------------------
# TensorRT
# ---------------------------------------------------------------------------------------------
def require_tensorrt() -> Any:
    """The ``tensorrt`` module; :class:`TensorRTUnavailable` without a CUDA GPU or TensorRT."""
    if not torch.cuda.is_available():
        raise TensorRTUnavailable(
            "TensorRT engines need a CUDA GPU, and torch.cuda.is_available() is False on this "
            "machine (CPU-only torch build or no visible GPU). Use the 'eager' or 'onnxruntime' "
            "runtime here, or build the engine on a GPU node."
        )
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "CUDA is available but the 'tensorrt' Python package is not installed "
            "(pip install tensorrt, matching the node's CUDA major version)."
        ) from exc
    return trt


def tensorrt_cache_key(
    onnx_path: str | Path,
    *,
    gpu_name: str,
    compute_capability: tuple[int, int],
    trt_version: str,
    precision: str,
    profile: tuple[int, int, int],
    img_size: tuple[int, int],
) -> str:
    """File-name-safe cache key for an engine; any change of input, GPU or settings changes it."""
    digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()[:16]
    parts = {
        "onnx": digest,
        "gpu": gpu_name,
        "sm": f"{compute_capability[0]}{compute_capability[1]}",
        "trt": trt_version,
        "precision": precision,
        "batch": "-".join(map(str, profile)),
        "hw": f"{img_size[0]}x{img_size[1]}",
    }
    raw = json.dumps(parts, sort_keys=True)
    slug = "".join(c if c.isalnum() else "-" for c in gpu_name.lower()).strip("-")
    tag = hashlib.sha256(raw.encode()).hexdigest()[:12]
    return f"{Path(onnx_path).stem}.{slug}.sm{parts['sm']}.{precision}.b{parts['batch']}.{tag}"


def build_tensorrt_engine(
    onnx_path: str | Path,
    cache_dir: str | Path,
    *,
    precision: str = "fp16",
    profile: tuple[int, int, int] = (1, 8, 32),
    img_size: tuple[int, int] = (224, 224),
    workspace_gib: float = 4.0,
) -> Path:
    """Build (or reuse from ``cache_dir``) a serialized TensorRT engine for an ONNX file.

    ``profile`` is the (min, opt, max) batch size of the optimisation profile. ``precision`` is
    ``fp32``, ``fp16`` or ``bf16``. Raises :class:`TensorRTUnavailable` without CUDA/TensorRT.
    """
    if precision not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
    if not (1 <= profile[0] <= profile[1] <= profile[2]):
        raise ValueError(f"profile must satisfy 1 <= min <= opt <= max, got {profile}")
    trt = require_tensorrt()
    props = torch.cuda.get_device_properties(0)
    key = tensorrt_cache_key(
        onnx_path,
        gpu_name=props.name,
        compute_capability=(props.major, props.minor),
        trt_version=trt.__version__,
        precision=precision,
        profile=profile,
        img_size=img_size,
    )
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    engine_path = cache / f"{key}.engine"
    if engine_path.is_file():
        log.info("TensorRT engine cache hit: %s", engine_path)
        return engine_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    opt_profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    h, w = img_size
    opt_profile.set_shape(name, (profile[0], 3, h, w), (profile[1], 3, h, w), (profile[2], 3, h, w))
    config.add_optimization_profile(opt_profile)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path}")
    from .checkpoint import unique_tmp

    tmp = unique_tmp(engine_path)
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)
    log.info("built TensorRT engine %s in %.1fs", engine_path, time.perf_counter() - t0)
    return engine_path
