"""The torchserve backend: the gateway forwards every image to a running TorchServe over gRPC.

One ``grpc.aio`` channel to ``torchserve_address``. A request of N images becomes N concurrent
``Predictions`` calls (TorchServe batches them with other requests by the model's ``batchSize``
and ``maxBatchDelay``), so there is no gateway batcher here. Each call carries the image as the
``data`` input and the request parameters (``top_k``, ``score_threshold``, ``max_detections``,
``format``) as further inputs, which is what :mod:`service.torchserve.handler` reads. Answers:

* a JSON document: the pipeline's result for that image, exactly as the embedded backend gives it;
* PNG bytes (segmentation ``format=png|overlay``): ``{"media_type": "image/png", "data": ...}``;
* ``{"error": {"code", "message"}}``: TorchServe's gRPC answers status OK with the handler's error
  body, so the error is rebuilt here as the matching :mod:`handlers.errors` type (same status and
  code as the embedded backend).

gRPC failures become the gateway's typed errors: TorchServe down or a model without workers is
503 ``not_ready`` ("TorchServe backend unavailable at ..."), a timeout is 504, a full TorchServe
queue is 429; anything else TorchServe reports is 502 ``backend_error``.

Readiness follows TorchServe. A health task calls ``Ping`` every ``torchserve_health_interval_s``
(TorchServe's gRPC needs the inference key for it too). While ``Ping`` fails, every model is
``unavailable`` with the reason. A model that is not ready yet, or every model while TorchServe
reports itself unhealthy, is probed with one ``Predictions`` call without an image: the handler
answers it with an ``undecodable_image`` error body without running the model, which proves the
model is registered, has a worker and accepts the key. A failed call marks its model unavailable
and wakes the health task, so recovery needs no request to succeed first.

The inference key is ``torchserve_token``, or read from ``torchserve_token_file`` (TorchServe's
``key_file.json`` or a file holding only the key). The file is re-read whenever it changes:
TorchServe writes new keys at every start, and when a key is regenerated after it expires.

Metadata (task, labels, input size) comes from the local checkpoint the model entry names, and
batching figures from the ``model-config.yaml`` beside it, so ``GET /models`` and the OIP
metadata routes answer the same as with the embedded backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from pydantic import SecretStr

from handlers.errors import PipelineError

from ..backends.base import Backend, ModelState, Params, ServedModel
from ..errors import (
    BackendError,
    DeadlineExceededError,
    NotReadyError,
    QueueFullError,
    ServiceError,
)
from ..metrics import Metrics
from ..settings import ModelSpec, Settings
from . import torchserve_inference_pb2 as pb
from . import torchserve_inference_pb2_grpc as pb_grpc

__all__ = [
    "TORCHSERVE_BATCH_DELAY_MS",
    "TORCHSERVE_BATCH_SIZE",
    "TokenSource",
    "TorchServeBackend",
    "parse_prediction",
]

log = logging.getLogger(__name__)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PING_TIMEOUT_S = 5.0
MAX_RESPONSE_BYTES = 256 * 1024 * 1024  # overlay PNGs of large images
# TorchServe's defaults for a model without batchSize / maxBatchDelay
TORCHSERVE_BATCH_SIZE = 1
TORCHSERVE_BATCH_DELAY_MS = 100.0


def parse_prediction(body: bytes) -> dict[str, Any] | PipelineError:
    """One ``PredictionResponse.prediction``: a result dict, PNG bytes, or the image's error."""
    if body.startswith(PNG_MAGIC):
        return {"media_type": "image/png", "data": body}
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise BackendError(
            f"TorchServe answered {len(body)} bytes that are neither JSON nor PNG"
        ) from None
    if not isinstance(doc, dict):
        raise BackendError("TorchServe answered JSON that is not an object")
    err = doc.get("error")
    if isinstance(err, dict) and len(doc) == 1:
        code = str(err.get("code") or "bad_request")
        # the error of that kind; an unknown code stays as TorchServe sent it (a 400)
        return PipelineError.from_code(code, str(err.get("message") or code))
    return doc


AUTH_CODES = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})


class TokenSource:
    """The TorchServe inference key: a fixed one, or the one in a file, re-read on change."""

    def __init__(self, token: SecretStr | None, path: Path | None) -> None:
        self.fixed = token.get_secret_value() if token is not None else None
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._value: str | None = None

    def get(self) -> str | None:
        if self.path is None:
            return self.fixed
        try:
            st = self.path.stat()
        except OSError:
            return self._value or self.fixed
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                value = self._read(self.path.read_text())
            except (OSError, ValueError, KeyError, TypeError) as exc:  # half-written: retry later
                log.warning("cannot read the TorchServe key from %s: %s", self.path, exc)
                return self._value or self.fixed
            self._stamp, self._value = stamp, value
        return self._value or self.fixed

    def invalidate(self) -> None:
        """Read the file again at the next ``get``: TorchServe refused the key. (A key rewritten
        with the same size within the file system's time granularity keeps its stamp.)"""
        self._stamp = None

    @staticmethod
    def _read(text: str) -> str:
        text = text.strip()
        if text.startswith("{"):  # TorchServe's key_file.json
            key = json.loads(text)["inference"]["key"]
            if not isinstance(key, str):
                raise TypeError("inference.key is not a string")
            return key
        return text.splitlines()[0].strip() if text else ""


