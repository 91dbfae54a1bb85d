"""Fast CPU runtimes: ``bf16``, ``int8``, their accuracy gate, and ``auto``.

* ``bf16``: where the CPU computes bf16 natively (``avx512_bf16`` or AMX). Engine ``openvino``
  (the ONNX export compiled with ``INFERENCE_PRECISION_HINT=bf16``) when the optional
  ``openvino`` package is installed, else ``torch`` (the model with bf16 weights, bf16 input).
* ``int8``: the ONNX export quantized by ONNX Runtime and run by it (VNNI kernels where the CPU
  has them): dynamic by default (int8 weights, activations quantized per call), or static (QDQ,
  uint8 activations calibrated on SepViT-Shapes *train* images). The quantized graph is cached
  by content.
* ``auto``: tries the candidates this host supports (``/proc/cpuinfo`` flags), times each at the
  serving batch, gates each against fp32, and keeps the fastest that passes. The decision is
  cached under ``$SEPVIT_CACHE_DIR/auto/`` keyed by the model digest, the CPU flags, the thread
  count and the library versions, so a later load builds the winner directly.

The gate (:func:`gate`) compares task-level answers with eager fp32 on real images: the first
:data:`GATE_IMAGES` scenes of the SepViT-Shapes *validation* split for the model's task and
input size, plus the synthetic golden inputs. Classification needs top-1 agreement >= 99 % on
the images fp32 has decided (near-ties must agree in probability instead); detection and
segmentation use :func:`handlers.runtime.check_parity`'s matching rules.

``SEPVIT_CPU_FLAGS_MASK=avx512_bf16,amx_bf16`` hides flags from the host check (to see what
``auto`` picks on a host without them).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .runtime import (
    ParityReport,
    Runtime,
    RuntimeUnavailable,
    _cached_onnx,
    _onnxruntime,
    _stage_into_cache,
    check_parity,
    golden_inputs,
    model_digest,
)

__all__ = [
    "AUTO_CANDIDATES",
    "GATE_IMAGES",
    "auto_runtime",
    "bf16_runtime",
    "cpu_flags",
    "gate",
    "gate_inputs",
    "int8_runtime",
    "library_versions",
]

log = logging.getLogger(__name__)

GATE_IMAGES = 100  # classification: 99 % top-1 agreement allows one disagreement
GATE_IMAGES_DENSE = 24  # detection/segmentation scenes (each holds 1-6 objects)
QUICK_GATE_IMAGES = 16  # a cached decision is re-checked on the first images of the same set
CALIBRATION_IMAGES = 32
TIMING_BATCH = 8
# auto's candidates: label -> (runtime, the options it adds); each bf16 engine and int8 method
# is its own candidate, since which is fastest depends on the host (and on how busy it is)
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "eager": ("eager", {}),
    "onnxruntime": ("onnxruntime", {}),
    "bf16:openvino": ("bf16", {"bf16_engine": "openvino"}),
    "bf16:torch": ("bf16", {"bf16_engine": "torch"}),
    "int8:dynamic": ("int8", {"int8_method": "dynamic"}),
    "int8:static": ("int8", {"int8_method": "static"}),
}
AUTO_CANDIDATES = tuple(CANDIDATES)
TIMING_ROUNDS = 3
# reduced precision moves probabilities a little without changing answers: the gate is the
# task-level agreement (top-1, pixels, matched boxes), not the raw probabilities
GATE_TOLERANCES = {"prob": 1.0}
# a classification answer fp32 itself has not decided: top-1 within this probability of the
# runner-up (random weights give such near-ties on every image)
TIE = 0.01
CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "amx_bf16",
    "amx_int8",
)
_LOCK = threading.Lock()
Size = tuple[int, int]
Options = dict[str, Any]


# -- host ---------------------------------------------------------------------------------------
def cpu_flags(path: str | Path = "/proc/cpuinfo", mask: bool = True) -> dict[str, bool]:
    """The :data:`CPU_FLAGS` of the first processor, less ``$SEPVIT_CPU_FLAGS_MASK`` (unless
    ``mask`` is false)."""
    try:
        text = Path(path).read_text()
    except OSError:
        text = ""
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    have = set(line.partition(":")[2].split())
    hidden = os.environ.get("SEPVIT_CPU_FLAGS_MASK", "") if mask else ""
    masked = {f.strip() for f in hidden.split(",")}
    return {f: f in have and f not in masked for f in CPU_FLAGS}


def native_bf16(flags: dict[str, bool]) -> bool:
    return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))


def library_versions() -> dict[str, str]:
    out = {"torch": torch.__version__, "numpy": np.__version__}
    for mod in ("onnxruntime", "openvino"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except (ImportError, AttributeError):
            continue
    return out


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# -- engines ------------------------------------------------------------------------------------
def _openvino(onnx_path: Path, precision: str, threads: int, cache: Path | None) -> Any:
    import openvino as ov

    core = ov.Core()
    if cache is not None:  # compiled blobs: a later load skips OpenVINO's graph compilation
        try:
            cache.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache)})
        except (OSError, RuntimeError) as exc:
            log.warning("cannot use the OpenVINO cache %s: %s", cache, exc)
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
    local = threading.local()  # one infer request per calling thread

    def run(batch: Tensor) -> list[Tensor]:
        req = getattr(local, "req", None)
        if req is None:
            req = local.req = compiled.create_infer_request()
        res = req.infer({0: batch.detach().cpu().float().contiguous().numpy()})
        # the request reuses its output buffers: copy before the next call
        return [torch.from_numpy(np.array(res[o], dtype=np.float32)) for o in compiled.outputs]

    return run


def _torch_bf16(model: nn.Module) -> Callable[[Tensor], list[Tensor]]:
    from sepvit.export import exportable

    module = exportable(copy.deepcopy(model).cpu().to(torch.bfloat16)).eval()

    def run(batch: Tensor) -> list[Tensor]:
        with torch.inference_mode():
            out = module(batch.to(torch.bfloat16))
        return [t.float() for t in (out if isinstance(out, tuple | list) else [out])]

    return run


def bf16_runtime(
    model: nn.Module, img_size: Size, workdir: Path, root: Path, threads: int, options: Options
) -> Runtime:
    """bf16 inference; ``options["bf16_engine"]``: ``openvino`` (default when installed) or
    ``torch``. Refuses hosts without native bf16, where it would be emulated (slow)."""
    flags = cpu_flags()
    if not native_bf16(flags):
        raise RuntimeUnavailable("the bf16 runtime needs native bf16 (avx512_bf16 or amx_bf16)")
    engine = options.get("bf16_engine") or ("openvino" if _has("openvino") else "torch")
    if engine == "openvino":
        if not _has("openvino"):
            raise RuntimeUnavailable("bf16_engine openvino needs the 'openvino' package")
        cache = root / "onnx" if options.get("cache", True) else None
        path = _cached_onnx(model, img_size, workdir, cache)
        run = _openvino(path, "bf16", threads, root / "openvino" if cache else None)
    elif engine == "torch":
        run = _torch_bf16(model)
    else:
        raise ValueError(f"bf16_engine must be openvino or torch, got {engine!r}")
    return Runtime("bf16", run, torch.device("cpu"), {"engine": engine})


def calibration_batches(
    task: str, img_size: tuple[int, int], mean: list[float], std: list[float]
) -> list[np.ndarray]:
    """SepViT-Shapes *train* images (never the gate's validation images), batches of 8."""
    x = _dataset_images(task, img_size, "train", CALIBRATION_IMAGES, tuple(mean), tuple(std))
    return [x[i : i + 8].numpy() for i in range(0, len(x), 8)]


def _quantize(
    onnx_path: Path, out: Path, batches: list[np.ndarray], method: str, per_channel: bool
) -> None:  # the int8 graph of ``onnx_path``
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
    except ImportError as exc:
        raise RuntimeUnavailable("the int8 runtime needs the 'onnxruntime' package") from exc

    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    # the exporter's value_info pins some shapes to the export batch, which the quantizer's
    # shape inference then contradicts: drop them (shape inference rebuilds what it needs)
    graph = onnx.load(str(onnx_path))
    del graph.graph.value_info[:]
    clean = out.parent / "fp32.onnx"
    onnx.save(graph, str(clean), save_as_external_data=True, location="fp32.onnx.data")
    try:
        if method == "dynamic":
            quantize_dynamic(str(clean), str(out), weight_type=QuantType.QInt8)
            return

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter(batches)

            def get_next(self) -> dict[str, np.ndarray] | None:
                b = next(self.it, None)
                return None if b is None else {"images": b}

        quantize_static(
            str(clean),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
    finally:  # only the int8 graph is kept (and cached)
        clean.unlink(missing_ok=True)
        (out.parent / "fp32.onnx.data").unlink(missing_ok=True)


def int8_runtime(
    model: nn.Module, img_size: Size, workdir: Path, root: Path, threads: int, options: Options
) -> Runtime:
    """ONNX Runtime on the quantized ONNX export; ``options["int8_method"]``: ``dynamic``
    (default: int8 weights, activations quantized per call) or ``static`` (QDQ, activations
    calibrated on dataset images; slower than dynamic in ONNX Runtime on the hosts measured, see
    docs/performance.md); ``options["int8_per_channel"]`` (static only, default False) quantizes
    weights per output channel.

    OpenVINO 2026.4 does not compile ONNX Runtime's QDQ graphs of SepViT (its MatMul
    low-precision transformation fails on the attention's quantized concat), so int8 runs in
    ONNX Runtime only.
    """
    from sepvit import model_config

    method = options.get("int8_method", "dynamic")
    if method not in ("static", "dynamic"):
        raise ValueError(f"int8_method must be static or dynamic, got {method!r}")
    per_channel = bool(options.get("int8_per_channel", False))
    use_cache = options.get("cache", True)
    fp32 = _cached_onnx(model, img_size, workdir, root / "onnx" if use_cache else None)
    cfg = model_config(model)
    tag = f"int8-{method}-{per_channel}-{library_versions().get('onnxruntime')}"
    entry = root / "onnx-int8" / model_digest(model, img_size, tag)
    if use_cache and (entry / "model.onnx").is_file():
        path = entry / "model.onnx"
    else:
        staged = workdir / "int8"
        batches = (
            calibration_batches(cfg["task"], img_size, cfg["mean"], cfg["std"])
            if method == "static"
            else []
        )
        _quantize(fp32, staged / "model.onnx", batches, method, per_channel)
        path = _stage_into_cache(staged, entry) if use_cache else staged / "model.onnx"
    rt = _onnxruntime(path, threads, "int8")
    rt.info = {"engine": "onnxruntime", "method": method, "per_channel": per_channel}
    return rt


# -- the gate -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _dataset_images(
    task: str,
    img_size: tuple[int, int],
    split: str,
    n: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> Tensor:
    """``n`` SepViT-Shapes scenes of ``split`` for ``task``, resized to ``img_size`` and
    normalised like the pipeline does ([n, 3, H, W] float32)."""
    from PIL import Image

    from sepvit.data import ShapesDataset

    h, w = img_size
    ds = ShapesDataset(split, task, size=max(h, w), length=n)
    arrays = []
    for scene in ds:
        img = scene.image
        if img.shape[:2] != (h, w):
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))
        arrays.append(img)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def gate_inputs(model: nn.Module, img_size: tuple[int, int], quick: bool = False) -> Tensor:
    """Validation-split scenes for the model's task at ``img_size`` plus the golden inputs."""
    from sepvit import model_config

    cfg = model_config(model)
    n = GATE_IMAGES if cfg["task"] == "classify" else GATE_IMAGES_DENSE
    n = QUICK_GATE_IMAGES if quick else n
    real = _dataset_images(cfg["task"], img_size, "val", n, tuple(cfg["mean"]), tuple(cfg["std"]))
    return torch.cat([real, golden_inputs(img_size)])


