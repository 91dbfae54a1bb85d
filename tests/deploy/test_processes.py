"""The rendered containers' exact commands as plain processes on 127.0.0.1.

Each container command is taken from the rendered manifest (and the image's ENTRYPOINT) and run
with only what a pod would differ in remapped: listen addresses to 127.0.0.1, ports to free ones,
mount paths (/etc/sepvit, /opt/sepvit, the model store) to temporary directories, and the image's
working directory to a temporary one holding tiny random-weight demo checkpoints. Then the probes
are exercised the way the kubelet would: TorchServe's /ping, the gateway's startup, liveness and
readiness probes (httpGet, or the exec form with the mounted token), the helm test hook and
SIGTERM with the rendered drain delay.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sepvit import create_model, save_checkpoint
from sepvit.data.shapes import CLASSES
from service.processes import ServerProcess, child_env, free_port
from service.torchserve.archive import main as archive_main
from tests.service.conftest import tiny_models

from .conftest import Rendered, dockerfile_entrypoint, properties
from .test_manifests import env_of, gateway, pod_spec, torchserve

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
STARTUP_S = 180.0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The images' working directory: model_store/<name>/model.safetensors for the demo models
    (tiny random weights, 64 px) beside the repository's model-config.yaml files."""
    root = tmp_path_factory.mktemp("image")
    models = {f"sepvit_lite_shapes_{k}": m for k, m in tiny_models().items()}
    models["sepvit_lite_shapes_inst"] = create_model(  # the Mask R-CNN demo's stand-in
        "sepvit_lite",
        task="detect",
        head="mask_rcnn",
        num_classes=8,
        img_size=64,
        label_names=list(CLASSES),
        fpn_channels=16,
        fc_channels=32,
    )
    for name, model in models.items():
        d = root / "model_store" / name
        d.mkdir(parents=True)
        save_checkpoint(model.eval(), d / "model.safetensors")
    return root


def image_cache(workdir: Path) -> Path:
    """The images' ``SEPVIT_CACHE_DIR`` (``/tmp/sepvit-cache``, set in both Dockerfiles), shared
    by this module's pods: entries are keyed by content, so the TorchServe pod's auto decisions
    serve the gateway pod's same models and threads, and each runtime search runs once."""
    return workdir.parent / f"{workdir.name}-sepvit-cache"


def mount_configmap(data: dict[str, str], etc: Path) -> None:
    etc.mkdir(parents=True, exist_ok=True)
    for key, text in data.items():
        (etc / key).write_text(text.replace("/etc/sepvit/", f"{etc}/"))


@dataclass
class TorchServe:
    proc: ServerProcess
    http: int
    grpc: int
    cwd: Path


@pytest.fixture(scope="module")
def torchserve_pod(
    renders: dict[str, Rendered], workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TorchServe]:
    """The default rendering's TorchServe pod: its init containers, then its container."""
    r = renders["helm-default"]
    spec = pod_spec(torchserve(r))
    tmp = tmp_path_factory.mktemp("torchserve")
    etc, store, logs = tmp / "etc-sepvit", tmp / "model-store", tmp / "logs"
    mount_configmap(r.configmap_data("-models"), etc)
    store.mkdir()
    logs.mkdir()
    image_root = workdir  # /opt/sepvit in the image holds the same model_store/ tree
    for init in spec["initContainers"]:
        argv = [
            a.replace("/etc/sepvit/", f"{etc}/")
            .replace("/opt/sepvit/", f"{image_root}/")
            .replace("/home/model-server/model-store", str(store))
            for a in init["args"]
        ]
        assert init["command"] == ["sepvit-archive"]
        assert archive_main(argv) == 0
    assert sorted(p.name for p in store.iterdir()) == sorted(
        f"{m['name']}.mar"
        for m in yaml.safe_load(r.configmap_data("-models")["models.yaml"])["models"]
    )
    c = spec["containers"][0]
    props = properties(r.configmap_data("-torchserve-config")["config.properties"])
    ports = {k: free_port() for k in ("http", "grpc", "mgmt", "metrics", "grpcm")}
    props.update(
        inference_address=f"http://127.0.0.1:{ports['http']}",
        grpc_inference_address="127.0.0.1",
        grpc_inference_port=str(ports["grpc"]),
        management_address=f"http://127.0.0.1:{ports['mgmt']}",
        metrics_address=f"http://127.0.0.1:{ports['metrics']}",
        grpc_management_port=str(ports["grpcm"]),
        model_store=str(store),
    )
    conf = tmp / "etc-torchserve" / "config.properties"
    conf.parent.mkdir()
    conf.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    argv = dockerfile_entrypoint("torchserve")[3:] + c["args"]  # tini -g -- is the group kill
    argv = [str(conf) if a == "/etc/torchserve/config.properties" else a for a in argv]
    argv[0] = str(BIN / argv[0])
    env = child_env(OMP_NUM_THREADS="1", SEPVIT_CACHE_DIR=str(image_cache(workdir)))
    env.update(TEMP=str(tmp), LOG_LOCATION=str(logs), METRICS_LOCATION=str(logs))
    cwd = tmp / "home"
    cwd.mkdir()
    proc = ServerProcess.launch(argv, cwd, env, tmp / "torchserve.log", group=True)
    ts = TorchServe(proc, ports["http"], ports["grpc"], cwd)
    try:
        yield ts
    finally:
        proc.stop(60)


