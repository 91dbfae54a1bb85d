"""A real TorchServe serving the three demo archives, over REST and gRPC on 127.0.0.1.

Builds the archives with ``sepvit-archive``, starts ``torchserve --foreground`` with the hardened
``model_store/config.properties`` (token auth on, model API off; only the addresses and the model
store are changed), and always stops it, even when a test fails.
"""

from __future__ import annotations

import io
import json
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handlers.outputs import rle_decode
from sepvit.data.shapes import CLASSES, ShapesDataset, render_scene
from sepvit.ops.boxes import box_iou
from service.torchserve.process import STORE, TorchServeProcess, build_archives

pytestmark = pytest.mark.integration

MODELS = {
    "classify": "sepvit_lite_shapes_cls",
    "detect": "sepvit_lite_shapes_det",
    "segment": "sepvit_lite_shapes_seg",
}


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def torchserve(
    tmp_path_factory: pytest.TempPathFactory, torchserve_required: None
) -> Iterator[TorchServeProcess]:
    missing = [n for n in MODELS.values() if not (STORE / n / "model.safetensors").is_file()]
    if missing:
        pytest.skip(f"demo checkpoints not built: {missing} (run `make models`)")
    work = tmp_path_factory.mktemp("torchserve")
    store = build_archives(
        {
            n: (STORE / n / "model.safetensors", STORE / n / "model-config.yaml")
            for n in MODELS.values()
        },
        work / "store",
    )
    ts = TorchServeProcess(work, store, list(MODELS.values()))
    try:
        yield ts.start()
    finally:
        ts.stop()


def _scene_with(task: str, label: int, size: int) -> np.ndarray:
    ds = ShapesDataset("test", task, size, length=500)
    for i in range(len(ds)):
        sc = ds[i]
        if sc.label == label:
            return sc.image
    raise AssertionError("no such scene")


def _check_classify(body: bytes, expected: str) -> None:
    res = json.loads(body)
    assert res["top_k"][0]["label"] == expected, res


# The ground-truth bar, on every object: clear scenes (three filled, non-overlapping shapes,
# 25-45 % of the side, on the full background and clutter), each object found with a same-label box
# at IoU >= 0.7 and its class mask at IoU >= 0.8. On 40 such scenes the demo models missed one
# mask (0.67; boxes all >= 0.85); these first 6 pass with margin (box IoU >= 0.94, mask >= 0.95).
CLEAR_SCENES = 6
BOX_IOU, MASK_IOU = 0.7, 0.8
# Dense test-split scenes (up to 6 objects, occlusion, outlines) get a statistical bar: the share
# of objects found at IoU >= 0.7 and the median mask IoU (measured 22/25 and 0.91).
SCENES = 6
DET_RECALL_AT_07 = 0.75
MASK_IOU_MEDIAN = 0.8


def _clear_scenes() -> list:  # type: ignore[type-arg]
    return [
        render_scene(
            np.random.default_rng([7, i]), 256, 3, (0.25, 0.45), min_visible=1.0, outline_prob=0.0
        )
        for i in range(CLEAR_SCENES)
    ]


def _dense_scenes() -> list:  # type: ignore[type-arg]
    ds = ShapesDataset("test", "detect", 256, length=100)
    return [sc for sc in ds if len(sc.labels) >= 2][:SCENES]


def _pipeline(task: str):  # type: ignore[no-untyped-def]
    """The in-process pipeline on the same checkpoint and handler options as the archive."""
    import yaml

    from handlers.pipeline import Pipeline, PipelineConfig
    from sepvit.registry import create_model

    name = MODELS[task]
    options = yaml.safe_load((STORE / name / "model-config.yaml").read_text())["handler"]
    model = create_model("sepvit_lite", task=task, checkpoint=STORE / name / "model.safetensors")
    return Pipeline(model, PipelineConfig.from_mapping(options))