def _chunked(rt: Runtime, size: int = 16) -> Runtime:
    """``rt`` applied ``size`` images at a time (bounded memory on large gate sets)."""

    def run(batch: Tensor) -> list[Tensor]:
        parts = [rt(batch[i : i + size]) for i in range(0, len(batch), size)]
        return [torch.cat(outs) for outs in zip(*parts, strict=True)]

    return Runtime(rt.name, run, rt.device, rt.info)


def gate(
    task: str,
    candidate: Runtime,
    reference: Runtime | list[Tensor],
    inputs: Tensor,
    decode: Callable[[list[Tensor]], Any] | None = None,
) -> ParityReport:
    """Task-level agreement of ``candidate`` with fp32 ``reference`` (a runtime, or its outputs
    on ``inputs`` already computed) on ``inputs`` (:func:`gate_inputs`).

    Detection and segmentation: :func:`check_parity`'s rules. Classification: top-1 agreement
    >= 99 % over the images fp32 itself has decided (top-1 probability ahead of the runner-up
    by more than :data:`TIE`); on near-ties, where fp32's own rounding could pick either class,
    the probabilities must instead agree within 0.02. The metrics also give the agreement over
    all images (``top1_all``) and the share of decided images (``decided``).
    """
    cand = _chunked(candidate)
    if isinstance(reference, Runtime):
        ref = _chunked(reference)
    else:
        ref = Runtime("eager", lambda _x: reference, torch.device("cpu"))
    if task != "classify":
        return check_parity(task, cand, ref, inputs, GATE_TOLERANCES, decode)
    pg, pw = cand(inputs)[0].float().softmax(-1), ref(inputs)[0].float().softmax(-1)
    top2 = pw.topk(min(2, pw.shape[-1]), dim=-1).values
    decided = (top2[:, 0] - top2[:, -1]) > TIE
    same = pg.argmax(-1) == pw.argmax(-1)
    diff = (pg - pw).abs().amax(-1)
    metrics = {
        "top1": float(same[decided].float().mean()) if decided.any() else 1.0,
        "top1_all": float(same.float().mean()),
        "decided": float(decided.float().mean()),
        "prob_ties": float(diff[~decided].max()) if (~decided).any() else 0.0,
    }
    tol = {"top1": 0.99, "prob_ties": 0.02}
    ok = metrics["top1"] >= tol["top1"] and metrics["prob_ties"] <= tol["prob_ties"]
    return ParityReport(candidate.name, ok, metrics, tol)


