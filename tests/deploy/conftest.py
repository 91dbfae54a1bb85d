"""Rendered deployment manifests: the Helm chart with each values set, and the kustomize overlays.

helm and kubectl come from ``k8s/tools.sh`` (fetched once into ``.cache/``, as ``make lint-deploy``
does). Rendering takes about a second, so the manifests are rendered once per session.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "k8s" / "helm" / "sepvit-serving"
HELM_VALUES = {
    "default": [],
    "cpu": [CHART / "values-cpu.yaml"],
    "gpu": [CHART / "values-gpu.yaml"],
    "auth-keda": [CHART / "ci" / "auth-keda-values.yaml"],
    "embedded": [CHART / "ci" / "embedded-values.yaml"],
    "own-checkpoints": [CHART / "ci" / "own-checkpoints-values.yaml"],
}
KUSTOMIZE = {
    "base": ROOT / "k8s" / "base",
    **{p.name: p for p in sorted((ROOT / "k8s" / "overlays").iterdir()) if p.is_dir()},
}


@dataclass
class Rendered:
    """One rendering: every object, indexed by kind and name."""

    name: str
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, suffix: str) -> dict[str, Any]:
        """The object of ``kind`` whose name ends with ``suffix``."""
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"].endswith(suffix)]
        assert len(found) == 1, f"{self.name}: {kind} *{suffix}: {len(found)} found"
        return found[0]

    def deployment(self, component: str) -> dict[str, Any] | None:
        for d in self.of_kind("Deployment"):
            if d["metadata"]["labels"].get("app.kubernetes.io/component") == component:
                return d
        return None

    def configmap_data(self, suffix: str) -> dict[str, str]:
        """ConfigMap data by name suffix; kustomize appends a hash to generated names."""
        for cm in self.of_kind("ConfigMap"):
            name = cm["metadata"]["name"]
            if name.endswith(suffix) or name.rsplit("-", 1)[0].endswith(suffix):
                return dict(cm["data"])
        raise AssertionError(f"{self.name}: no ConfigMap *{suffix}")


def _tools() -> tuple[Path, Path]:
    out = subprocess.run(
        ["bash", str(ROOT / "k8s" / "tools.sh")], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        pytest.fail(f"k8s/tools.sh could not fetch helm/kubectl:\n{out.stderr[-2000:]}")
    tools = ROOT / out.stdout.strip()
    return tools / "helm", tools / "kubectl"


def _load(text: str, name: str) -> Rendered:
    return Rendered(name, [d for d in yaml.safe_load_all(text) if d])


@pytest.fixture(scope="session")
def renders() -> dict[str, Rendered]:
    """``helm-<values>`` and ``kustomize-<overlay>`` renderings."""
    helm, kubectl = _tools()
    env = {
        "HELM_CACHE_HOME": str(ROOT / ".cache" / "helm" / "cache"),
        "HELM_CONFIG_HOME": str(ROOT / ".cache" / "helm" / "config"),
        "HELM_DATA_HOME": str(ROOT / ".cache" / "helm" / "data"),
        "PATH": "/usr/bin:/bin",
    }
    out: dict[str, Rendered] = {}
    for name, files in HELM_VALUES.items():
        cmd = [str(helm), "template", "sepvit", str(CHART), "--namespace", "sepvit"]
        for f in files:
            cmd += ["-f", str(f)]
        text = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
        out[f"helm-{name}"] = _load(text, f"helm-{name}")
    for name, path in KUSTOMIZE.items():
        text = subprocess.run(
            [str(kubectl), "kustomize", str(path)], capture_output=True, text=True, check=True
        ).stdout
        out[f"kustomize-{name}"] = _load(text, f"kustomize-{name}")
    return out


def dockerfile_entrypoint(name: str) -> list[str]:
    """The exec-form ENTRYPOINT of ``docker/<name>.Dockerfile`` (the last stage's)."""
    lines = (ROOT / "docker" / f"{name}.Dockerfile").read_text().splitlines()
    entry = [ln for ln in lines if ln.startswith("ENTRYPOINT ")]
    assert entry, f"no ENTRYPOINT in docker/{name}.Dockerfile"
    return list(json.loads(entry[-1].removeprefix("ENTRYPOINT ")))


def properties(text: str) -> dict[str, str]:
    """A Java properties file (the subset TorchServe's config.properties uses)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out