class _Remote(ServedModel):
    """One gateway model served by TorchServe."""

    def __init__(self, spec: ModelSpec, settings: Settings, metrics: Metrics) -> None:
        super().__init__(
            spec,
            settings,
            metrics,
            default_batch_size=TORCHSERVE_BATCH_SIZE,
            default_delay_ms=TORCHSERVE_BATCH_DELAY_MS,
        )
        self.ts_name = settings.torchserve_models.get(spec.name, spec.name)
        # images in flight to TorchServe beyond which new requests get 429 (like a full queue)
        self.max_in_flight = self.max_queue + self.max_batch_size
        self.in_flight = 0
        self.info.batching = {
            "batched_by": "torchserve",
            "torchserve_model": self.ts_name,
            "max_batch_size": self.max_batch_size,
            "max_delay_ms": self.max_delay_ms,
            "max_in_flight": self.max_in_flight,
        }
        self.probed = False  # answered a probe since it last became unavailable

    def read_metadata(self) -> None:
        """Task, labels and input size from the local checkpoint (only its JSON header)."""
        spec = self.spec
        if not spec.checkpoint.is_file():
            if spec.task is None:
                raise FileNotFoundError(
                    f"checkpoint {spec.checkpoint} not found: the torchserve backend reads the "
                    "task, labels and input size from it (or set the model's task)"
                )
            return
        from sepvit.checkpoint import read_metadata

        meta = read_metadata(spec.checkpoint)
        self.check_task(meta["task"])
        cfg = meta["pretrained_cfg"]
        size = cfg.get("input_size")
        self.describe(str(meta["task"]), cfg.get("label_names"), size[1:] if size else None)


