"""Static: the gateway's worst-case memory (``Settings.memory_budget``, docs/reliability.md)
fits the Helm chart's memory limit, for the chart's values and for the settings' defaults."""

from __future__ import annotations

from pathlib import Path

import yaml

from handlers.decode import DECODE_BYTES_PER_PIXEL
from service.loader import load_settings
from service.settings import MiB

CHART = Path(__file__).resolve().parents[2] / "k8s/helm/sepvit-serving"
UNITS = {"Ki": 1024, "Mi": MiB, "Gi": 1024 * MiB}


def _bytes(quantity: str) -> int:
    for unit, factor in UNITS.items():
        if quantity.endswith(unit):
            return int(float(quantity[: -len(unit)]) * factor)
    return int(quantity)


def test_defaults_and_chart_values_fit_the_memory_limit() -> None:
    gateway = yaml.safe_load((CHART / "values.yaml").read_text())["gateway"]
    limit = _bytes(gateway["resources"]["limits"]["memory"])
    chart = load_settings(
        models=[],
        backend=gateway["backend"],
        max_concurrent_requests=gateway["maxConcurrentRequests"],
    )
    defaults = load_settings(models=[])
    for settings in (chart, defaults):
        budget = settings.memory_budget()
        assert budget.total <= limit, (settings.backend, budget, limit)
    # the embedded backend's images: one shared budget of max_pixels decoded pixels
    assert defaults.memory_budget().images == defaults.max_pixels * DECODE_BYTES_PER_PIXEL
    # the gRPC message cap is the body cap
    assert chart.max_body_bytes == defaults.max_body_bytes
