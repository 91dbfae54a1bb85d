"""Training on SepViT-Shapes: AdamW, linear warm-up then cosine decay, resumable checkpoints.

Determinism: the model is initialised from ``seed``; batch ``k`` holds train-split scenes
``k*B .. k*B + B - 1`` (every scene is a pure function of its index), and the torch RNG state
(dropout, drop-path) is saved with each checkpoint, so an interrupted run resumed from its state
file continues exactly where it stopped.

Files in ``output``: ``state.pt`` (model, optimiser, schedule, step, RNG; weights-only loadable),
``model.safetensors`` (native checkpoint with metadata and validation metrics, written at the end)
and ``log.jsonl`` (one line per logged step).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import load_native, read_metadata, save_checkpoint, unique_tmp
from .data.shapes import CLASSES, Scene, ShapesDataset
from .evaluate import evaluate
from .heads import get_head
from .registry import create_model, model_config, upgrade_native

__all__ = ["TrainConfig", "train"]


@dataclass
class TrainConfig:
    task: str = "classify"
    model: str = "sepvit_lite"
    head: str | None = None  # detect/segment head (None: the task's default, see sepvit.heads)
    img_size: int = 224
    batch_size: int = 32
    steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0
    drop_path_rate: float = 0.0
    seed: int = 0
    threads: int = 0  # 0: leave torch's default
    device: str = "cpu"
    init_from: str | None = None  # native checkpoint initialising the model (see _init_from)
    val_images: int = 200
    train_images: int = 0  # 0: a fresh scene for every sample; N: cycle over N scenes
    first_image: int = 0  # index of the first training scene (a continuation sees new scenes)
    curriculum_steps: int = 0  # 0: full difficulty throughout; see difficulty_at()
    style: int = 1  # scene recipe (sepvit.data.shapes.STYLES): 2 is domain-randomised
    replay: float = 0.0  # with style > 1: this fraction of scenes is style 1 (see _scene)
    stop_after: int = 0  # >0: save the state at this step and return (resume later to finish)
    log_every: int = 10
    save_every: int = 50
    half_output: bool = True
    model_args: dict[str, Any] = field(default_factory=dict)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith("win_tokens"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for ``step`` (0-based): linear warm-up, then cosine to ``min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def difficulty_at(step: int, index: int, cfg: TrainConfig) -> float:
    """Scene difficulty for sample ``index`` at ``step`` under the curriculum.

    With ``curriculum_steps = C`` the first 20 % of C are at difficulty 0 (light-grey filled
    shapes on flat grey: an untrained SepViT learns shapes there, and not on the full recipe);
    then a ramp rises linearly from 0 to 2 over the rest of C and each sample gets
    ``min(1, ramp * (0.5 + u))`` with ``u`` uniform per sample, so easy samples stay in the mix
    until step C. From step C on, and without a curriculum, every sample is at full difficulty
    (the validation/test distribution).
    """
    if cfg.curriculum_steps <= 0 or step >= cfg.curriculum_steps:
        return 1.0
    ramp = 2.0 * max(0.0, step / cfg.curriculum_steps - 0.2) / 0.8
    u = float(np.random.default_rng([cfg.seed, 7, index]).random())
    return min(1.0, ramp * (0.5 + u))


def collate(
    scenes: list[Scene], task: str, mean: list[float], std: list[float]
) -> tuple[Tensor, Any]:
    x = (
        torch.from_numpy(np.stack([s.image for s in scenes]))
        .permute(0, 3, 1, 2)
        .float()
        .div_(255.0)
    )
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    if task == "classify":
        return x, torch.tensor([s.label for s in scenes])
    if task == "detect":
        hw = x.shape[-2:]
        return x, [
            {
                "boxes": torch.tensor(s.boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(s.labels, dtype=torch.long),
                "masks": torch.from_numpy(np.stack(s.masks)).bool()
                if s.masks
                else torch.zeros((0, *hw), dtype=torch.bool),
            }
            for s in scenes
        ]
    maps = [s.segmentation for s in scenes if s.segmentation is not None]
    return x, torch.from_numpy(np.stack(maps)).long()


def _scene(ds: ShapesDataset, replay: ShapesDataset, i: int, step: int, cfg: TrainConfig) -> Scene:
    """Training scene ``i``: from ``ds``, or with probability ``cfg.replay`` (fixed per index)
    the style-1 scene of the same index, so a fine-tune on a new style keeps the old one."""
    if cfg.replay and np.random.default_rng([cfg.seed, 11, i]).random() < cfg.replay:
        return replay.get(i, difficulty_at(step, i, cfg))
    return ds.get(i, difficulty_at(step, i, cfg))


def _batches(
    ds: ShapesDataset, cfg: TrainConfig, start: int, mean: list[float], std: list[float]
) -> Iterator[tuple[Tensor, Any]]:
    """Render batches ``start..steps-1`` in a background thread (one batch ahead)."""
    q: Queue[tuple[Tensor, Any] | BaseException | None] = Queue(maxsize=2)
    replay = ShapesDataset("train", cfg.task, cfg.img_size, length=len(ds)) if cfg.replay else ds
    stop = threading.Event()

    def produce() -> None:
        try:
            _produce()
        except BaseException as exc:  # surfaced in the training thread, never a silent hang
            q.put(exc)

    def _produce() -> None:
        for k in range(start, cfg.steps):
            if stop.is_set():
                return
            first = cfg.first_image + k * cfg.batch_size
            idx: Sequence[int] = range(first, first + cfg.batch_size)
            if cfg.train_images:
                idx = [i % cfg.train_images for i in idx]
            scenes = [_scene(ds, replay, i, k, cfg) for i in idx]
            q.put(collate(scenes, cfg.task, mean, std))
        q.put(None)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise RuntimeError("rendering a training batch failed") from item
            yield item
    finally:
        stop.set()


def _build(cfg: TrainConfig, extra: dict[str, Any] | None = None) -> nn.Module:
    num_classes = len(CLASSES) + (1 if cfg.task == "segment" else 0)
    labels = list(CLASSES) if cfg.task != "segment" else ["background", *CLASSES]
    kwargs = {**cfg.model_args, **(extra or {})}
    if cfg.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    return create_model(
        cfg.model,
        task=cfg.task,
        head=cfg.head,
        num_classes=num_classes,
        img_size=cfg.img_size,
        label_names=labels,
        crop_pct=1.0,  # scenes are rendered full-frame: never crop them away
        **kwargs,
    )


def _is_legacy_state(cfg: TrainConfig, keys: Any) -> bool:
    """A detector/segmenter state dict in the version-1 (pre-OpenMMLab) module layout."""
    if cfg.task == "classify":
        return False
    spec = get_head(cfg.task, cfg.head)
    return spec.legacy is not None and spec.signature not in keys


def _current_layout(cfg: TrainConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A ``state.pt`` model state in the current module layout (version-1 runs are renamed)."""
    if not _is_legacy_state(cfg, state):
        return state
    legacy = get_head(cfg.task, cfg.head).legacy
    assert legacy is not None
    return legacy(state, dict(cfg.model_args))[0]


