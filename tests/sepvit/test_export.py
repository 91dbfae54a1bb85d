"""ONNX export parity and the TensorRT path's CPU-side behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sepvit import create_model
from sepvit.cli.export import main as export_main
from sepvit.export import (
    ParityError,
    TensorRTUnavailable,
    build_tensorrt_engine,
    export_onnx,
    onnx_parity,
    tensorrt_cache_key,
)
from tests.models import SHALLOW

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore")

TASK_ARGS = {
    "classify": {},
    "detect": {"fpn_channels": 32, "head_channels": 32, "head_convs": 1},
    "segment": {"fpn_channels": 32, "head_channels": 16},
}


@pytest.mark.parametrize("task", list(TASK_ARGS))
def test_onnx_export_parity_and_dynamic_batch(tmp_path: Path, task: str) -> None:
    depth = {} if task == "classify" else SHALLOW  # the dense heads on a one-block backbone
    model = create_model(
        "sepvit_lite", task=task, num_classes=4, img_size=(97, 131), **depth, **TASK_ARGS[task]
    )
    result = export_onnx(model, tmp_path / f"{task}.onnx")
    assert result.ok and result.max_abs_diff
    assert all(v <= 1e-4 for v in result.max_abs_diff.values())
    # a batch size other than the export example's runs too (dynamic axis)
    diffs = onnx_parity(model, result.path, torch.randn(3, 3, 97, 131))
    assert all(v <= 1e-4 for v in diffs.values())


def test_parity_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model("sepvit_lite", num_classes=4, img_size=64, **SHALLOW)
    import sepvit.export as ex

    monkeypatch.setattr(ex, "onnx_parity", lambda *a, **k: {"logits": 0.5})
    with pytest.raises(ParityError, match="differs from eager"):
        export_onnx(model, tmp_path / "m.onnx")


def test_export_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.onnx"
    rc = export_main(
        ["--model", "sepvit_lite", "--num-classes", "3", "--img-size", "64", "-o", str(out)]
    )
    assert rc == 0 and out.is_file()
    assert '"ok": true' in capsys.readouterr().out
    assert export_main(["--model", "nope", "-o", str(out)]) == 2
    # a checkpoint carries its task and classes: conflicting flags are refused, not ignored
    ckpt = str(Path(__file__).parents[2] / "model_store/sepvit_lite_shapes_cls/model.safetensors")
    assert export_main(["--checkpoint", ckpt, "--task", "detect", "-o", str(out)]) == 2
    assert "carries its own" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only failure path")
def test_tensorrt_fails_clearly_without_cuda(tmp_path: Path) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not really onnx")
    with pytest.raises(TensorRTUnavailable, match="CUDA"):
        build_tensorrt_engine(onnx, tmp_path / "cache")
    rc = export_main(
        ["--model", "sepvit_lite", "--img-size", "64", "--format", "tensorrt", "-o", str(onnx)]
    )
    assert rc == 3


def test_tensorrt_arguments_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="precision"):
        build_tensorrt_engine(tmp_path / "x.onnx", tmp_path, precision="int3")
    with pytest.raises(ValueError, match="profile"):
        build_tensorrt_engine(tmp_path / "x.onnx", tmp_path, profile=(8, 1, 32))


def test_tensorrt_cache_key_separates_gpus_precisions_profiles(tmp_path: Path) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph-v1")
    base = dict(
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability=(9, 0),
        trt_version="10.9.0",
        precision="fp16",
        profile=(1, 8, 32),
        img_size=(224, 224),
    )
    key = tensorrt_cache_key(onnx, **base)  # type: ignore[arg-type]
    assert key == tensorrt_cache_key(onnx, **base)  # type: ignore[arg-type]
    for change in [
        {"gpu_name": "NVIDIA L4"},
        {"compute_capability": (8, 9)},
        {"trt_version": "10.10.0"},
        {"precision": "fp32"},
        {"profile": (1, 16, 32)},
        {"img_size": (256, 256)},
    ]:
        assert tensorrt_cache_key(onnx, **{**base, **change}) != key  # type: ignore[arg-type]
    onnx.write_bytes(b"graph-v2")
    assert tensorrt_cache_key(onnx, **base) != key  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and TensorRT")
def test_tensorrt_engine_build_on_gpu(tmp_path: Path) -> None:  # pragma: no cover - GPU nodes
    pytest.importorskip("tensorrt")
    model = create_model("sepvit_lite", num_classes=4)
    result = export_onnx(model, tmp_path / "m.onnx")
    engine = build_tensorrt_engine(result.path, tmp_path / "cache", profile=(1, 4, 8))
    assert engine.is_file()
    assert build_tensorrt_engine(result.path, tmp_path / "cache", profile=(1, 4, 8)) == engine


def test_export_leaves_the_callers_model_alone(tmp_path: Path) -> None:
    model = create_model("sepvit_lite", num_classes=4, img_size=64, **SHALLOW).train()
    export_onnx(model, tmp_path / "m.onnx")
    assert model.training
    with pytest.raises(ValueError, match="check_batch"):
        export_onnx(model, tmp_path / "m.onnx", check_batch=1)


def test_onnx_export_of_a_model_that_centres_its_input(tmp_path: Path) -> None:
    model = create_model(
        "sepvit_lite",
        task="segment",
        num_classes=4,
        img_size=64,
        center_input=True,
        **SHALLOW,
        **TASK_ARGS["segment"],
    )
    result = export_onnx(model, tmp_path / "centred.onnx")
    assert result.ok and all(v <= 1e-4 for v in result.max_abs_diff.values())
    diffs = onnx_parity(model, result.path, torch.randn(3, 3, 64, 64) + 0.7)
    assert all(v <= 1e-4 for v in diffs.values())
