"""TorchServe entry point: a thin ``BaseHandler`` around :class:`handlers.pipeline.Pipeline`.

TorchServe imports this module inside its worker: :mod:`service.torchserve.archive` packs this
file as the archive's ``handler.py`` beside the ``sepvit`` and ``handlers`` packages and the error
table ``service/errors.py``, so it imports only those of this project (no other gateway code:
the archive does not carry it), plus ``ts``.

Request rows (one per request in TorchServe's batch):

* the image: the raw body (``body``), or a multipart part named ``data``, ``file`` or ``image``,
  or the gRPC ``Predictions`` input of the same names;
* parameters: ``top_k``, ``score_threshold``, ``format`` as query parameters, multipart fields or
  gRPC inputs.

Responses: the pipeline's JSON result for that image, or for ``format=png``/``overlay`` the PNG
bytes with their content type. A failing image gets its own HTTP status through
``context.set_response_status(idx=...)`` and a JSON error body
``{"error": {"code", "message"}}``; the other requests of the batch are answered normally.
Every response carries ``x-sepvit-batch-size``: the number of requests in its TorchServe batch.

The model comes from the archive: ``model.safetensors`` (a native checkpoint; override with the
``handler.checkpoint`` key of ``model-config.yaml``) and the pipeline options from the
``handler:`` section (runtime, on_parity_failure, top_k, buckets, limits, ...), see
:meth:`handlers.pipeline.PipelineConfig.from_mapping`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler

from handlers.errors import ImageDecodeError, PipelineError
from handlers.params import PARAM_KEYS
from handlers.pipeline import Pipeline, PipelineConfig
from service.errors import ImageError, describe

log = logging.getLogger(__name__)

IMAGE_KEYS = ("body", "data", "file", "image")


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def split_row(row: dict[str, Any]) -> tuple[bytes | None, dict[str, str]]:
    """The image bytes and request parameters of one TorchServe request row."""
    payload: bytes | None = None
    for key in IMAGE_KEYS:
        value = row.get(key)
        if isinstance(value, bytes | bytearray):
            payload = bytes(value)
            break
        if isinstance(value, str) and value:  # a text body is not an image
            payload = value.encode("utf-8")
            break
    params = {k: _text(row[k]) for k in PARAM_KEYS if row.get(k) not in (None, b"", "")}
    return payload, params


class SepViTHandler(BaseHandler):
    """Serves one SepViT classifier, detector or segmenter."""

    def __init__(self) -> None:
        super().__init__()
        self.pipeline: Pipeline | None = None

    def initialize(self, context: Any) -> None:
        from sepvit.registry import checkpoint_info, load_model

        props = context.system_properties
        model_dir = Path(props.get("model_dir", "."))
        yaml_cfg = getattr(context, "model_yaml_config", None) or {}
        options = dict(yaml_cfg.get("handler") or {})
        checkpoint = model_dir / str(options.pop("checkpoint", "model.safetensors"))
        threads = int(options.get("threads") or os.environ.get("SEPVIT_TORCH_THREADS") or 1)
        torch.set_num_threads(max(1, threads))
        meta = checkpoint_info(checkpoint)
        model = load_model(checkpoint)
        self.pipeline = Pipeline(model, PipelineConfig.from_mapping(options))
        self.model = model
        self.initialized = True
        log.info(
            "loaded %s (%s, runtime %s: %s) from %s",
            meta["variant"],
            meta["task"],
            self.pipeline.runtime.name,
            self.pipeline.runtime_info,
            checkpoint,
        )

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        if self.pipeline is None:
            raise RuntimeError("handler used before initialize()")
        payloads: list[bytes] = []
        params: list[dict[str, str]] = []
        slots: list[int] = []
        out: list[Any] = [None] * len(data)
        for i in range(len(data)):  # how many requests TorchServe batched into this call
            context.set_response_header(i, "x-sepvit-batch-size", str(len(data)))
        for i, row in enumerate(data):
            payload, p = split_row(row)
            if payload is None:
                err = ImageDecodeError("no image in the request (send a body or a 'data' part)")
                out[i] = self._fail(context, i, err)
                continue
            payloads.append(payload)
            params.append(p)
            slots.append(i)
        if payloads:
            try:
                results = self.pipeline.handle(payloads, params)
            except PipelineError as exc:  # request-level failure: every row gets it
                results = [exc] * len(payloads)
            for i, res in zip(slots, results, strict=True):
                if isinstance(res, PipelineError):
                    out[i] = self._fail(context, i, res)
                elif "media_type" in res:
                    context.set_response_content_type(i, res["media_type"])
                    out[i] = res["data"]
                else:
                    out[i] = res
        return out

    @staticmethod
    def _fail(context: Any, idx: int, exc: PipelineError) -> ImageError:
        info = describe(exc)  # the one kind -> status table, shipped in the archive
        context.set_response_status(code=info.http_status, phrase=info.message[:200], idx=idx)
        return info.image_body()