def test_torchserve_pod_answers_its_probes(
    torchserve_pod: TorchServe, renders: dict[str, Rendered]
) -> None:
    c = pod_spec(torchserve(renders["helm-default"]))["containers"][0]
    path = c["readinessProbe"]["httpGet"]["path"]
    torchserve_pod.proc.wait_http(
        f"http://127.0.0.1:{torchserve_pod.http}{path}", (200,), timeout=STARTUP_S
    )
    # token auth is off in the cluster config: no key file is written (the root filesystem is
    # read-only there) and a request without a key reaches the handler
    assert not (torchserve_pod.cwd / "key_file.json").exists()


def gateway_argv(c: dict[str, Any], etc: Path) -> tuple[list[str], dict[str, int]]:
    entry = dockerfile_entrypoint("gateway")
    ports = {"http": free_port(), "grpc": free_port()}
    out: list[str] = [str(BIN / entry[0]), *entry[1:]]
    args = list(c["args"])
    for i, a in enumerate(args):
        prev = args[i - 1] if i else ""
        if prev == "--host":
            assert a == "0.0.0.0"
            a = "127.0.0.1"
        elif prev == "--port":
            a = str(ports["http"])
        elif prev == "--grpc-port":
            a = str(ports["grpc"])
        out.append(a.replace("/etc/sepvit/", f"{etc}/"))
    return out, ports


def start_gateway_pod(
    r: Rendered, workdir: Path, tmp: Path, env_over: dict[str, str] | None = None
) -> tuple[ServerProcess, dict[str, Any], dict[str, int], dict[str, str]]:
    c = pod_spec(gateway(r))["containers"][0]
    etc = tmp / "etc-sepvit"
    mount_configmap(r.configmap_data("-models"), etc)
    argv, ports = gateway_argv(c, etc)
    env = child_env(OMP_NUM_THREADS="1", SEPVIT_CACHE_DIR=str(image_cache(workdir)))
    rendered_env = env_of(c)
    for var, value in rendered_env.items():
        if var == "SEPVIT_AUTH_TOKEN_FILE":
            token = tmp / "secret" / Path(value).name
            token.parent.mkdir()
            token.write_text("deploy-test-token\n")
            value = str(token)
        env[var] = value
    env.update(env_over or {})
    proc = ServerProcess.launch(argv, workdir, env, tmp / "gateway.log")
    return proc, c, ports, {**rendered_env, **{k: env[k] for k in rendered_env}}


def probe_url(c: dict[str, Any], kind: str, ports: dict[str, int]) -> str:
    get = c[kind]["httpGet"]
    return f"http://127.0.0.1:{ports[get['port']]}{get['path']}"


def run_exec_probe(c: dict[str, Any], kind: str, env: dict[str, str], port: int) -> int:
    cmd = list(c[kind]["exec"]["command"])
    rendered_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "http")
    cmd[2] = cmd[2].replace(f"127.0.0.1:{rendered_port}/", f"127.0.0.1:{port}/")
    cmd[0] = sys.executable
    return subprocess.run(
        cmd, env={**child_env(OMP_NUM_THREADS="1"), **env}, capture_output=True, timeout=30
    ).returncode


