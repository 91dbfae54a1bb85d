"""Pipelines: order and per-item errors, exact geometry with planted outputs, runtimes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.errors import BadParameterError, ImageDecodeError, TooManyImagesError
from handlers.outputs import rle_decode
from handlers.pipeline import Pipeline, PipelineConfig
from sepvit import create_model
from sepvit.ops import BoxCoder

LABELS = ["circle", "square", "star"]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _img(h: int, w: int, seed: int = 0) -> bytes:
    return _png(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("sepvit_lite", num_classes=3, img_size=64, label_names=LABELS)


def test_classify_order_errors_and_params(classifier: torch.nn.Module) -> None:
    pipe = Pipeline(classifier, PipelineConfig(top_k=2))
    payloads = [_img(50, 80, 0), b"not an image", _img(64, 64, 1)]
    out = pipe.handle(payloads, [None, None, {"top_k": 3}])
    assert len(out) == 3
    assert isinstance(out[1], ImageDecodeError)
    assert [len(r["top_k"]) for r in (out[0], out[2])] == [2, 3]
    assert all(e["label"] in LABELS for e in out[2]["top_k"])
    assert sum(e["score"] for e in out[2]["top_k"]) == pytest.approx(1.0, abs=1e-5)
    # the same image alone gives the same answer as inside a batch
    alone = pipe.handle([payloads[0]])[0]
    assert alone["top_k"][0]["index"] == out[0]["top_k"][0]["index"]
    assert alone["top_k"][0]["score"] == pytest.approx(out[0]["top_k"][0]["score"], abs=1e-5)


def test_bad_params_and_too_many_images(classifier: torch.nn.Module) -> None:
    pipe = Pipeline(classifier, PipelineConfig(max_images=2))
    out = pipe.handle([_img(32, 32), _img(32, 32)], [{"top_k": 0}, {"format": "png"}])
    assert all(isinstance(r, BadParameterError) for r in out)
    with pytest.raises(TooManyImagesError):
        pipe.handle([_img(8, 8)] * 3)


def test_detection_boxes_map_back_to_original_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model(
        "sepvit_lite",
        task="detect",
        num_classes=3,
        img_size=128,
        fpn_channels=16,
        head_channels=16,
        head_convs=1,
        label_names=LABELS,
    )
    pipe = Pipeline(model)
    # a 300 x 150 (W x H) image letterboxes into 128 x 128 with scale 128/300: content 64 x 128
    net_box = torch.tensor([[12.8, 6.4, 64.0, 32.0]])  # bucket pixels
    anchors = torch.cat(model.anchors((128, 128), torch.device("cpu")))

    def planted(batch: torch.Tensor) -> list[torch.Tensor]:
        n = anchors.shape[0]
        cls = torch.full((batch.shape[0], n, 3), -12.0)
        reg = torch.zeros(batch.shape[0], n, 4)
        cls[:, 7, 2] = 6.0
        reg[:, 7] = BoxCoder().encode(anchors[7:8], net_box)[0]
        return [cls, reg]

    monkeypatch.setattr(pipe, "infer", planted)
    (res,) = pipe.handle([_img(150, 300)])
    (det,) = res["detections"]
    assert det["label"] == "star" and det["index"] == 2
    assert det["box"] == pytest.approx([30.0, 15.0, 150.0, 75.0], abs=0.05)


def test_openmmlab_presets_resize_keep_ratio_and_pad_after_normalising() -> None:
    torch.manual_seed(0)
    # the COCO preset at a small scale (long 96, short 64) so the test stays fast
    model = create_model(
        "sepvit_lite", task="detect", preset="coco", img_size=(64, 96), fpn_channels=16,
        head_channels=16, head_convs=1,
    ).eval()  # fmt: skip
    cfg = model.pretrained_cfg
    assert (cfg["resize"], cfg["pad_divisor"], len(cfg["label_names"])) == ("keep_ratio", 32, 80)
    pipe = Pipeline(model, PipelineConfig(max_detections=20))
    image = np.random.default_rng(3).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    (res,) = pipe.handle([_png(image)], [{"score_threshold": 0.0}])
    # by hand: scale min(96 / 50, 64 / 30) = 1.92 -> 58 x 96, padded to 64 x 96 with zeros after
    # normalisation; boxes clipped to the 58 x 96 content (mmdet's img_shape), back by 50 / 96
    # and 30 / 58
    arr, box = pipe.preprocess(image)
    assert arr.shape[:2] == (64, 96) and box is not None and box.valid_hw == (58, 96)
    x = (torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255 - pipe.mean) / pipe.std
    x[:, :, 58:] = 0.0
    assert torch.equal(pipe._to_batch([arr], [box.valid_hw]), x)
    with torch.no_grad():
        (det,) = model.postprocess(*model.forward_raw(x), (64, 96), 0.0, 20, clip_size=(58, 96))
    want = det["boxes"].numpy() * [50 / 96, 30 / 58, 50 / 96, 30 / 58]
    got = np.array([d["box"] for d in res["detections"]])
    assert len(got) == 20 and np.allclose(got, want, atol=0.01)
    assert [d["label"] for d in res["detections"]] == [
        cfg["label_names"][i] for i in det["labels"].tolist()
    ]
    # keep-ratio shapes vary per image: a non-eager runtime needs a configured bucket
    fallback = Pipeline(model, PipelineConfig(runtime="onnxruntime"))
    assert fallback.runtime.name == "eager"
    with pytest.raises(RuntimeError, match="bucket"):
        Pipeline(model, PipelineConfig(runtime="onnxruntime", on_parity_failure="fail"))


def test_segmentation_formats_and_geometry(monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["background", *LABELS]
    model = create_model(
        "sepvit_lite",
        task="segment",
        num_classes=4,
        img_size=64,
        fpn_channels=16,
        head_channels=16,
        label_names=names,
    )
    pipe = Pipeline(model)

    def planted(batch: torch.Tensor) -> list[torch.Tensor]:
        logits = torch.zeros(batch.shape[0], 4, 64, 64)
        logits[:, 0] = 1.0
        logits[:, 3, :, :16] = 5.0  # left quarter of the bucket = "star"
        return [logits]

    monkeypatch.setattr(pipe, "infer", planted)
    # 40 x 160 (H x W): scale 0.4, content 16 x 64; left quarter of the content = 40 px wide
    (res,) = pipe.handle([_img(40, 160)])
    (seg,) = res["segments"]
    assert seg["label"] == "star" and seg["rle"]["size"] == [40, 160]
    mask = rle_decode(seg["rle"])
    assert mask[:, :38].all() and not mask[:, 42:].any()
    png, over = pipe.handle([_img(40, 160)] * 2, [{"format": "png"}, {"format": "overlay"}])
    labels = np.asarray(Image.open(io.BytesIO(png["data"])))
    assert labels.shape == (40, 160) and set(np.unique(labels)) == {0, 3}
    assert np.asarray(Image.open(io.BytesIO(over["data"]))).shape == (40, 160, 3)


def test_onnxruntime_runtime_passes_parity(classifier: torch.nn.Module) -> None:
    pytest.importorskip("onnxruntime")
    pipe = Pipeline(classifier, PipelineConfig(runtime="onnxruntime"))
    assert pipe.runtime.name == "onnxruntime" and pipe.parity.ok
    eager = Pipeline(classifier)
    img = _img(64, 64, 3)
    a, b = pipe.handle([img])[0], eager.handle([img])[0]
    assert a["top_k"][0]["index"] == b["top_k"][0]["index"]


def test_parity_failure_falls_back_or_refuses(
    classifier: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    import handlers.runtime as rt

    real = rt.build_runtime

    def broken(name: str, model: torch.nn.Module, *a: object, **k: object) -> rt.Runtime:
        runtime = real("eager", model, *a, **k)  # type: ignore[arg-type]
        if name == "eager":
            return runtime
        return rt.Runtime(name, lambda x: [torch.flip(runtime(x)[0], dims=[-1])], runtime.device)

    monkeypatch.setattr("handlers.pipeline.build_runtime", broken)
    fallback = Pipeline(classifier, PipelineConfig(runtime="onnxruntime"))
    assert fallback.runtime.name == "eager" and not fallback.parity.ok
    with pytest.raises(RuntimeError, match="refusing to load"):
        Pipeline(classifier, PipelineConfig(runtime="onnxruntime", on_parity_failure="fail"))


def test_tensorrt_without_gpu_falls_back(classifier: torch.nn.Module) -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only path")
    pipe = Pipeline(classifier, PipelineConfig(runtime="tensorrt"))
    assert pipe.runtime.name == "eager"
    with pytest.raises(RuntimeError, match="tensorrt runtime"):
        Pipeline(classifier, PipelineConfig(runtime="tensorrt", on_parity_failure="fail"))


def test_config_from_mapping() -> None:
    cfg = PipelineConfig.from_mapping(
        {"runtime": "onnxruntime", "buckets": [[256, 256], [192, 320]], "limits": {"max_bytes": 10}}
    )
    assert cfg.buckets == [(256, 256), (192, 320)] and cfg.limits.max_bytes == 10
    with pytest.raises(ValueError, match="unknown"):
        PipelineConfig.from_mapping({"runtme": "eager"})
