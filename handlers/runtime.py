"""Inference runtimes behind one call: ``runtime(batch [B,3,H,W] float32) -> list[Tensor]``.

* ``eager``: the PyTorch model (``inference_mode``).
* ``onnxruntime``: the model exported by :func:`sepvit.export.export_onnx`, CPU provider (CUDA
  provider first when available).
* ``tensorrt``: an engine built by :func:`sepvit.export.build_tensorrt_engine` (GPU nodes).
* ``bf16``, ``int8`` and ``auto`` (the fastest gated one for this host): see
  :mod:`handlers.cpu_runtimes`.

A non-eager runtime is checked at load time against eager on golden inputs
(:func:`check_parity`); the caller decides whether a mismatch falls back to eager or refuses to
load. Optional dependencies (onnxruntime, openvino, tensorrt) are imported only when that runtime
is built.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .params import RUNTIMES

__all__ = [
    "ParityReport",
    "Runtime",
    "RuntimeUnavailable",
    "build_runtime",
    "check_parity",
    "golden_inputs",
    "model_digest",
]

log = logging.getLogger(__name__)

# reduced-precision runtimes: checked on real images by handlers.cpu_runtimes.gate
GATED = ("bf16", "int8")


class RuntimeUnavailable(RuntimeError):
    """The requested runtime cannot run on this machine (missing package or GPU)."""


@dataclass
class Runtime:
    name: str
    run: Callable[[Tensor], list[Tensor]]
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)  # engine, auto's decision, ...

    def __call__(self, batch: Tensor) -> list[Tensor]:
        return self.run(batch)


def _eager(model: nn.Module) -> Runtime:
    from sepvit.export import exportable

    module = exportable(model).eval()
    device = next(model.parameters()).device

    def run(batch: Tensor) -> list[Tensor]:
        with torch.inference_mode():
            out = module(batch.to(device))
        return [t.float() for t in (out if isinstance(out, tuple | list) else [out])]

    return Runtime("eager", run, device)


def model_digest(model: nn.Module, img_size: tuple[int, int], extra: str = "") -> str:
    """A content key for an export of ``model`` at ``img_size``: weights, graph class, versions.

    Two models with the same class, weights and buffers export to the same graph, so a cached
    export can be reused across restarts and worker processes. The parity check at load still
    runs on every load, so a stale or corrupt cache entry can never serve silently.
    """
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}|{img_size}|".encode())
    h.update(f"torch={torch.__version__}|{extra}|".encode())
    for key, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        # flattened first: a 0-dim tensor (BatchNorm's num_batches_tracked) has no byte view
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def _cached_onnx(
    model: nn.Module, img_size: tuple[int, int], workdir: Path, cache: Path | None
) -> Path:
    """The model's ONNX export: from ``cache`` when present, else exported (and cached).

    An entry is a directory ``<digest>/`` holding ``model.onnx`` and its external weights file;
    it is staged next to its final name and renamed into place, so concurrent workers never see
    a half-written entry (the loser of a race keeps the winner's copy).
    """
    from sepvit.export import export_onnx

    out = workdir / "export"
    if cache is None:
        export_onnx(model, out / "model.onnx", img_size=img_size, check=False)
        return out / "model.onnx"
    entry = cache / model_digest(model, img_size, "onnx")
    if (entry / "model.onnx").is_file():
        log.info("onnx export from cache %s", entry)
        return entry / "model.onnx"
    export_onnx(model, out / "model.onnx", img_size=img_size, check=False)
    return _stage_into_cache(out, entry)


def _stage_into_cache(staged_dir: Path, entry: Path) -> Path:
    """Copy ``staged_dir`` (holding ``model.onnx``) to cache ``entry`` atomically; the path of the
    cached ``model.onnx``, or the staged one when the cache cannot be written."""
    try:  # an unwritable cache costs a re-export next time, nothing more
        entry.parent.mkdir(parents=True, exist_ok=True)
        staged = entry.parent / f".{entry.name}.{os.getpid()}.{threading.get_ident()}"
        shutil.copytree(staged_dir, staged)
        try:
            os.rename(staged, entry)
        except OSError:  # another worker cached it first
            shutil.rmtree(staged, ignore_errors=True)
            if not (entry / "model.onnx").is_file():
                raise
    except OSError as exc:
        log.warning("cannot cache the onnx export in %s: %s", entry.parent, exc)
        return staged_dir / "model.onnx"
    return entry / "model.onnx"


def _onnxruntime(path: Path, threads: int, name: str = "onnxruntime") -> Runtime:
    """An ONNX Runtime session of the graph at ``path`` (CUDA provider first when available)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RuntimeUnavailable(f"the {name} runtime needs the 'onnxruntime' package") from exc

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    providers = [
        p
        for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
        if p in ort.get_available_providers()
    ]
    sess = ort.InferenceSession(str(path), opts, providers=providers)
    input_name = sess.get_inputs()[0].name

    def run(batch: Tensor) -> list[Tensor]:
        outs = sess.run(None, {input_name: batch.detach().cpu().float().numpy()})
        return [torch.from_numpy(np.asarray(o)) for o in outs]

    return Runtime(name, run, torch.device("cpu"))


def _tensorrt(
    model: nn.Module,
    img_size: tuple[int, int],
    workdir: Path,
    cache_dir: Path,
    options: dict[str, Any],
) -> Runtime:
    from sepvit.export import TensorRTUnavailable, build_tensorrt_engine

    try:
        import tensorrt as trt  # noqa: F401  (checked before the export work)
    except ImportError as exc:
        raise RuntimeUnavailable("the tensorrt runtime needs the 'tensorrt' package") from exc
    if not torch.cuda.is_available():
        raise RuntimeUnavailable("the tensorrt runtime needs a CUDA GPU")
    onnx_cache = cache_dir / "onnx" if options.get("cache", True) else None
    onnx_path = _cached_onnx(model, img_size, workdir, onnx_cache)
    try:
        engine_path = build_tensorrt_engine(
            onnx_path,
            cache_dir / "tensorrt",
            precision=options.get("precision", "fp16"),
            profile=tuple(options.get("batch_profile", (1, 8, 32))),
            img_size=img_size,
        )
    except TensorRTUnavailable as exc:
        raise RuntimeUnavailable(str(exc)) from exc
    return _tensorrt_runner(engine_path)


def _tensorrt_runner(engine_path: Path) -> Runtime:  # pragma: no cover - needs a GPU
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    device = torch.device("cuda")
    stream = torch.cuda.Stream()

    def run(batch: Tensor) -> list[Tensor]:
        x = batch.to(device, torch.float32).contiguous()
        context.set_input_shape(inputs[0], tuple(x.shape))
        context.set_tensor_address(inputs[0], x.data_ptr())
        outs = []
        for n in outputs:
            shape = tuple(context.get_tensor_shape(n))
            t = torch.empty(shape, device=device, dtype=torch.float32)
            context.set_tensor_address(n, t.data_ptr())
            outs.append(t)
        with torch.cuda.stream(stream):
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return [o.float() for o in outs]

    return Runtime("tensorrt", run, device)


def build_runtime(
    name: str,
    model: nn.Module,
    img_size: tuple[int, int],
    *,
    workdir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    threads: int = 0,
    options: dict[str, Any] | None = None,
) -> Runtime:
    """Build runtime ``name`` for ``model`` at input size ``img_size``.

    ``cache_dir`` (default ``$SEPVIT_CACHE_DIR``, else ``.cache``) keeps exports between loads:
    ONNX graphs under ``onnx/`` keyed by :func:`model_digest`, int8 graphs under ``onnx-int8/``,
    OpenVINO compiled blobs under ``openvino/``, ``auto``'s decisions under ``auto/``, TensorRT
    engines under ``tensorrt/``. ``options["cache"] = False`` turns these caches off (TensorRT's
    excepted). ``auto`` returns the winning runtime: its ``name`` says which, its ``info`` why.
    """
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; expected one of {RUNTIMES}")
    if name == "eager":
        return _eager(model)
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="sepvit-runtime-"))
    work.mkdir(parents=True, exist_ok=True)
    root = Path(cache_dir or os.environ.get("SEPVIT_CACHE_DIR") or ".cache")
    opts = options or {}
    if name == "onnxruntime":
        cache = root / "onnx" if opts.get("cache", True) else None
        if importlib.util.find_spec("onnxruntime") is None:
            raise RuntimeUnavailable("the onnxruntime runtime needs the 'onnxruntime' package")
        return _onnxruntime(_cached_onnx(model, img_size, work, cache), threads)
    if name == "tensorrt":
        return _tensorrt(model, img_size, work, root, opts)
    from . import cpu_runtimes

    if name == "bf16":
        return cpu_runtimes.bf16_runtime(model, img_size, work, root, threads, opts)
    if name == "int8":
        return cpu_runtimes.int8_runtime(model, img_size, work, root, threads, opts)

    def build(candidate: str, extra: dict[str, Any]) -> Runtime:
        return build_runtime(
            candidate,
            model,
            img_size,
            workdir=work,
            cache_dir=root,
            threads=threads,
            options={**opts, **extra},
        )

    return cpu_runtimes.auto_runtime(model, img_size, build, root, threads, opts)


