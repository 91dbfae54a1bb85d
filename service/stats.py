"""Triton's statistics extension: cumulative per-model figures for ``ModelStatistics`` (gRPC) and
``GET /v2/models[/{name}[/versions/{v}]]/stats`` (REST), in Triton's message shape.

The figures are the batcher's own: it records a request's queue wait and a batch's phase times
here beside the statements that observe them for ``/metrics``, from the same values, so the two
agree: ``sepvit_queue_wait_seconds`` sum = ``queue.ns``; ``sepvit_phase_duration_seconds`` sums
= the ``batch_stats`` compute sums; ``sepvit_batch_size`` count and sum = ``execution_count`` and
``inference_count`` (a batch whose run raised is in ``/metrics`` only: the statistics count the
batches that ran). Phases map as preprocess (decode + preprocess) -> ``compute_input``,
inference -> ``compute_infer``, postprocess -> ``compute_output``.

Per request, as Triton counts them: ``success``/``fail`` time a request from the moment its model
is known to its answer (queue and compute included); ``queue`` and ``compute_*`` charge each
request the time of the batch it ran in, so a batch of n requests adds its time n times there and
once in ``batch_stats`` (keyed by images per batch). The torchserve backend batches inside
TorchServe, out of the gateway's sight: its models report success and fail only.

Everything is recorded on the event loop (the data plane and the batcher's worker), so plain
counters need no lock.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PHASE_FIELDS", "InferenceStats"]

PHASE_FIELDS = {
    "preprocess": "compute_input",
    "inference": "compute_infer",
    "postprocess": "compute_output",
}


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns * count

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


def _durations(names: Iterable[str]) -> dict[str, _Duration]:
    return {n: _Duration() for n in names}


@dataclass
class _Model:
    inference: dict[str, _Duration] = field(
        default_factory=lambda: _durations(["success", "fail", "queue", *PHASE_FIELDS.values()])
    )
    batches: dict[int, dict[str, _Duration]] = field(default_factory=dict)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0


class InferenceStats:
    """Every model's cumulative statistics since the gateway started."""

    def __init__(self) -> None:
        self._models: dict[str, _Model] = {}

    def _model(self, name: str) -> _Model:
        return self._models.setdefault(name, _Model())

    # -- recording ---------------------------------------------------------------------------
    def queued(self, model: str, seconds: float) -> None:
        """One request left the queue for its batch after ``seconds``."""
        self._model(model).inference["queue"].add(_ns(seconds))

    def executed(self, model: str, requests: int, images: int, phases: Mapping[str, float]) -> None:
        """A batch of ``requests`` requests (``images`` images) ran; ``phases`` in seconds."""
        m = self._model(model)
        m.execution_count += 1
        m.inference_count += images
        batch = m.batches.setdefault(images, _durations(PHASE_FIELDS.values()))
        for phase, name in PHASE_FIELDS.items():
            ns = _ns(phases.get(phase, 0.0))
            batch[name].add(ns)
            m.inference[name].add(ns, requests)

    def finished(self, model: str, ok: bool, seconds: float) -> None:
        """A request for ``model`` was answered (``ok``) or failed after ``seconds``."""
        m = self._model(model)
        m.inference["success" if ok else "fail"].add(_ns(seconds))
        m.last_inference_ms = int(time.time() * 1000)

    # -- reading -----------------------------------------------------------------------------
    def model_stats(self, name: str) -> dict[str, Any]:
        """One model's ``ModelStatistics`` as Triton's JSON (and ``json_format``) shape."""
        m = self._models.get(name) or _Model()
        return {
            "name": name,
            "version": "1",
            "last_inference": m.last_inference_ms,
            "inference_count": m.inference_count,
            "execution_count": m.execution_count,
            "inference_stats": {k: d.as_dict() for k, d in m.inference.items()},
            "batch_stats": [
                {"batch_size": size, **{k: d.as_dict() for k, d in m.batches[size].items()}}
                for size in sorted(m.batches)
            ],
        }