def _legacy_args(cfg: TrainConfig, model: nn.Module, state_path: Path) -> dict[str, Any]:
    """The model arguments that keep a version-1 detector or segmenter exact when this run
    continues one: its ``state.pt`` was written in that layout, or ``init_from`` is a version-1
    checkpoint of the same model. Empty otherwise."""
    spec = None if cfg.task == "classify" else get_head(cfg.task, cfg.head)
    if spec is None or spec.legacy is None:
        return {}
    if state_path.is_file():
        keys = torch.load(state_path, map_location="cpu", weights_only=True)["model"].keys()
        legacy = _is_legacy_state(cfg, keys)
    elif cfg.init_from:
        meta = read_metadata(cfg.init_from)
        legacy = (
            not meta.get("head")
            and (meta["task"], meta["variant"]) == (cfg.task, cfg.model)
            and meta["model_args"] == getattr(model, "model_args", None)
        )
    else:
        legacy = False
    if not legacy:
        return {}
    args = dict(getattr(model, "model_args", {}))
    return {k: v for k, v in spec.legacy({}, args)[1].items() if k not in args}


def _init_from(model: nn.Module, path: str) -> str:
    """Initialise ``model`` from a native checkpoint.

    A checkpoint of the same variant, task and head arguments initialises the whole model (a
    continuation, e.g. a longer run at full difficulty, or one with a backbone input option such
    as ``center_input``); any other initialises the backbone only
    (e.g. a dense model from the Shapes classifier), plus the feature pyramid when both are
    dense models with one (:func:`_pyramid_by_level`: a Mask R-CNN from the Shapes RetinaNet).
    The backbone family's checkpoint filter adapts resolution-dependent tables; tensors whose
    shapes still differ keep their init.
    """
    from .registry import filter_checkpoint, head_args

    state, meta = upgrade_native(*load_native(path))
    cfg = model_config(model)
    own_args = getattr(model, "model_args", None) or {}
    same = (meta["task"], meta["variant"], meta.get("head")) == (
        cfg["task"],
        cfg["variant"],
        cfg.get("head"),
    ) and head_args(meta["variant"], meta["model_args"]) == head_args(cfg["variant"], own_args)
    src, heads = state, {}
    if meta["task"] != "classify":  # a dense model: its backbone, and its heads if the same model
        src = {
            k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
        }
        heads = (
            {k: v for k, v in state.items() if not k.startswith("backbone.")}
            if same
            else _pyramid_by_level(path, model)
        )
    backbone = getattr(model, "backbone", None)
    target, prefix = (backbone, "backbone.") if isinstance(backbone, nn.Module) else (model, "")
    src_hw = tuple(meta["pretrained_cfg"]["input_size"][1:])
    wanted = {prefix + k: v for k, v in filter_checkpoint(src, target, src_hw).items()}
    wanted.update(heads)
    own = model.state_dict()
    wanted = {k: v.float() for k, v in wanted.items() if k in own and own[k].shape == v.shape}
    res = model.load_state_dict(wanted, strict=False)
    scope = set(own) if same else {k for k in own if k.startswith(prefix)}
    missing = len(set(res.missing_keys) & scope)
    what = "whole model" if same else "backbone" + (" and pyramid" if heads else "")
    return f"init {what} from {path}: {len(wanted)} tensors loaded, {missing} missing"


