"""create_model, native checkpoints, and official checkpoint formats."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sepvit import CheckpointError, UnknownModelError, create_model, list_models, save_checkpoint
from sepvit.checkpoint import read_metadata

LABELS = [f"c{i}" for i in range(4)]


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def test_list_models() -> None:
    assert {"sepvit_lite", "sepvit_tiny", "sepvit_small", "sepvit_base"} <= set(list_models())


def test_unknown_model_and_task() -> None:
    with pytest.raises(UnknownModelError, match="unknown model"):
        create_model("sepvit_huge")
    with pytest.raises(UnknownModelError, match="unknown task"):
        create_model("sepvit_lite", task="caption")


def test_pretrained_cfg_defaults() -> None:
    model = create_model("sepvit_lite", num_classes=4, label_names=LABELS)
    cfg = model.pretrained_cfg
    assert cfg["task"] == "classify" and cfg["variant"] == "sepvit_lite"
    assert cfg["input_size"] == [3, 224, 224]
    assert cfg["label_names"] == LABELS
    assert cfg["interpolation"] == "bicubic" and len(cfg["mean"]) == 3
    assert cfg["crop_pct"] == 0.875
    assert create_model("sepvit_lite", crop_pct=1.0).pretrained_cfg["crop_pct"] == 1.0
    with pytest.raises(ValueError, match="crop_pct"):
        create_model("sepvit_lite", crop_pct=0.0)


def test_label_count_must_match() -> None:
    with pytest.raises(ValueError, match="label names"):
        create_model("sepvit_lite", num_classes=3, label_names=LABELS)


@pytest.mark.parametrize(
    ("task", "kwargs", "shape"),
    [
        ("classify", {}, (96, 96)),
        ("detect", {"fpn_channels": 32, "head_channels": 32, "head_convs": 1}, (96, 128)),
        ("segment", {"fpn_channels": 32, "head_channels": 16}, (96, 128)),
    ],
)
def test_native_round_trip(tmp_path: Path, task: str, kwargs: dict, shape: tuple[int, int]) -> None:
    model = _randomize(
        create_model(
            "sepvit_lite", task=task, num_classes=4, img_size=shape, label_names=LABELS, **kwargs
        )
    )
    path = save_checkpoint(model, tmp_path / "m.safetensors", provenance={"steps": 7})
    meta = read_metadata(path)
    assert meta["task"] == task and meta["provenance"] == {"steps": 7}
    assert meta["pretrained_cfg"]["label_names"] == LABELS

    loaded = create_model("sepvit_lite", task=task, checkpoint=path).eval()
    assert loaded.pretrained_cfg == model.pretrained_cfg
    x = torch.randn(1, 3, *shape)
    with torch.no_grad():
        if task == "detect":
            a, b = model.forward_raw(x), loaded.forward_raw(x)
            assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
        else:
            assert torch.equal(model(x), loaded(x))


def test_native_fp16_storage_is_close(tmp_path: Path) -> None:
    model = _randomize(create_model("sepvit_lite", num_classes=4))
    full = save_checkpoint(model, tmp_path / "f32.safetensors")
    half = save_checkpoint(model, tmp_path / "f16.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = create_model("sepvit_lite", checkpoint=half).eval()
    assert next(loaded.parameters()).dtype == torch.float32
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - loaded(x)).abs().max() < 5e-2


def test_native_checkpoint_mismatches_are_clear(tmp_path: Path) -> None:
    path = save_checkpoint(create_model("sepvit_lite", num_classes=4), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="holds 'sepvit_lite'"):
        create_model("sepvit_tiny", checkpoint=path)
    with pytest.raises(CheckpointError, match="'classify' model"):
        create_model("sepvit_lite", task="detect", checkpoint=path)
    with pytest.raises(CheckpointError, match="4 classes"):
        create_model("sepvit_lite", num_classes=5, checkpoint=path)


def test_missing_and_garbage_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        create_model("sepvit_lite", checkpoint=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="weights-only"):
        create_model("sepvit_lite", checkpoint=junk)


class Payload:
    """Stands for an arbitrary class inside a pickle: loading must refuse it."""


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "obj": Payload()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        create_model("sepvit_lite", checkpoint=path)


def test_mmengine_training_state_is_read_as_placeholders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unstripped mmdet 3.x / mmseg 1.x checkpoint carries mmengine's message hub (its
    HistoryBuffers hold numpy arrays): read as inert placeholders, the weights load; a class
    outside that list is still refused."""
    import sys
    import types

    fake = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self) -> None:
            self._log_history = np.arange(3.0)

    HistoryBuffer.__module__ = fake.__name__
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    fake.HistoryBuffer = HistoryBuffer  # type: ignore[attr-defined]
    for name in ("mmengine", "mmengine.logging"):  # pickle imports the parents too
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    src = _randomize(create_model("sepvit_lite", task="segment", num_classes=3, fpn_channels=16))
    path = tmp_path / "fpn.pth"
    hub = {"log_scalars": {"train/loss": HistoryBuffer()}, "runtime_info": {"iter": 10}}
    torch.save({"meta": {"iter": 10}, "state_dict": src.state_dict(), "message_hub": hub}, path)
    for name in ("mmengine", "mmengine.logging", fake.__name__):
        monkeypatch.delitem(sys.modules, name)
    model = create_model("sepvit_lite", task="segment", checkpoint=path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in src.state_dict().items())
    torch.save({"state_dict": src.state_dict(), "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        create_model("sepvit_lite", task="segment", checkpoint=path)


def test_training_script_extras_are_accepted(tmp_path: Path) -> None:
    """DeiT-style checkpoints carry argparse args and numpy scalars beside the weights."""
    src = _randomize(create_model("sepvit_lite"))
    path = tmp_path / "official.pth"
    obj = {"model": src.state_dict(), "args": argparse.Namespace(lr=5e-4, model="SepViT_Lite")}
    obj["max_accuracy"] = np.float64(71.5)
    torch.save(obj, path)
    assert create_model("sepvit_lite", checkpoint=path).load_report.exact


@pytest.mark.parametrize("wrap", ["bare", "model", "module", "model+module", "state_dict"])
def test_official_formats_load_strictly(tmp_path: Path, wrap: str) -> None:
    src = _randomize(create_model("sepvit_lite"))
    sd = src.state_dict()
    if "module" in wrap:
        sd = {f"module.{k}": v for k, v in sd.items()}
    obj = {"bare": sd, "module": sd}.get(wrap) or {wrap.split("+")[0]: sd, "epoch": 3}
    path = tmp_path / "official.pth"
    torch.save(obj, path)
    model = create_model("sepvit_lite", checkpoint=path).eval()
    assert model.load_report.exact
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - src(x)).abs().max() <= 1e-5


def test_official_weights_with_other_class_count_drop_the_head(tmp_path: Path) -> None:
    path = tmp_path / "official.pth"
    torch.save({"model": _randomize(create_model("sepvit_lite")).state_dict()}, path)
    model = create_model("sepvit_lite", num_classes=8, checkpoint=path)
    assert sorted(model.load_report.missing) == ["head.bias", "head.weight"]
    assert model.load_report.dropped == 2


@pytest.mark.parametrize("task", ["detect", "segment"])
def test_classification_weights_initialise_dense_backbones(tmp_path: Path, task: str) -> None:
    src = _randomize(create_model("sepvit_lite"))
    path = tmp_path / "official.pth"
    torch.save({"model": src.state_dict()}, path)
    model = create_model("sepvit_lite", task=task, num_classes=3, checkpoint=path)
    report = model.load_report
    assert report.target == "backbone"
    stage_norms = {f"norm_list.{i}.{p}" for i in range(4) for p in ("bias", "weight")}
    # dense blocks have PSA everywhere; the classifier's single-window blocks had none
    psa = {
        f"blocks.{b}.attn.{m}.{p}"
        for b in ("2.1", "2.3", "2.5", "3.0", "3.1")
        for m in ("win_tokens_norm", "PSA_qk")
        for p in ("weight", "bias")
    }
    assert set(report.missing) == stage_norms | psa
    assert report.unexpected == []
    assert report.dropped == 10  # 6 window-token tables + norm + head
    assert torch.equal(
        model.backbone.blocks[2][0].attn.DSA_qkv.weight, src.blocks[2][0].attn.DSA_qkv.weight
    )


@pytest.mark.parametrize(
    ("task", "head_kw"),
    [
        ("detect", {"fpn_channels": 32, "head_channels": 32, "head_convs": 2}),
        ("segment", {"fpn_channels": 32, "head_channels": 16}),
    ],
)
def test_openmmlab_checkpoint_loads_every_tensor(
    tmp_path: Path, task: str, head_kw: dict[str, int]
) -> None:
    src = _randomize(create_model("sepvit_lite", task=task, num_classes=3, **head_kw))
    # mmengine layout: weights under state_dict, classes in meta; DDP's module. prefix
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    # the official detection backbone also carries an unused classifier norm/head
    sd["module.backbone.norm.weight"] = torch.ones(256)
    sd["module.backbone.head.weight"] = torch.zeros(1000, 256)
    path = tmp_path / f"{task}.pth"
    meta = {"epoch": 12, "dataset_meta": {"classes": ["a", "b", "c"]}}
    torch.save({"meta": meta, "state_dict": sd}, path)
    model = create_model("sepvit_lite", task=task, checkpoint=path)  # widths read from tensors
    assert model.load_report.dropped_keys == ["backbone.head.weight", "backbone.norm.weight"]
    assert model.pretrained_cfg["label_names"] == ["a", "b", "c"]
    assert model.pretrained_cfg["num_classes"] == 3
    own = model.state_dict()
    assert own.keys() == src.state_dict().keys()
    assert all(torch.equal(own[k], v) for k, v in src.state_dict().items())

    # a missing head tensor, an unknown one and a wrong shape are errors that name the keys
    first_head = next(k for k in sd if k.startswith(("module.bbox_head", "module.decode_head")))
    for broken, needle in [
        ({k: v for k, v in sd.items() if k != first_head}, first_head.removeprefix("module.")),
        ({**sd, "module.neck.extra.weight": torch.zeros(1)}, "neck.extra.weight"),
        ({**sd, first_head: torch.zeros(1)}, first_head.removeprefix("module.")),
    ]:
        torch.save({"state_dict": broken}, path)
        with pytest.raises(CheckpointError, match=re.escape(needle)):
            create_model("sepvit_lite", task=task, checkpoint=path)
    # a checkpoint of the other task is refused, not half-loaded
    torch.save({"state_dict": sd}, path)
    other = "segment" if task == "detect" else "detect"
    with pytest.raises(CheckpointError, match="holds a"):
        create_model("sepvit_lite", task=other, checkpoint=path)


def test_native_classifier_loads_at_another_size(tmp_path: Path) -> None:
    src = _randomize(create_model("sepvit_lite", num_classes=4, img_size=(112, 224)))
    path = save_checkpoint(src, tmp_path / "m.safetensors")
    model = create_model("sepvit_lite", checkpoint=path, img_size=224)
    assert model.pretrained_cfg["input_size"] == [3, 224, 224]
    assert model.blocks[0][0].win_tokens.shape == (1, 64, 1, 32)  # 8 x 8 windows at 224
    same = create_model("sepvit_lite", checkpoint=path)
    assert torch.equal(same.blocks[0][0].win_tokens, src.blocks[0][0].win_tokens)


def test_caller_metadata_overrides_checkpoint(tmp_path: Path) -> None:
    path = save_checkpoint(create_model("sepvit_lite", num_classes=4), tmp_path / "m.safetensors")
    model = create_model(
        "sepvit_lite", checkpoint=path, mean=(0.5, 0.5, 0.5), interpolation="bilinear"
    )
    assert model.pretrained_cfg["mean"] == [0.5, 0.5, 0.5]
    assert model.pretrained_cfg["interpolation"] == "bilinear"
    assert model.pretrained_cfg["std"] == pytest.approx([0.229, 0.224, 0.225])


@pytest.mark.parametrize("doc", ["{not json", "[1, 2]", '{"variant": "sepvit_lite"}'])
def test_malformed_metadata_is_a_checkpoint_error(tmp_path: Path, doc: str) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"sepvit": doc})
    with pytest.raises(CheckpointError):
        read_metadata(path)
