"""Training loop: loss goes down on a tiny fixed set for every task; resume; CLI; schedule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sepvit import create_model, read_metadata
from sepvit.cli.train import main as train_main
from sepvit.train import TrainConfig, lr_at, train

SMALL = {
    "classify": {},
    "detect": {"fpn_channels": 32, "head_channels": 32, "head_convs": 1},
    "segment": {"fpn_channels": 32, "head_channels": 16},
    "mask_rcnn": {
        "fpn_channels": 32,
        "fc_channels": 64,
        "anchor_scale": 4.0,
        "roi_batch": 64,
        "rpn_train_nms_pre": 300,
    },
}
HEAD_TASKS = {"mask_rcnn": "detect"}  # SMALL keys that name a head rather than a task


def _cfg(task: str, steps: int, **kw: object) -> TrainConfig:
    base = dict(
        task=HEAD_TASKS.get(task, task),
        head=task if task in HEAD_TASKS else None,
        img_size=64,
        batch_size=4,
        steps=steps,
        lr=2e-3,
        warmup_steps=1,
        train_images=4,
        val_images=4,
        log_every=1,
        save_every=5,
        model_args=SMALL[task],
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("task", ["classify", "detect", "segment", "mask_rcnn"])
def test_training_reduces_loss_on_a_fixed_batch(tmp_path: Path, task: str) -> None:
    cfg = _cfg(task, 14)
    metrics = train(cfg, tmp_path, log=open("/dev/null", "w"))  # noqa: SIM115
    losses = _losses(tmp_path)
    assert len(losses) == 14
    assert sum(losses[-3:]) / 3 < 0.75 * sum(losses[:3]) / 3, losses
    meta = read_metadata(tmp_path / "model.safetensors")
    assert meta["provenance"]["steps"] == 14 and meta["task"] == cfg.task
    assert meta["provenance"]["dataset"]["train_seed"] == 1000
    assert metrics["task"] == cfg.task
    model = create_model("sepvit_lite", task=cfg.task, checkpoint=tmp_path / "model.safetensors")
    if task == "mask_rcnn":  # every loss term falls, and the model comes back with its head
        log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
        for term in ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"):
            first, last = log[0][term], sum(r[term] for r in log[-3:]) / 3
            assert last < first, (term, first, last)
        assert meta["head"] == "mask_rcnn" and type(model).__name__ == "MaskRCNN"
        assert "mask_mAP50" in metrics and "mask_mAP50" in meta["provenance"]["val_metrics"]


def test_same_seed_same_weights_and_config_guard(tmp_path: Path) -> None:
    null = open("/dev/null", "w")  # noqa: SIM115
    one, two = tmp_path / "one", tmp_path / "two"
    train(_cfg("classify", 6, train_images=0), one, log=null)
    train(_cfg("classify", 6, train_images=0), two, log=null)
    a = torch.load(one / "state.pt", weights_only=True)["model"]
    b = torch.load(two / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # deterministic given the seed
    # resuming a run directory with a different recipe is refused
    with pytest.raises(ValueError, match="another configuration"):
        train(_cfg("classify", 12, train_images=0), one, log=null)


@pytest.mark.parametrize("task", ["classify", "mask_rcnn"])  # Mask R-CNN: random sampling too
def test_resume_from_midway_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str
) -> None:
    null = open("/dev/null", "w")  # noqa: SIM115
    ref = tmp_path / "ref"
    train(_cfg(task, 8, train_images=0, save_every=4), ref, log=null)
    import sepvit.train as tr

    run = tmp_path / "run"
    real = tr._save_state
    calls = {"n": 0}

    def crash_after_first_save(*a: object, **k: object) -> None:
        real(*a, **k)  # type: ignore[arg-type]
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(tr, "_save_state", crash_after_first_save)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(task, 8, train_images=0, save_every=4), run, log=null)
    monkeypatch.setattr(tr, "_save_state", real)
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 4
    train(_cfg(task, 8, train_images=0, save_every=4), run, log=null)
    a = torch.load(ref / "state.pt", weights_only=True)["model"]
    b = torch.load(run / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_schedule_warmup_then_cosine() -> None:
    cfg = TrainConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10, steps=110)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(
        1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.5))
    )
    assert lr_at(110, cfg) == pytest.approx(1e-5)


def test_train_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = train_main(
        [
            "--task",
            "segment",
            "--img-size",
            "64",
            "--batch-size",
            "2",
            "--steps",
            "2",
            "--warmup-steps",
            "1",
            "--val-images",
            "2",
            "--output",
            str(tmp_path),
            "--model-args",
            json.dumps(SMALL["segment"]),
        ]
    )
    assert rc == 0
    assert "mIoU" in capsys.readouterr().out


def test_a_failing_batch_stops_training_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sepvit.train as tr

    def boom(*a: object, **k: object) -> None:
        raise OSError("renderer exploded")

    monkeypatch.setattr(tr, "collate", boom)
    with pytest.raises(RuntimeError, match="rendering a training batch failed"):
        train(_cfg("classify", 3), tmp_path, log=open("/dev/null", "w"))  # noqa: SIM115


def test_curriculum_schedule() -> None:
    from sepvit.train import TrainConfig, difficulty_at

    cfg = TrainConfig(curriculum_steps=1000)
    assert all(difficulty_at(s, i, cfg) == 0.0 for s in (0, 199) for i in range(50))
    mid = [difficulty_at(600, i, cfg) for i in range(400)]
    assert 0.0 < min(mid) < 1.0 and max(mid) == 1.0  # easy samples stay in the mix
    assert all(difficulty_at(1000, i, cfg) == 1.0 for i in range(50))
    assert difficulty_at(0, 0, TrainConfig()) == 1.0  # no curriculum: full difficulty


def test_stop_after_then_resume_and_export_state(tmp_path: Path) -> None:
    from sepvit.train import export_state

    null = open("/dev/null", "w")  # noqa: SIM115
    ref, run = tmp_path / "ref", tmp_path / "run"
    train(_cfg("classify", 6, train_images=0, save_every=3, curriculum_steps=4), ref, log=null)
    stop = _cfg("classify", 6, train_images=0, stop_after=2, curriculum_steps=4)
    out = train(stop, run, log=null)
    assert out == {"stopped_at": 2} and not (run / "model.safetensors").exists()
    assert export_state(run / "state.pt", tmp_path / "mid.safetensors") == 2
    mid = create_model("sepvit_lite", task="classify", checkpoint=tmp_path / "mid.safetensors")
    state = torch.load(run / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(v.float(), state[k].float()) for k, v in mid.state_dict().items())
    prov = read_metadata(tmp_path / "mid.safetensors")["provenance"]
    assert (prov["steps"], prov["images_seen"], prov["train_config"]["curriculum_steps"]) == (
        2,
        8,
        4,
    )
    assert export_state(run / "state.pt", tmp_path / "half.safetensors", half=True) == 2
    half = create_model("sepvit_lite", task="classify", checkpoint=tmp_path / "half.safetensors")
    assert all(torch.equal(v, state[k].half().float()) for k, v in half.state_dict().items())
    train(_cfg("classify", 6, train_images=0, curriculum_steps=4), run, log=null)  # finish
    a = torch.load(ref / "state.pt", weights_only=True)["model"]
    b = torch.load(run / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # identical to the uninterrupted run


def test_init_from_same_model_continues_whole_model_other_task_takes_backbone(
    tmp_path: Path,
) -> None:
    from sepvit.checkpoint import load_native
    from sepvit.train import _build, _init_from

    null = open("/dev/null", "w")  # noqa: SIM115
    train(_cfg("detect", 2), tmp_path / "det", log=null)
    src, _ = load_native(tmp_path / "det" / "model.safetensors")

    same = _build(_cfg("detect", 2))
    msg = _init_from(same, str(tmp_path / "det" / "model.safetensors"))
    assert msg.startswith("init whole model") and f"{len(src)} tensors loaded, 0 missing" in msg
    own = same.state_dict()
    assert all(torch.equal(own[k], v.float()) for k, v in src.items())  # heads included

    # another task: the detector's backbone only (the pyramid moves within a task, below)
    other = _build(_cfg("segment", 2))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    msg = _init_from(other, str(tmp_path / "det" / "model.safetensors"))
    assert msg.startswith("init backbone") and "pyramid" not in msg, msg
    after = other.state_dict()
    for k, v in after.items():
        if k.startswith("backbone.") and k in src:
            assert torch.equal(v, src[k].float()), k
        elif not k.startswith("backbone."):
            assert torch.equal(v, before[k]), k  # the segmentation FPN and head keep their init

    # the same task with other head arguments is not the same model: backbone only
    wider = _build(_cfg("detect", 2, model_args={**SMALL["detect"], "head_channels": 48}))
    assert _init_from(wider, str(tmp_path / "det" / "model.safetensors")).startswith(
        "init backbone"
    )
    assert "pyramid" not in _init_from(wider, str(tmp_path / "det" / "model.safetensors"))

    # another head of the same task (a Mask R-CNN from the RetinaNet): its pyramid too, each
    # conv by the backbone level it reads (the RetinaNet's C3-C5 are the Mask R-CNN's 1-3)
    mask = _build(_cfg("mask_rcnn", 2))
    before = {k: v.clone() for k, v in mask.state_dict().items()}
    msg = _init_from(mask, str(tmp_path / "det" / "model.safetensors"))
    assert msg.startswith("init backbone and pyramid"), msg
    after = mask.state_dict()
    for kind in ("lateral_convs", "fpn_convs"):
        for i in range(3):
            for p in ("conv.weight", "conv.bias"):
                want = src[f"neck.{kind}.{i}.{p}"].float()
                assert torch.equal(after[f"neck.{kind}.{i + 1}.{p}"], want), (kind, i, p)
        assert torch.equal(
            after[f"neck.{kind}.0.conv.weight"], before[f"neck.{kind}.0.conv.weight"]
        )
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith(("rpn_", "roi_")))


def test_first_image_offsets_the_training_stream() -> None:
    from sepvit.data.shapes import ShapesDataset
    from sepvit.train import _batches

    cfg = _cfg("classify", 2, train_images=0, batch_size=2)
    ds = ShapesDataset("train", "classify", 64, length=100, seed=None)
    mean, std = [0.5] * 3, [0.25] * 3
    plain = [x for x, _ in _batches(ds, cfg, 0, mean, std)]
    shifted = [
        x
        for x, _ in _batches(
            ds, _cfg("classify", 2, train_images=0, batch_size=2, first_image=2), 0, mean, std
        )
    ]
    assert torch.equal(plain[1], shifted[0])  # image 2 opens the shifted stream
    assert not torch.equal(plain[0], shifted[0])


def test_a_continuation_past_the_first_images_trains_to_the_end(tmp_path: Path) -> None:
    # the stream must reach first_image + steps * batch_size (it once stopped at steps * batch)
    cfg = _cfg("classify", 3, train_images=0, batch_size=2, first_image=5, val_images=2)
    train(cfg, tmp_path, log=open("/dev/null", "w"))  # noqa: SIM115
    assert len(_losses(tmp_path)) == 3


def test_replay_mixes_style_one_scenes_into_a_style_two_run() -> None:
    import numpy as np

    from sepvit.data import ShapesDataset
    from sepvit.train import _comparable, _scene

    cfg = _cfg("classify", 4, style=2, replay=0.5)
    new, old = (ShapesDataset("train", "classify", 64, length=40, style=s) for s in (2, 1))
    picks = [np.array_equal(_scene(new, old, i, 0, cfg).image, old[i].image) for i in range(40)]
    assert 8 <= sum(picks) <= 32  # about half, fixed per index
    assert picks == [
        np.array_equal(_scene(new, old, i, 3, cfg).image, old[i].image) for i in range(40)
    ]
    # the defaults leave the resume guard of runs written before style and replay unchanged
    assert "style" not in _comparable(_cfg("classify", 4)) and "replay" in _comparable(cfg)


def test_continuing_a_version_1_detector_keeps_its_head_semantics(tmp_path: Path) -> None:
    """``init_from`` a demo checkpoint written before the OpenMMLab layout: the whole model is
    initialised (its keys converted) and the run keeps the v1 head options, so its output
    checkpoint (version 2) records them."""
    demo = Path(__file__).resolve().parents[2] / "model_store/sepvit_lite_shapes_det"
    path = demo / "model.safetensors"
    if not path.is_file():
        pytest.skip("demo checkpoint not built")
    old = read_metadata(path)
    if old.get("head"):
        pytest.skip("the demo checkpoint is already version 2")
    cfg = _cfg("detect", 1, img_size=128, batch_size=2, init_from=str(path),
               model_args=old["model_args"], lr=1e-9)  # fmt: skip
    log = tmp_path / "log.txt"
    with log.open("w") as f:
        train(cfg, tmp_path, log=f)
    assert "init whole model" in log.read_text()
    meta = read_metadata(tmp_path / "model.safetensors")
    assert meta["head"] == "retinanet"
    assert meta["model_args"]["anchor_center_offset"] == 0.5
    assert meta["model_args"]["relu_before_extra_convs"] is True