def _same_answer(served: dict, local: dict) -> None:  # type: ignore[type-arg]
    """TorchServe's JSON equals the in-process pipeline's (floats to 1e-5)."""
    a, b = json.dumps(served, sort_keys=True), json.dumps(local, sort_keys=True)
    if a == b:
        return
    flat_a, flat_b = json.loads(a), json.loads(b)
    np.testing.assert_allclose(_numbers(flat_a), _numbers(flat_b), atol=1e-5)
    assert _strings(flat_a) == _strings(flat_b)


def _numbers(x) -> list[float]:  # type: ignore[no-untyped-def]
    if isinstance(x, dict):
        return [v for k in sorted(x) for v in _numbers(x[k])]
    if isinstance(x, list):
        return [v for i in x for v in _numbers(i)]
    return [float(x)] if isinstance(x, int | float) and not isinstance(x, bool) else []


def _strings(x) -> list[str]:  # type: ignore[no-untyped-def]
    if isinstance(x, dict):
        return [v for k in sorted(x) for v in [k, *_strings(x[k])]]
    if isinstance(x, list):
        return [v for i in x for v in _strings(i)]
    return [x] if isinstance(x, str) else []


def _object_ious(scene, det_body: bytes, seg_body: bytes) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    """Per ground-truth object, the best same-label box IoU; per class present, the mask IoU."""
    import torch

    dets = json.loads(det_body)["detections"]
    boxes = torch.tensor([d["box"] for d in dets] or [[0.0] * 4], dtype=torch.float32)
    box_ious = []
    for gt_box, gt_label in zip(scene.boxes, scene.labels, strict=True):
        iou = box_iou(torch.tensor([gt_box], dtype=torch.float32), boxes)[0]
        same = torch.tensor([d["index"] == gt_label for d in dets] or [False])
        box_ious.append(float((iou * same).max()))
    segs = {s["index"]: rle_decode(s["rle"]) for s in json.loads(seg_body)["segments"]}
    mask_ious = []
    for cls in sorted(set(scene.labels)):
        gt = scene.segmentation == cls + 1
        pred = segs.get(cls + 1, np.zeros_like(gt))
        mask_ious.append(float((gt & pred).sum() / max((gt | pred).sum(), 1)))
    return box_ious, mask_ious


def _check_against_ground_truth(answers: dict[str, list[bytes]]) -> None:
    clear, dense = _clear_scenes(), _dense_scenes()
    assert len(answers["detect"]) == len(answers["segment"]) == len(clear) + len(dense)
    results = [
        _object_ious(scene, d, s)
        for scene, d, s in zip(clear + dense, answers["detect"], answers["segment"], strict=True)
    ]
    for i, (box_ious, mask_ious) in enumerate(results[: len(clear)]):
        assert min(box_ious) >= BOX_IOU, (i, box_ious)
        assert min(mask_ious) >= MASK_IOU, (i, mask_ious)
    dense_boxes = [v for b, _ in results[len(clear) :] for v in b]
    dense_masks = [v for _, m in results[len(clear) :] for v in m]
    assert np.mean([v >= BOX_IOU for v in dense_boxes]) >= DET_RECALL_AT_07, dense_boxes
    assert float(np.median(dense_masks)) >= MASK_IOU_MEDIAN, dense_masks


def _check_all(send) -> None:  # type: ignore[no-untyped-def]
    """``send(task, image_bytes) -> body``: right answers and exactly the pipeline's answers."""
    circle = _png(_scene_with("classify", CLASSES.index("circle"), 224))
    body = send("classify", circle)
    assert json.loads(body)["top_k"][0]["label"] == "circle", body
    _same_answer(json.loads(body), _pipeline("classify").handle([circle])[0])
    answers: dict[str, list[bytes]] = {"detect": [], "segment": []}
    for task in answers:
        pipe = _pipeline(task)
        for scene in _clear_scenes() + _dense_scenes():
            image = _png(scene.image)
            body = send(task, image)
            _same_answer(json.loads(body), pipe.handle([image])[0])
            answers[task].append(body)
    _check_against_ground_truth(answers)