def golden_inputs(img_size: tuple[int, int], batch: int = 4, seed: int = 0) -> Tensor:
    """Deterministic check inputs: smooth random fields, the scale of normalised images."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(
        batch, 3, max(2, img_size[0] // 16), max(2, img_size[1] // 16), generator=g
    )
    return torch.nn.functional.interpolate(
        coarse, size=img_size, mode="bilinear", align_corners=False
    )


@dataclass
class ParityReport:
    runtime: str
    ok: bool
    metrics: dict[str, float]
    tolerances: dict[str, float]

    def __str__(self) -> str:
        verdict = "agrees with eager" if self.ok else "DISAGREES with eager"
        return f"{self.runtime} {verdict}: {self.metrics} (tolerances {self.tolerances})"


def check_parity(
    task: str,
    candidate: Runtime,
    reference: Runtime,
    inputs: Tensor,
    tolerances: dict[str, float] | None = None,
    decode: Callable[[list[Tensor]], Any] | None = None,
) -> ParityReport:
    """Compare ``candidate`` against eager ``reference`` on ``inputs``.

    Task-level agreement rather than raw tensors, since reduced precision (fp16 TensorRT) moves
    logits a little without changing answers:

    * classify: top-1 agreement >= 0.99 and max |softmax diff| <= 0.02;
    * segment: per-pixel argmax agreement >= 0.99 (mask IoU of the label maps);
    * detect: each of the reference's top 20 decoded detections (``decode(raw) -> [{"boxes",
      "labels"}]``) is matched to the candidate's best-overlapping detection of the same label:
      mean IoU >= 0.95, and >= 99 % of them found at IoU >= 0.5; with instance masks
      (``mask_probs``), the matched masks' mean |probability difference| <= 0.02.
    """
    tol = {
        "top1": 0.99,
        "prob": 0.02,
        "pixel": 0.99,
        "box_iou": 0.95,
        "mask_prob": 0.02,
        **(tolerances or {}),
    }
    got = candidate(inputs)
    want = reference(inputs)
    metrics: dict[str, float] = {}
    if task == "classify":
        pg, pw = got[0].softmax(-1), want[0].softmax(-1)
        metrics["top1"] = float((pg.argmax(-1) == pw.argmax(-1)).float().mean())
        metrics["prob"] = float((pg - pw).abs().max())
        ok = metrics["top1"] >= tol["top1"] and metrics["prob"] <= tol["prob"]
    elif task == "segment":
        metrics["pixel"] = float((got[0].argmax(1) == want[0].argmax(1)).float().mean())
        ok = metrics["pixel"] >= tol["pixel"]
    elif task == "detect":
        if decode is None:
            raise ValueError("detection parity needs a decode function")
        from sepvit.ops import box_iou

        ious, same, mask_diff = [], [], []
        for dg, dw in zip(decode(got), decode(want), strict=True):
            # each of the reference's top detections against the candidate's detections of the
            # same label: several labels can share one box, and near-tied scores may reorder
            n = min(len(dw["boxes"]), 20)
            if n == 0:
                same.append(float(len(dg["boxes"]) == 0))
                continue
            iou = box_iou(dw["boxes"][:n], dg["boxes"])  # [n, 0] when the candidate found none
            for i in range(n):
                hits = dg["labels"] == dw["labels"][i]
                best = float(iou[i][hits].max()) if hits.any() else 0.0
                ious.append(best)
                same.append(float(best >= 0.5))
                if "mask_probs" in dw and best >= 0.5:  # instance masks of the matched box
                    j = int(torch.nonzero(hits).squeeze(1)[iou[i][hits].argmax()])
                    diff = dg["mask_probs"][j] - dw["mask_probs"][i]
                    mask_diff.append(float(diff.abs().mean()))
        metrics["box_iou"] = float(np.mean(ious)) if ious else 1.0
        metrics["labels"] = float(np.mean(same)) if same else 1.0
        ok = metrics["box_iou"] >= tol["box_iou"] and metrics["labels"] >= tol["top1"]
        if mask_diff:
            metrics["mask_prob"] = float(np.mean(mask_diff))
            ok = ok and metrics["mask_prob"] <= tol["mask_prob"]
    else:
        raise ValueError(f"unknown task {task!r}")
    return ParityReport(
        candidate.name, ok, metrics, {k: tol[k] for k in tol if k in metrics or k == "top1"}
    )