def _pyramid_by_level(path: str, model: nn.Module) -> dict[str, Tensor]:
    """The FPN of the dense model in ``path`` as ``model``'s ``neck`` tensors, each lateral and
    output conv renamed by the backbone level it reads (a RetinaNet's pyramid starts at C3, a
    Mask R-CNN's at C2). Empty unless both models have an FPN neck."""
    from .heads.fpn import FPN
    from .registry import load_model

    src, dst = getattr(load_model(path), "neck", None), getattr(model, "neck", None)
    if not (isinstance(src, FPN) and isinstance(dst, FPN)):
        return {}
    shift = src.start_level - dst.start_level
    out = {}
    for key, value in src.state_dict().items():
        kind, idx, rest = key.split(".", 2)
        if kind in ("lateral_convs", "fpn_convs") and int(idx) < src.num_used:
            out[f"neck.{kind}.{int(idx) + shift}.{rest}"] = value
    return out


def train(cfg: TrainConfig, output: str | Path, log: Any = sys.stderr) -> dict[str, Any]:
    """Train (or resume) into ``output``; returns the final validation metrics."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = _build(cfg)
    state_path = out / "state.pt"
    legacy = _legacy_args(cfg, model, state_path)
    if legacy:  # continuing a version-1 model: keep its head semantics
        model = _build(cfg, legacy)
    mcfg = model_config(model)
    if cfg.init_from:
        print(_init_from(model, cfg.init_from), file=log)
    model.to(device).train()
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))

    start, elapsed_before = 0, 0.0
    if state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        if st["config"] != _comparable(cfg):
            raise ValueError(
                f"{state_path} was written with another configuration; use a new output"
            )
        model.load_state_dict(_current_layout(cfg, st["model"]))
        opt.load_state_dict(st["optimizer"])
        torch.set_rng_state(st["rng"])
        if st.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["cuda_rng"])
        start, elapsed_before = int(st["step"]), float(st["elapsed"])
        print(f"resuming from step {start}/{cfg.steps}", file=log)

    ds = ShapesDataset(
        "train",
        cfg.task,
        cfg.img_size,
        length=cfg.first_image + cfg.steps * cfg.batch_size,
        seed=None,
        style=cfg.style,
    )
    t_start = time.perf_counter()
    ema: float | None = None
    seen = 0
    logf = (out / "log.jsonl").open("a")
    step = start
    for step, (x, target) in enumerate(_batches(ds, cfg, start, mcfg["mean"], mcfg["std"]), start):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        x = x.to(device)
        parts: dict[str, Tensor] = {}
        if cfg.task == "classify":
            loss = nn.functional.cross_entropy(model(x), target.to(device))
        else:
            if cfg.task == "detect":
                parts = model(x, [{k: v.to(device) for k, v in t.items()} for t in target])
            else:
                parts = model(x, target.to(device))
            loss = parts.pop("loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        value = float(loss.detach())
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        seen += x.shape[0]
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            dt = time.perf_counter() - t_start
            ips = seen / max(dt, 1e-9)
            eta = (cfg.steps - done) * cfg.batch_size / max(ips, 1e-9)
            rec = {
                "step": done,
                "loss": round(value, 5),
                "loss_ema": round(ema, 5),
                "lr": lr_at(step, cfg),
                "img_per_s": round(ips, 2),
                **{k: round(float(v.detach()), 5) for k, v in parts.items()},
            }
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            bar = "#" * int(30 * done / cfg.steps)
            print(
                f"[{bar:<30}] {done}/{cfg.steps} loss {ema:.4f} lr {rec['lr']:.2e} "
                f"{ips:.1f} img/s eta {eta / 60:.1f} min",
                file=log,
                flush=True,
            )
        stopping = 0 < cfg.stop_after <= done < cfg.steps
        if done % cfg.save_every == 0 or done == cfg.steps or stopping:
            _save_state(
                state_path, model, opt, done, cfg, elapsed_before + time.perf_counter() - t_start
            )
        if stopping:
            logf.close()
            print(f"stopped after step {done}; re-run without --stop-after to finish", file=log)
            return {"stopped_at": done}
    logf.close()
    elapsed = elapsed_before + time.perf_counter() - t_start

    model.eval()
    val = ShapesDataset("val", cfg.task, cfg.img_size, length=cfg.val_images, style=cfg.style)
    metrics = evaluate(model.cpu(), val)
    provenance = {
        "dataset": {
            "name": "SepViT-Shapes",
            "train_seed": ds.seed,
            "val_seed": val.seed,
            "style": cfg.style,
            "classes": list(CLASSES),
        },
        "train_config": asdict(cfg),
        "steps": cfg.steps,
        "images_seen": cfg.steps * cfg.batch_size,
        "train_seconds": round(elapsed, 1),
        "torch": torch.__version__,
        "val_metrics": {k: v for k, v in metrics.items() if not k.startswith("per_class")},
    }
    save_checkpoint(model, out / "model.safetensors", provenance=provenance, half=cfg.half_output)
    print(f"validation ({cfg.val_images} images): {provenance['val_metrics']}", file=log)
    return metrics


def export_state(state_path: str | Path, output: str | Path, half: bool = False) -> int:
    """Write the model of a training ``state.pt`` as a native checkpoint (e.g. to initialise
    other models from a run that is still going). Returns the state's step."""
    st = torch.load(state_path, map_location="cpu", weights_only=True)
    cfg = TrainConfig(**st["config"])
    model = _build(cfg)
    legacy = _legacy_args(cfg, model, Path(state_path))
    if legacy:
        model = _build(cfg, legacy)
    model.load_state_dict(_current_layout(cfg, st["model"]))
    provenance = {"exported_from": str(state_path), "steps": int(st["step"])}
    save_checkpoint(model, output, provenance=provenance, half=half)
    return int(st["step"])


def _comparable(cfg: TrainConfig) -> dict[str, Any]:
    """Config fields that must match for a resume (logging/saving cadence may change)."""
    d = asdict(cfg)
    for k in ("log_every", "save_every", "threads", "val_images", "device", "stop_after"):
        d.pop(k)
    for key, default in (("style", 1), ("replay", 0.0), ("head", None)):
        if d[key] == default:  # runs written before these options existed resume unchanged
            d.pop(key)
    return json.loads(json.dumps(d))


def _save_state(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    cfg: TrainConfig,
    elapsed: float,
) -> None:
    tmp = unique_tmp(path)
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "config": _comparable(cfg),
        },
        tmp,
    )
    tmp.replace(path)
    tmp.unlink(missing_ok=True)
