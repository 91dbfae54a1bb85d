"""Runtimes: the ONNX export cache and the detection parity check's matching."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

import handlers.runtime as rt
import sepvit.export as ex
from sepvit import create_model
from tests.models import SHALLOW


@pytest.fixture()
def exports(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Count the ONNX exports that actually run."""
    real = ex.export_onnx
    calls: list[Path] = []

    def counting(model: torch.nn.Module, path: Any, **kw: Any) -> Any:
        calls.append(Path(path))
        return real(model, path, **kw)

    monkeypatch.setattr(ex, "export_onnx", counting)
    return calls


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("sepvit_lite", num_classes=3, img_size=64, **SHALLOW).eval()


def test_onnx_export_is_cached_by_content(tmp_path: Path, exports: list[Path]) -> None:
    pytest.importorskip("onnxruntime")
    model, x = _model(), torch.randn(2, 3, 64, 64)
    first = rt.build_runtime("onnxruntime", model, (64, 64), cache_dir=tmp_path, threads=1)
    assert len(exports) == 1
    entries = [p for p in (tmp_path / "onnx").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "model.onnx").is_file()
    # a second load (another process, a restart) reuses it and answers the same
    again = rt.build_runtime("onnxruntime", _model(), (64, 64), cache_dir=tmp_path, threads=1)
    assert len(exports) == 1
    torch.testing.assert_close(first(x)[0], again(x)[0])
    # other weights or another input size are another entry, never a stale graph
    rt.build_runtime("onnxruntime", _model(seed=1), (64, 64), cache_dir=tmp_path, threads=1)
    rt.build_runtime("onnxruntime", model, (96, 64), cache_dir=tmp_path, threads=1)
    assert len(exports) == 3
    assert len([p for p in (tmp_path / "onnx").iterdir() if not p.name.startswith(".")]) == 3
    # the cache can be turned off
    rt.build_runtime("onnxruntime", model, (64, 64), cache_dir=tmp_path, options={"cache": False})
    assert len(exports) == 4


def test_digest_tracks_weights_size_and_buffers() -> None:
    a, b = _model(), _model()
    assert rt.model_digest(a, (64, 64)) == rt.model_digest(b, (64, 64))
    assert rt.model_digest(a, (64, 64)) != rt.model_digest(a, (64, 96))
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-6
    assert rt.model_digest(a, (64, 64)) != rt.model_digest(b, (64, 64))


def test_digest_covers_zero_dim_buffers() -> None:
    """BatchNorm's ``num_batches_tracked`` is a 0-dim integer buffer (SeT has them): it is hashed
    like any other tensor, where a byte view of it used to raise."""
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    digest = rt.model_digest(m, (8, 8))
    m.get_buffer("1.num_batches_tracked").add_(1)
    assert rt.model_digest(m, (8, 8)) != digest


def test_unwritable_cache_still_serves(
    tmp_path: Path, exports: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("onnxruntime")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should go")
    with caplog.at_level(logging.WARNING, logger="handlers.runtime"):
        runtime = rt.build_runtime("onnxruntime", _model(), (64, 64), cache_dir=blocker)
    assert runtime(torch.randn(1, 3, 64, 64))[0].shape == (1, 3)
    assert len(exports) == 1 and "cannot cache" in caplog.text


def test_cache_dir_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exports: list[Path]
) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("SEPVIT_CACHE_DIR", str(tmp_path / "env-cache"))
    rt.build_runtime("onnxruntime", _model(), (64, 64))
    assert any((tmp_path / "env-cache" / "onnx").iterdir())


# -- detection parity -------------------------------------------------------------------------
# raw "outputs" here are planted detections [N, 5] = (x1, y1, x2, y2, label) for one image


def _runtime(rows: list[list[float]]) -> rt.Runtime:
    raw = torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)
    return rt.Runtime("planted", lambda _batch: [raw], torch.device("cpu"))


def _decode(raw: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    d = raw[0]
    return [{"boxes": d[:, :4], "labels": d[:, 4].long()}]


def _parity(got: list[list[float]], want: list[list[float]]) -> rt.ParityReport:
    x = torch.zeros(1, 3, 8, 8)
    return rt.check_parity("detect", _runtime(got), _runtime(want), x, decode=_decode)


def test_detect_parity_matches_boxes_within_a_label() -> None:
    # one box, two labels (per-class NMS keeps both); a near tie swaps their order
    want = [[10, 10, 50, 50, 1], [10, 10, 50, 50, 2], [60, 60, 90, 90, 0]]
    got = [[10, 10, 50, 50, 2], [10, 10, 50, 50, 1], [60, 60, 90.5, 90, 0]]
    report = _parity(got, want)
    assert report.ok and report.metrics["labels"] == 1.0, report


def test_detect_parity_catches_wrong_labels_and_boxes() -> None:
    want = [[10, 10, 50, 50, 1], [60, 60, 90, 90, 0]]
    assert not _parity([[10, 10, 50, 50, 2], [60, 60, 90, 90, 0]], want).ok  # label changed
    assert not _parity([[10, 10, 50, 50, 1], [0, 0, 20, 20, 0]], want).ok  # box moved
    assert not _parity([[10, 10, 50, 50, 1]], want).ok  # detection lost
    assert not _parity([], want).ok
    assert _parity([], []).ok