def test_gateway_pod_with_torchserve_backend_becomes_ready(
    renders: dict[str, Rendered], workdir: Path, torchserve_pod: TorchServe, tmp_path: Path
) -> None:
    """The default release end to end: rendered gateway -> rendered TorchServe, all ready, an
    image classified, then SIGTERM drains for the rendered delay before exiting."""
    r = renders["helm-default"]
    address = {"SEPVIT_TORCHSERVE_ADDRESS": f"127.0.0.1:{torchserve_pod.grpc}"}
    proc, c, ports, env = start_gateway_pod(r, workdir, tmp_path, address)
    try:
        for kind in ("startupProbe", "livenessProbe"):
            proc.wait_http(probe_url(c, kind, ports), (200,), timeout=60)
        proc.wait_http(probe_url(c, "readinessProbe", ports), (200,), timeout=STARTUP_S)
        # the helm test hook's script, against this gateway
        (pod,) = r.of_kind("Pod")
        hook = pod["spec"]["containers"][0]
        hook_env = {
            **child_env(OMP_NUM_THREADS="1"),
            **env_of(hook),
            "GATEWAY_URL": f"http://127.0.0.1:{ports['http']}",
        }
        out = subprocess.run(
            [sys.executable, "-c", hook["command"][2]],
            env=hook_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        models = [
            m["name"] for m in yaml.safe_load(r.configmap_data("-models")["models.yaml"])["models"]
        ]
        assert out.stdout.count(" 200 ") == len(models)
        # graceful termination: readiness drops at once, the process stays for the drain delay,
        # and exits well inside terminationGracePeriodSeconds
        drain = float(env["SEPVIT_DRAIN_DELAY_S"])
        grace = pod_spec(gateway(r))["terminationGracePeriodSeconds"]
        t0 = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert httpx.get(probe_url(c, "readinessProbe", ports), timeout=5).status_code == 503
        assert httpx.get(probe_url(c, "livenessProbe", ports), timeout=5).status_code == 200
        proc.proc.wait(grace)
        took = time.monotonic() - t0
        assert drain - 0.5 <= took < grace, took
        # uvicorn re-raises the SIGTERM it handled once shutdown is complete
        assert proc.proc.returncode in (0, -signal.SIGTERM), proc.tail()
        assert "Application shutdown complete" in proc.tail()
    finally:
        proc.stop()


def test_embedded_gateway_pod_answers_its_probes(
    renders: dict[str, Rendered], workdir: Path, tmp_path: Path
) -> None:
    r = renders["helm-embedded"]
    proc, c, ports, _ = start_gateway_pod(r, workdir, tmp_path, {"SEPVIT_DRAIN_DELAY_S": "0"})
    try:
        assert "--no-grpc" in c["args"]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            proc.wait_http(probe_url(c, kind, ports), (200,), timeout=STARTUP_S)
        body = httpx.get(f"http://127.0.0.1:{ports['http']}/models", timeout=10).json()
        served = {m["name"] for m in body["models"]}  # the ConfigMap's models file
        assert served == {
            m["name"] for m in yaml.safe_load(r.configmap_data("-models")["models.yaml"])["models"]
        }
        assert httpx.get(f"http://127.0.0.1:{ports['http']}/metrics", timeout=10).status_code == 200
    finally:
        proc.stop()


def test_gateway_pod_with_auth_runs_its_exec_probe(
    renders: dict[str, Rendered], workdir: Path, tmp_path: Path
) -> None:
    """Auth on: liveness stays open, readiness needs the token that the exec probe reads from the
    mounted Secret. The TorchServe address is a closed loopback port, so the backend is down."""
    r = renders["helm-auth-keda"]
    closed = {"SEPVIT_TORCHSERVE_ADDRESS": f"127.0.0.1:{free_port()}", "SEPVIT_DRAIN_DELAY_S": "0"}
    proc, c, ports, env = start_gateway_pod(r, workdir, tmp_path, closed)
    try:
        proc.wait_http(probe_url(c, "livenessProbe", ports), (200,), timeout=60)
        ready = f"http://127.0.0.1:{ports['http']}/v2/health/ready"
        assert httpx.get(ready, timeout=5).status_code == 401  # the route is protected
        # the exec probe authenticates; readiness is false while TorchServe is unreachable
        assert run_exec_probe(c, "readinessProbe", env, ports["http"]) != 0
        token = Path(env["SEPVIT_AUTH_TOKEN_FILE"]).read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(ready, headers=auth, timeout=5).status_code == 503
        # and it passes once readiness is true: check the command against liveness-as-readiness
        probe = dict(c["readinessProbe"])
        live = {
            "readinessProbe": {
                "exec": {
                    "command": [
                        *probe["exec"]["command"][:2],
                        probe["exec"]["command"][2].replace("/v2/health/ready", "/v2/health/live"),
                    ]
                }
            },
            "ports": c["ports"],
        }
        assert run_exec_probe(live, "readinessProbe", env, ports["http"]) == 0
    finally:
        proc.stop()