# -- auto ---------------------------------------------------------------------------------------
def _rates(runtimes: dict[str, Runtime], x: Tensor, threads: int) -> dict[str, float]:
    """Images/s of each runtime on batch ``x``: a warm-up call each, then
    :data:`TIMING_ROUNDS` rounds of one call per runtime, interleaved, so that a change of load
    on a shared host hits every candidate alike; the best call of each (the least disturbed)."""
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)  # eager and torch-bf16 candidates use torch's pool
    try:
        best = dict.fromkeys(runtimes, float("inf"))
        for _ in range(TIMING_ROUNDS):
            for name, rt in runtimes.items():
                t0 = time.perf_counter()
                rt(x)
                best[name] = min(best[name], time.perf_counter() - t0)
        return {name: round(len(x) / t, 2) for name, t in best.items()}
    finally:
        torch.set_num_threads(prev)


def _candidates(flags: dict[str, bool], options: dict[str, Any]) -> dict[str, str | None]:
    """Each candidate and why it is skipped on this host (None: it is tried)."""
    wanted = options.get("auto_candidates") or AUTO_CANDIDATES
    out: dict[str, str | None] = {}
    for name in wanted:
        if name not in AUTO_CANDIDATES:
            raise ValueError(f"auto_candidates: {name!r} is not one of {AUTO_CANDIDATES}")
        runtime, opts = CANDIDATES[name]
        why = None
        if runtime in ("onnxruntime", "int8") and not _has("onnxruntime"):
            why = "onnxruntime is not installed"
        elif runtime == "bf16" and not native_bf16(flags):
            why = "no native bf16 (avx512_bf16/amx_bf16 absent)"
        elif opts.get("bf16_engine") == "openvino" and not _has("openvino"):
            why = "openvino is not installed"
        elif runtime == "int8" and not (flags.get("avx2") or flags.get("avx512f")):
            why = "no AVX2/AVX-512 int8 kernels"
        out[name] = why
    return out