def test_rest_answers_are_right(torchserve: TorchServeProcess) -> None:
    def send(task: str, image: bytes) -> bytes:
        status, _, body = torchserve.post(MODELS[task], image)
        assert status == 200, body
        return body

    _check_all(send)
    # PNG label map through a multipart parameter
    scene = _dense_scenes()[0]
    status, headers, body = torchserve.post(MODELS["segment"], _png(scene.image), {"format": "png"})
    assert status == 200
    assert headers.get("Content-Type", headers.get("content-type")) == "image/png"
    labels = np.asarray(Image.open(io.BytesIO(body)))
    assert labels.shape == scene.segmentation.shape


def test_grpc_predictions(torchserve: TorchServeProcess, tmp_path: Path) -> None:
    import grpc

    from tests.torchserve_grpc import load_stubs

    pb, pb_grpc = load_stubs(tmp_path / "proto")
    meta = [("authorization", f"Bearer {torchserve.token}")]
    with grpc.insecure_channel(torchserve.grpc) as channel:
        stub = pb_grpc.InferenceAPIsServiceStub(channel)

        def send(task: str, image: bytes) -> bytes:
            req = pb.PredictionsRequest(model_name=MODELS[task], input={"data": image})
            return bytes(stub.Predictions(req, metadata=meta, timeout=60).prediction)

        _check_all(send)
        # a bad image: TorchServe's gRPC answers OK with the handler's error body
        req = pb.PredictionsRequest(model_name=MODELS["classify"], input={"data": b"not an image"})
        body = stub.Predictions(req, metadata=meta, timeout=60).prediction
        assert json.loads(body)["error"]["code"] == "undecodable_image"
        # token auth is on for gRPC too
        with pytest.raises(grpc.RpcError) as err:
            stub.Predictions(req, timeout=60)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_concurrent_requests_are_batched_and_a_bad_image_fails_alone(
    torchserve: TorchServeProcess,
) -> None:
    good = _png(_scene_with("classify", CLASSES.index("circle"), 224))
    truncated = good[: len(good) // 2]
    shared_batch = False
    for _attempt in range(5):
        bodies = [good] * 11 + [truncated] + [good] * 4
        with ThreadPoolExecutor(len(bodies)) as pool:
            results = list(pool.map(lambda b: torchserve.post(MODELS["classify"], b), bodies))
        sizes = [int(h.get("x-sepvit-batch-size", 1)) for _, h, _ in results]
        bad_status, bad_headers, bad_body = results[11]
        assert bad_status == 400, bad_body
        assert json.loads(bad_body)["error"]["code"] == "undecodable_image"
        for i, (status, _, body) in enumerate(results):
            if i != 11:
                assert status == 200, body
                _check_classify(body, "circle")
        assert max(sizes) > 1, sizes
        if int(bad_headers.get("x-sepvit-batch-size", 1)) > 1:
            shared_batch = True  # the bad image had batch-mates, and they all succeeded
            break
    assert shared_batch, "the corrupt image never shared a batch with good ones"


def test_token_auth_and_metrics(torchserve: TorchServeProcess) -> None:
    image = _png(np.full((32, 32, 3), 90, np.uint8))
    status, _, _ = torchserve.post(MODELS["classify"], image, token=False)
    assert 400 <= status < 500  # TorchServe 0.12 rejects a missing token with 400
    with urllib.request.urlopen(f"{torchserve.metrics}/metrics", timeout=30) as r:
        text = r.read().decode()
    counts = {
        line.split("model_name=")[1].split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ts_inference_requests_total{")
    }
    for name in MODELS.values():
        assert counts.get(name, 0) >= 1, counts
    assert counts[MODELS["classify"]] >= 16
