"""The demo page in a real browser: headless Debian chromium driven by Playwright, against a real
gateway serving the three demo models with auth on.

Each case opens the page, enters the token, picks a model, hands it an image (file chooser, drop,
paste) and waits for the drawn answer: the label text, and boxes or mask pixels on the overlay
canvas (the mask pixel count must equal the areas the gateway reported, so the page's RLE
decoding is checked too). Every request the browser makes, docs pages included, must go to the
gateway. ``SEPVIT_DEMO_SCREENSHOT=docs/img/demo_page.png`` saves the detection case's page.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sepvit.data.shapes import CLASSES, ShapesDataset
from service.processes import GatewayProcess
from service.settings import DEMO_MODELS

from .conftest import ROOT, start_gateway

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "demo-page-token"
TIMEOUT_MS = 60_000


def encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    if not Path(CHROMIUM).is_file():
        msg = f"no {CHROMIUM} (make browser installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    # eager: the page is under test here, not the ONNX export (the models answer the same)
    models = [
        {**m.model_dump(mode="json"), "checkpoint": str(ROOT / m.checkpoint), "runtime": "eager"}
        for m in DEMO_MODELS
    ]
    gw = start_gateway(
        tmp_path_factory.mktemp("demo_page"),
        models,
        timeout=240,
        auth_tokens=[TOKEN],
    )
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def browser(gateway: GatewayProcess) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, gateway: GatewayProcess) -> Iterator[Any]:
    """A fresh page with the token entered; ``page.requested`` lists every URL it asked for."""
    page = browser.new_page(viewport={"width": 1100, "height": 820})
    page.set_default_timeout(TIMEOUT_MS)
    page.requested = []
    page.on("request", lambda r: page.requested.append(r.url))
    page.goto(gateway.url + "/")
    # auth is on: the page says so until a token is given
    page.wait_for_function("document.getElementById('status').textContent.includes('token')")
    page.fill("#token", TOKEN)
    page.locator("#token").dispatch_event("change")
    page.wait_for_selector("#model option:not([disabled])", state="attached")
    yield page
    outside = [u for u in page.requested if not u.startswith((gateway.url, "blob:", "data:"))]
    page.close()
    assert not outside, outside


def first_scene(task: str, size: int, label: str | None = None) -> np.ndarray:
    data = ShapesDataset("test", task, size, length=100)
    for scene in data:
        if label is None or CLASSES[scene.label] == label:
            return scene.image
    raise AssertionError(f"no {label} in the first 100 {task} scenes")


def choose(page: Any, model: str) -> None:
    page.select_option("#model", model)


def wait_done(page: Any) -> dict[str, Any]:
    page.wait_for_selector("#result[data-state=done]")
    drawn = page.evaluate(
        """() => {
          const c = document.getElementById('overlay');
          const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let n = 0;
          for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n += 1;
          return {opaque: n, drawn: Number(c.dataset.drawn), w: c.width, h: c.height};
        }"""
    )
    labels = page.locator("#items li .label").all_inner_texts()
    raw = page.locator("#raw").text_content()
    latency = page.locator("#latency").inner_text()
    assert " ms " in latency and latency.startswith("200 in"), latency
    return {**drawn, "labels": labels, "raw": raw}


def drop_or_paste(page: Any, data: bytes, name: str, mime: str, event: str) -> None:
    """Hand the page a file the way a drop or a paste would (a DataTransfer with the file)."""
    page.evaluate(
        """([bytes, name, mime, event]) => {
          const dt = new DataTransfer();
          dt.items.add(new File([new Uint8Array(bytes)], name, {type: mime}));
          const target = event === 'drop' ? document.getElementById('drop') : document;
          const e = event === 'drop'
            ? new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})
            : new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true});
          target.dispatchEvent(e);
        }""",
        [list(data), name, mime, event],
    )


def test_classify_with_the_file_chooser(page: Any) -> None:
    choose(page, "sepvit_lite_shapes_cls")
    page.fill("#top-k", "3")
    circle = encode(first_scene("classify", 224, "circle"), "PNG")
    page.set_input_files(
        "#file", files=[{"name": "c.png", "mimeType": "image/png", "buffer": circle}]
    )
    got = wait_done(page)
    assert got["labels"][0] == "circle", got["labels"]
    assert len(got["labels"]) == 3 and page.locator("#items .bar").count() == 3
    assert json.loads(got["raw"])["results"][0]["top_k"][0]["label"] == "circle"


def test_detect_draws_boxes_on_a_dropped_image(page: Any) -> None:
    choose(page, "sepvit_lite_shapes_det")
    scene = encode(first_scene("detect", 256), "JPEG")
    drop_or_paste(page, scene, "scene.jpg", "image/jpeg", "drop")
    got = wait_done(page)
    body = json.loads(got["raw"])
    detections = body["results"][0]["detections"]
    assert detections and got["drawn"] == len(detections)
    assert {"cross", "square"} <= set(got["labels"]), got["labels"]
    assert (got["w"], got["h"]) == (256, 256)
    # boxes are outlines: far fewer opaque pixels than the image, but some
    assert 0 < got["opaque"] < 256 * 256 // 2
    shot = os.environ.get("SEPVIT_DEMO_SCREENSHOT")
    if shot:
        page.locator("#raw-box summary").click()
        page.screenshot(path=shot, full_page=True)


def test_instance_masks_are_drawn_under_the_boxes(page: Any) -> None:
    """The Mask R-CNN's answer: each detection's RLE mask painted (every pixel of it), then the
    boxes over them."""
    from handlers.outputs import rle_decode

    choose(page, "sepvit_lite_shapes_inst")
    scene = encode(first_scene("detect", 256), "PNG")
    page.set_input_files(
        "#file", files=[{"name": "s.png", "mimeType": "image/png", "buffer": scene}]
    )
    got = wait_done(page)
    detections = json.loads(got["raw"])["results"][0]["detections"]
    assert detections and all("mask" in d for d in detections)
    masks = [rle_decode(d["mask"]) for d in detections]
    painted = page.evaluate("Number(document.getElementById('overlay').dataset.masked)")
    assert painted == sum(int(m.sum()) for m in masks) > 0
    union = int(np.logical_or.reduce(masks).sum())
    assert got["opaque"] >= union and got["drawn"] == len(detections)
    assert {"cross", "square"} <= set(got["labels"]), got["labels"]


def test_segment_draws_masks_on_a_pasted_image(page: Any) -> None:
    choose(page, "sepvit_lite_shapes_seg")
    scene = encode(first_scene("segment", 256), "PNG")
    drop_or_paste(page, scene, "scene.png", "image/png", "paste")
    got = wait_done(page)
    segments = json.loads(got["raw"])["results"][0]["segments"]
    area = sum(s["area"] for s in segments)
    assert segments and area > 0
    # every mask pixel the gateway reported is painted, and nothing else
    assert got["drawn"] == area == got["opaque"], (got, area)
    assert set(got["labels"]) == {s["label"] for s in segments}
    # the server-rendered overlay covers the whole image
    page.select_option("#seg-format", "overlay")
    page.wait_for_function("document.getElementById('raw').textContent.startsWith('image/png')")
    got = wait_done(page)
    assert got["opaque"] == 256 * 256


def test_docs_page_renders_from_the_gateway(browser: Any, gateway: GatewayProcess) -> None:
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(gateway.url + "/")
    page.click("text=API docs")
    title = page.wait_for_selector(".swagger-ui .info .title", timeout=TIMEOUT_MS)
    assert "SepViT serving gateway" in title.inner_text()
    page.wait_for_selector(".opblock-summary-path >> text=/classify", timeout=TIMEOUT_MS)
    page.close()
    outside = [u for u in requested if not u.startswith((gateway.url, "blob:", "data:"))]
    assert requested and not outside, outside