def _decision_key(
    model: nn.Module, img_size: tuple[int, int], threads: int, flags: dict[str, bool], opts: Any
) -> str:
    facts = {
        "model": model_digest(model, img_size, "auto"),
        "flags": sorted(f for f, on in flags.items() if on),
        "threads": threads or torch.get_num_threads(),
        "versions": library_versions(),
        "options": opts,
        "gate": [GATE_IMAGES, GATE_IMAGES_DENSE, GATE_TOLERANCES, TIE, TIMING_BATCH, TIMING_ROUNDS],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def _read_decision(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("chosen") in AUTO_CANDIDATES else None


@contextlib.contextmanager
def _cross_process_lock(path: Path | None) -> Iterator[None]:
    """An exclusive ``flock`` on ``<path>.lock`` (nothing where it cannot be had)."""
    if path is None:
        yield
        return
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except (ImportError, OSError) as exc:  # no flock, or an unwritable cache: search anyway
        log.warning("auto: no cross-process lock (%s)", exc)
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_decision(path: Path, decision: dict[str, Any]) -> None:
    try:  # an unwritable cache costs a new search next time, nothing more
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps(decision, indent=2))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot cache the auto decision in %s: %s", path.parent, exc)


def auto_runtime(
    model: nn.Module,
    img_size: tuple[int, int],
    build: Callable[[str, dict[str, Any]], Runtime],
    root: Path,
    threads: int,
    options: dict[str, Any],
) -> Runtime:
    """The fastest gated candidate (``build(runtime, options)`` makes one); see the module
    docstring.

    The returned runtime's ``info`` holds the decision: ``chosen``, ``img_per_s`` (the winner's
    speed at batch :data:`TIMING_BATCH`), per-candidate speed, gate metrics or the reason it was
    skipped or failed, ``cached`` and the host facts of the key.
    """
    from sepvit import model_config

    task = model_config(model)["task"]
    flags = cpu_flags()
    tried = _candidates(flags, options)
    opts = {k: v for k, v in options.items() if k != "cache"}
    key = _decision_key(model, img_size, threads, flags, opts)
    path = root / "auto" / f"{key}.json"
    use_cache = options.get("cache", True)
    # concurrent loads search once: threads of this process, and processes sharing the cache
    # (gateway and TorchServe workers), which then all serve the same candidate
    with _LOCK, _cross_process_lock(path if use_cache else None):
        decision = _read_decision(path) if use_cache else None
        if decision is not None:
            try:
                rt = _build(build, decision["chosen"])
            except Exception as exc:  # e.g. a package removed since: search again
                log.warning("cached auto choice %s cannot load (%s)", decision["chosen"], exc)
            else:
                rt.info = {**rt.info, **decision, "cached": True}
                log.info(
                    "runtime auto -> %s (%.1f img/s at batch %d, cached decision %s)",
                    rt.name,
                    decision["img_per_s"],
                    TIMING_BATCH,
                    path.name,
                )
                return rt
        rt, decision = _search(model, img_size, task, build, tried, threads)
        decision.update(flags=flags, versions=library_versions(), threads=threads, key=key)
        if use_cache:
            _write_decision(path, decision)
    rt.info = {**rt.info, **decision, "cached": False}
    return rt


def _search(
    model: nn.Module,
    img_size: tuple[int, int],
    task: str,
    build: Callable[[str, dict[str, Any]], Runtime],
    tried: dict[str, str | None],
    threads: int,
) -> tuple[Runtime, dict[str, Any]]:
    from .runtime import _eager

    t_start = time.perf_counter()
    eager = _eager(model)
    inputs = gate_inputs(model, img_size)
    want = _chunked(eager)(inputs)
    decode = _detect_decoder(model, img_size) if task == "detect" else None
    x = inputs[:TIMING_BATCH]
    results: dict[str, dict[str, Any]] = {}
    runtimes: dict[str, Runtime] = {}
    for name, skip in tried.items():  # build every candidate (and warm it up)
        if skip:
            results[name] = {"skipped": skip}
            continue
        t0 = time.perf_counter()
        try:
            rt = eager if name == "eager" else _build(build, name)
            rt(x)
        except Exception as exc:  # a candidate that cannot load or run is not chosen
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            log.info("auto: %s unavailable: %s", name, results[name]["error"])
            continue
        results[name] = {"build_seconds": round(time.perf_counter() - t0, 2)}
        runtimes[name] = rt
    for name, rate in _rates(runtimes, x, threads).items():
        results[name]["img_per_s"] = rate
    # then the gate, fastest first, until one passes (eager is the fp32 reference itself)
    chosen = None
    for name in sorted(runtimes, key=lambda n: -results[n]["img_per_s"]):
        if name == "eager":
            chosen = name
            break
        report = gate(task, runtimes[name], want, inputs, decode)
        results[name].update(gate_ok=report.ok, gate=report.metrics)
        log.info("auto: %s %.1f img/s, gate %s", name, results[name]["img_per_s"], report)
        if report.ok:
            chosen = name
            break
    if chosen is None:  # eager was excluded by auto_candidates and nothing else passed
        chosen, runtimes["eager"] = "eager", eager
        results.setdefault("eager", {})["img_per_s"] = None
    decision = {
        "chosen": chosen,
        "img_per_s": results[chosen].get("img_per_s"),
        "batch": TIMING_BATCH,
        "candidates": results,
        "gate_images": len(inputs),
        "search_seconds": round(time.perf_counter() - t_start, 2),
    }
    log.info(
        "runtime auto -> %s (%s img/s at batch %d; searched in %.1f s: %s)",
        chosen,
        decision["img_per_s"],
        TIMING_BATCH,
        decision["search_seconds"],
        {n: r.get("img_per_s", r.get("skipped") or r.get("error")) for n, r in results.items()},
    )
    return runtimes[chosen], decision


def _build(build: Callable[[str, dict[str, Any]], Runtime], label: str) -> Runtime:
    runtime, opts = CANDIDATES[label]
    rt = build(runtime, opts)
    rt.info = {**rt.info, "candidate": label}
    return rt


def _detect_decoder(model: nn.Module, img_size: tuple[int, int]) -> Callable[[list[Tensor]], Any]:
    def decode(raw: list[Tensor]) -> Any:
        return model.postprocess(raw[0], raw[1], img_size, max_detections=100)  # type: ignore[operator]

    return decode