class TorchServeBackend(Backend[_Remote]):
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        super().__init__(settings, metrics, _Remote)
        self.address = settings.torchserve_address
        self.tokens = TokenSource(settings.torchserve_token, settings.torchserve_token_file)
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._health: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        for m in self._models.values():
            try:
                m.read_metadata()
            except Exception as exc:
                self._set(m, ModelState.FAILED, str(exc) or type(exc).__name__)
        self._channel = grpc.aio.insecure_channel(
            self.address,
            options=[
                ("grpc.max_send_message_length", self.settings.max_body_bytes + (1 << 20)),
                ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
                # reconnect soon after TorchServe comes back (gRPC's default backoff reaches 2 min)
                ("grpc.initial_reconnect_backoff_ms", 250),
                ("grpc.min_reconnect_backoff_ms", 250),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        self._stub = pb_grpc.InferenceAPIsServiceStub(self._channel)
        self._wake = asyncio.Event()
        self._health = asyncio.get_running_loop().create_task(self._health_loop())

    async def stop(self, timeout: float) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
            self._health = None
        if self._channel is not None:
            await self._channel.close(grace=min(timeout, 5.0))
            self._channel = None
        for m in self._models.values():
            m.stopped()

    # -- health ------------------------------------------------------------------------------
    def _metadata(self) -> tuple[tuple[str, str], ...]:
        token = self.tokens.get()
        return (("authorization", f"Bearer {token}"),) if token else ()

    def _set(self, m: _Remote, state: ModelState, error: str | None = None) -> None:
        if m.info.state is ModelState.FAILED:
            return  # a configuration error (checkpoint): TorchServe cannot fix it
        if state is not m.info.state or error != m.info.error:
            if state is ModelState.READY:
                log.info(
                    "model %s ready on TorchServe %s (%s)", m.spec.name, self.address, m.ts_name
                )
            else:
                log.warning("model %s %s: %s", m.spec.name, state.value, error)
        if state is not ModelState.READY:
            m.probed = False
        m.set_state(state, error)

    def _unavailable(self, detail: str) -> str:
        return f"TorchServe backend unavailable at {self.address}: {detail}"

    async def _health_loop(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the loop die
                log.exception("TorchServe health check failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), timeout=self.settings.torchserve_health_interval_s
                )

    async def check(self) -> None:
        """One health check: ``Ping``, then probe the models that need it."""
        try:
            reply = await self._stub.Ping(
                pb.Empty(), metadata=self._metadata(), timeout=PING_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            self._forget_refused_key(exc)
            reason = self._rpc_reason(exc)
            for m in self._models.values():
                self._set(m, ModelState.UNAVAILABLE, reason)
            return
        try:
            status = str(json.loads(reply.health).get("status"))
        except (ValueError, AttributeError):
            status = reply.health
        healthy = status == "Healthy"
        todo = [m for m in self._models.values() if not (healthy and m.probed)]
        await asyncio.gather(*(self._probe(m) for m in todo))

    async def _probe(self, m: _Remote) -> None:
        """A ``Predictions`` call without an image: the handler refuses it without inference."""
        if m.info.state is ModelState.FAILED:
            return
        req = pb.PredictionsRequest(model_name=m.ts_name)
        try:
            await self._stub.Predictions(
                req, metadata=self._metadata(), timeout=self.settings.torchserve_timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            self._forget_refused_key(exc)
            self._set(m, ModelState.UNAVAILABLE, self._rpc_reason(exc, m))
            return
        m.probed = True
        self._set(m, ModelState.READY)

    def _forget_refused_key(self, exc: grpc.aio.AioRpcError) -> None:
        """TorchServe refused the key: re-read the key file before the next call."""
        if exc.code() in AUTH_CODES:
            self.tokens.invalidate()

    def _rpc_reason(self, exc: grpc.aio.AioRpcError, m: _Remote | None = None) -> str:
        """A clear sentence for a failed call (the readiness reason and 503 message); no effects."""
        code, details = exc.code(), (exc.details() or "").splitlines()
        detail = (details[0] if details else code.name)[:300]
        if code in AUTH_CODES:
            source = self.settings.torchserve_token_file or "torchserve_token"
            return self._unavailable(
                f"it refused the inference key from {source} (TorchServe writes new keys at "
                f"every start, and they expire): {detail}"
            )
        if m is not None and "Model not found" in detail:
            return self._unavailable(f"it serves no model {m.ts_name!r}")
        if m is not None and "no worker" in detail:
            return self._unavailable(f"model {m.ts_name!r} has no worker yet")
        return self._unavailable(f"{code.name}: {detail}")

    # -- requests ----------------------------------------------------------------------------
    async def execute(
        self, m: _Remote, payloads: Sequence[bytes], params: Params, deadline: float
    ) -> list[Any]:
        n = len(payloads)
        if m.in_flight and m.in_flight + n > m.max_in_flight:
            self.metrics.rejected.labels(m.name, "queue_full").inc()
            raise QueueFullError(
                f"model {m.name!r} has {m.in_flight} images in flight to TorchServe "
                f"(limit {m.max_in_flight})",
                retry_after=self.settings.retry_after_s,
            )
        m.in_flight += n
        self.metrics.queue_depth.labels(m.name).set(m.in_flight)
        calls = [
            asyncio.ensure_future(self._predict(m, payload, p or {}, deadline))
            for payload, p in zip(payloads, params, strict=True)
        ]
        try:
            results: list[Any] = await asyncio.gather(*calls)
        except BaseException:
            for c in calls:
                c.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            raise
        finally:
            m.in_flight -= n
            self.metrics.queue_depth.labels(m.name).set(m.in_flight)
        m.record(results)
        return results

    async def _predict(
        self, m: _Remote, payload: bytes, params: Mapping[str, Any], deadline: float
    ) -> dict[str, Any] | PipelineError:
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise DeadlineExceededError("the request deadline passed before TorchServe answered")
        timeout = min(remaining, self.settings.torchserve_timeout_s)
        inputs = {"data": payload}
        inputs.update({k: str(v).encode() for k, v in params.items() if v is not None})
        req = pb.PredictionsRequest(model_name=m.ts_name, input=inputs)
        metadata = self._metadata()
        try:
            try:
                reply = await self._stub.Predictions(req, metadata=metadata, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                # a refused key: once more if the key file now holds another one (TorchServe
                # restarted and wrote a new key); nothing ran, so nothing runs twice
                if exc.code() not in AUTH_CODES:
                    raise
                self.tokens.invalidate()
                if self._metadata() == metadata:
                    raise
                remaining = min(timeout, deadline - loop.time())
                if remaining <= 0:
                    raise
                reply = await self._stub.Predictions(
                    req, metadata=self._metadata(), timeout=remaining
                )
        except grpc.aio.AioRpcError as exc:
            raise self._call_error(exc, m, timeout) from None
        return parse_prediction(reply.prediction)

    def _call_error(self, exc: grpc.aio.AioRpcError, m: _Remote, timeout: float) -> ServiceError:
        code = exc.code()
        retry = self.settings.retry_after_s
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceededError(f"TorchServe did not answer within {timeout:.1f} s")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return QueueFullError(
                f"TorchServe refused the request (queue full): {exc.details()}", retry_after=retry
            )
        detail = exc.details() or ""
        if code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.CANCELLED,
        ) or (
            code == grpc.StatusCode.INTERNAL
            and ("Model not found" in detail or "no worker" in detail)
        ):
            # TorchServe is down, restarting, or lost the model: unready until a check passes
            self._forget_refused_key(exc)
            reason = self._rpc_reason(exc, m)
            self._set(m, ModelState.UNAVAILABLE, reason)
            self._wake.set()
            self.metrics.rejected.labels(m.spec.name, "not_ready").inc()
            return NotReadyError(reason, retry_after=retry)
        first = detail.splitlines()[0][:300] if detail else ""
        return BackendError(f"TorchServe at {self.address} failed: {code.name}: {first}")
