"""The deployment manifests against the application: every command, flag, env var, port, probe
path and config file they name exists and means what they assume (static checks; the processes
themselves are started in test_processes.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import _parser
from service.settings import Settings
from service.torchserve.archive import validate_config

from .conftest import ROOT, Rendered, dockerfile_entrypoint, properties

HELM = [
    "helm-default",
    "helm-cpu",
    "helm-gpu",
    "helm-auth-keda",
    "helm-embedded",
    "helm-own-checkpoints",
]
KUST = ["kustomize-base", "kustomize-cpu", "kustomize-gpu"]
ALL = HELM + KUST
WITH_TORCHSERVE = [n for n in ALL if n != "helm-embedded"]
MODEL_STORE = ROOT / "model_store"
# read by the handlers themselves (also inside TorchServe's workers), not gateway settings
HANDLER_VARS = {"SEPVIT_CACHE_DIR"}
# config.properties keys that the container/cluster version changes on purpose
CONTAINER_KEYS = {
    "inference_address",
    "grpc_inference_address",
    "disable_token_authorization",
    "model_store",
}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(obj)
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def gateway(r: Rendered) -> dict[str, Any]:
    d = r.deployment("gateway")
    assert d is not None
    return d


def torchserve(r: Rendered) -> dict[str, Any]:
    d = r.deployment("torchserve")
    assert d is not None
    return d


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


@pytest.mark.parametrize("name", ALL)
def test_gateway_command_flags_and_env_exist(renders: dict[str, Rendered], name: str) -> None:
    c = pod_spec(gateway(renders[name]))["containers"][0]
    entry = dockerfile_entrypoint("gateway")
    assert entry == ["sepvit-serve"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'sepvit-serve = "service.cli:main"' in pyproject
    args = _parser().parse_args(c.get("args", []))  # exits (fails) on an unknown flag
    assert args.host == "0.0.0.0"
    fields = set(Settings.model_fields)
    for var in env_of(c):
        assert var.startswith("SEPVIT_"), var
        if var in HANDLER_VARS:
            continue
        assert var.removeprefix("SEPVIT_").lower() in fields, f"{var} is not a gateway setting"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == args.port
    if args.no_grpc:
        assert "grpc" not in ports
    else:
        assert ports["grpc"] == args.grpc_port


@pytest.mark.parametrize("name", ALL)
def test_gateway_settings_load_from_the_rendered_pod(
    renders: dict[str, Rendered], name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rendered args + env + mounted models file build valid Settings."""
    r = renders[name]
    c = pod_spec(gateway(r))["containers"][0]
    data = r.configmap_data("-models")
    etc = tmp_path / "etc"
    etc.mkdir()
    for key, text in data.items():
        (etc / key).write_text(text.replace("/etc/sepvit/", f"{etc}/"))
    argv = [a.replace("/etc/sepvit/", f"{etc}/") for a in c["args"]]
    args = _parser().parse_args(argv)
    for key in [k for k in os.environ if k.startswith("SEPVIT_")]:
        monkeypatch.delenv(key)
    for var, value in env_of(c).items():
        if var == "SEPVIT_AUTH_TOKEN_FILE":
            token = tmp_path / "tokens"
            token.write_text("t0\n")
            value = str(token)
        monkeypatch.setenv(var, value)
    from service.loader import load_settings

    s = load_settings(
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        models_file=args.models,
        backend=args.backend,
        workers=args.workers,
        torch_threads=args.torch_threads,
        log_level=args.log_level,
    )
    names = [m["name"] for m in yaml.safe_load(data["models.yaml"])["models"]]
    assert [m.name for m in s.models] == names
    for m in s.models:
        # every model's config file is in the ConfigMap, and the checkpoint path is the image's
        # (or, absolute, on a mounted volume: test_own_checkpoints_come_from_volumes)
        assert m.model_config_file is not None and m.model_config_file.is_file()
        if not m.checkpoint.is_absolute():
            assert (ROOT / m.checkpoint).parent == MODEL_STORE / m.name
    if s.backend == "torchserve":
        ts_service = r.get("Service", "-torchserve")
        host, port = s.torchserve_address.rsplit(":", 1)
        assert host == ts_service["metadata"]["name"]
        grpc = {p["name"]: p["port"] for p in ts_service["spec"]["ports"]}["grpc"]
        assert int(port) == grpc
    else:
        assert r.deployment("torchserve") is None


@pytest.mark.parametrize("name", ALL)
def test_probe_paths_are_gateway_routes(renders: dict[str, Rendered], name: str) -> None:
    from service.app import create_app

    paths = set(create_app(Settings(models=[])).openapi()["paths"])
    c = pod_spec(gateway(renders[name]))["containers"][0]
    named = {p["name"] for p in c["ports"]}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = c[kind]
        if "httpGet" in probe:
            assert probe["httpGet"]["path"] in paths
            assert probe["httpGet"]["port"] in named
        else:  # the authenticated exec form: Python that reads the mounted token
            cmd = probe["exec"]["command"]
            assert cmd[:2] == ["python", "-c"]
            compile(cmd[2], f"{name}:{kind}", "exec")
            assert "SEPVIT_AUTH_TOKEN_FILE" in env_of(c)
            assert any(p in cmd[2] for p in paths if p.startswith("/v2/health"))
    # liveness stays unauthenticated (the gateway exempts it), so it is always plain httpGet
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


@pytest.mark.parametrize("name", ALL)
def test_termination_covers_the_gateway_drain(renders: dict[str, Rendered], name: str) -> None:
    d = gateway(renders[name])
    spec = pod_spec(d)
    c = spec["containers"][0]
    env = env_of(c)
    pre = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    need = pre + float(env["SEPVIT_DRAIN_DELAY_S"]) + float(env["SEPVIT_SHUTDOWN_GRACE_S"])
    assert spec["terminationGracePeriodSeconds"] >= need
    assert spec["terminationGracePeriodSeconds"] <= need + 15  # and not much longer


@pytest.mark.parametrize("name", ALL)
def test_every_container_is_hardened_and_sized(renders: dict[str, Rendered], name: str) -> None:
    pods = [o for o in renders[name].objects if o["kind"] in ("Deployment", "Pod")]
    assert pods
    for obj in pods:
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for c in containers(obj):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), (obj["kind"], c["name"])
            assert ":" in c["image"] and not c["image"].endswith(":latest")


@pytest.mark.parametrize("name", WITH_TORCHSERVE)
def test_torchserve_command_ports_and_config(renders: dict[str, Rendered], name: str) -> None:
    from ts.arg_parser import ArgParser

    r = renders[name]
    spec = pod_spec(torchserve(r))
    c = spec["containers"][0]
    entry = dockerfile_entrypoint("torchserve")
    assert entry[:3] == ["tini", "-g", "--"]
    argv = entry[3:] + c["args"]
    assert argv[0] == "torchserve"
    ns = ArgParser.ts_parser().parse_args(argv[1:])
    assert ns.foreground and ns.no_config_snapshots
    conf_mount = next(m for m in c["volumeMounts"] if m["name"] == "config")["mountPath"]
    assert Path(ns.ts_config).parent == Path(conf_mount)
    props = properties(r.configmap_data("-torchserve-config")["config.properties"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert props["inference_address"] == f"http://0.0.0.0:{ports['http']}"
    assert props["grpc_inference_address"] == "0.0.0.0"
    assert int(props["grpc_inference_port"]) == ports["grpc"]
    for key in ("management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:")
    assert props["grpc_management_address"] == "127.0.0.1"
    store = next(m for m in c["volumeMounts"] if m["name"] == "model-store")["mountPath"]
    assert props["model_store"] == store
    assert props["enable_model_api"] == "false" and props["allowed_urls"] == "^$"
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[kind]["httpGet"] == {"path": "/ping", "port": "http"}
    # the Service exposes the inference ports only
    svc = r.get("Service", "-torchserve")
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {"http", "grpc"}


def test_container_config_properties_differ_only_where_intended(
    renders: dict[str, Rendered],
) -> None:
    repo = properties((MODEL_STORE / "config.properties").read_text())
    docker = properties((ROOT / "docker" / "config.properties").read_text())
    assert set(repo) == set(docker)
    changed = {k for k in repo if repo[k] != docker[k]}
    assert changed == CONTAINER_KEYS
    assert docker["disable_token_authorization"] == "true"
    # the chart's ConfigMap and the kustomize copy are the container version
    for name in WITH_TORCHSERVE:
        rendered = properties(
            renders[name].configmap_data("-torchserve-config")["config.properties"]
        )
        assert rendered == docker, name
    base = ROOT / "k8s" / "base" / "config" / "config.properties"
    assert base.read_bytes() == (ROOT / "docker" / "config.properties").read_bytes()


def _model_configs(r: Rendered) -> dict[str, dict[str, Any]]:
    data = r.configmap_data("-models")
    names = [m["name"] for m in yaml.safe_load(data["models.yaml"])["models"]]
    return {n: yaml.safe_load(data[f"{n}.yaml"]) for n in names}


def test_model_configs_match_model_store(renders: dict[str, Rendered]) -> None:
    store = {
        p.parent.name: yaml.safe_load(p.read_text())
        for p in MODEL_STORE.glob("*/model-config.yaml")
    }
    assert _model_configs(renders["helm-default"]) == store
    assert _model_configs(renders["kustomize-base"]) == store
    for name in store:
        copy = ROOT / "k8s" / "base" / "config" / f"{name}.yaml"
        assert copy.read_bytes() == (MODEL_STORE / name / "model-config.yaml").read_bytes()
    # the overlays are the chart's values-<flavour>.yaml, model by model
    for flavour in ("cpu", "gpu"):
        assert _model_configs(renders[f"kustomize-{flavour}"]) == _model_configs(
            renders[f"helm-{flavour}"]
        )


@pytest.mark.parametrize("name", ALL)
def test_model_configs_are_valid_archive_configs(
    renders: dict[str, Rendered], name: str, tmp_path: Path
) -> None:
    for model, config in _model_configs(renders[name]).items():
        path = tmp_path / f"{model}.yaml"
        path.write_text(yaml.safe_dump(config))
        validate_config(path)  # what sepvit-archive checks in the init container


@pytest.mark.parametrize("name", WITH_TORCHSERVE)
def test_archive_init_containers(renders: dict[str, Rendered], name: str) -> None:
    r = renders[name]
    spec = pod_spec(torchserve(r))
    inits = spec["initContainers"]
    models = yaml.safe_load(r.configmap_data("-models")["models.yaml"])["models"]
    assert len(inits) == len(models)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'sepvit-archive = "service.torchserve.archive:main"' in pyproject
    store = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "model-store")
    for init, model in zip(inits, models, strict=True):
        assert init["command"] == ["sepvit-archive"]
        args = dict(zip(init["args"][::2], init["args"][1::2], strict=False))
        assert args["--name"] == model["name"]
        ckpt = model["checkpoint"]
        assert args["--checkpoint"] == (ckpt if ckpt.startswith("/") else f"/opt/sepvit/{ckpt}")
        assert args["--export-path"] == store["mountPath"]
        assert args["--config"] == f"/etc/sepvit/{model['name']}.yaml"
        assert init["image"] == spec["containers"][0]["image"]
    # the image holds the checkpoints where the init containers look for them
    text = (ROOT / "docker" / "torchserve.Dockerfile").read_text()
    assert "COPY model_store/ /opt/sepvit/model_store/" in text


def test_own_checkpoints_come_from_volumes(renders: dict[str, Rendered]) -> None:
    """ci/own-checkpoints-values.yaml: an existing claim and an extra volume hold the model files;
    every container that reads a checkpoint mounts both read-only, and every checkpoint lies
    under a mount."""
    r = renders["helm-own-checkpoints"]
    models = yaml.safe_load(r.configmap_data("-models")["models.yaml"])["models"]
    for deployment in (gateway(r), torchserve(r)):
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        assert volumes["model-files"]["persistentVolumeClaim"] == {
            "claimName": "sepvit-checkpoints", "readOnly": True
        }  # fmt: skip
        assert (
            volumes["team-checkpoints"]["persistentVolumeClaim"]["claimName"] == "team-checkpoints"
        )
    readers = [gateway(r)["spec"]["template"]["spec"]["containers"][0]]
    readers += pod_spec(torchserve(r))["initContainers"]
    for c in readers:
        mounts = [m for m in c["volumeMounts"] if m["name"] in ("model-files", "team-checkpoints")]
        assert {m["mountPath"] for m in mounts} == {"/models", "/models/team"}
        assert all(m["readOnly"] for m in mounts)
        for model in models:
            assert any(model["checkpoint"].startswith(m["mountPath"] + "/") for m in mounts)
    # the serving container itself reads archives only
    ts = pod_spec(torchserve(r))["containers"][0]
    assert not {m["name"] for m in ts["volumeMounts"]} & {"model-files", "team-checkpoints"}


def test_runtime_cache_claim_outlives_pods(renders: dict[str, Rendered]) -> None:
    """runtimeCache.existingClaim (ci/own-checkpoints-values.yaml): the gateway and TorchServe
    containers mount it read-write and point SEPVIT_CACHE_DIR at it, so a new pod reuses `auto`'s
    decisions and exports; by default neither mounts one, and the images' cache lies in /tmp."""
    r = renders["helm-own-checkpoints"]
    for deployment in (gateway(r), torchserve(r)):
        spec = pod_spec(deployment)
        volumes = {v["name"]: v for v in spec["volumes"]}
        claim = volumes["runtime-cache"]["persistentVolumeClaim"]
        assert claim == {"claimName": "sepvit-runtime-cache"}
        c = spec["containers"][0]
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == "runtime-cache"]
        assert mount["mountPath"] == "/var/cache/sepvit" and not mount.get("readOnly")
        assert env_of(c)["SEPVIT_CACHE_DIR"] == "/var/cache/sepvit"
    default = renders["helm-default"]
    for deployment in (gateway(default), torchserve(default)):
        spec = pod_spec(deployment)
        assert "runtime-cache" not in {v["name"] for v in spec["volumes"]}
        assert "SEPVIT_CACHE_DIR" not in env_of(spec["containers"][0])
        assert "/tmp" in {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    for image in ("gateway", "torchserve"):
        text = (ROOT / "docker" / f"{image}.Dockerfile").read_text()
        assert "SEPVIT_CACHE_DIR=/tmp/sepvit-cache" in text, image


@pytest.mark.parametrize("name", ["helm-gpu", "kustomize-gpu"])
def test_gpu_flavour(renders: dict[str, Rendered], name: str) -> None:
    r = renders[name]
    spec = pod_spec(torchserve(r))
    c = spec["containers"][0]
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert all(x["image"].endswith("-gpu") for x in containers(torchserve(r)))
    for config in _model_configs(r).values():
        assert config["deviceType"] == "gpu" and config["handler"]["runtime"] == "tensorrt"
    # only TorchServe asks for GPUs
    assert "nvidia.com/gpu" not in pod_spec(gateway(r))["containers"][0]["resources"]["limits"]


@pytest.mark.parametrize("name", ["helm-default", "helm-cpu", "kustomize-base", "kustomize-cpu"])
def test_cpu_flavour_asks_for_no_gpu(renders: dict[str, Rendered], name: str) -> None:
    for obj in renders[name].of_kind("Deployment"):
        spec = pod_spec(obj)
        assert "nodeSelector" not in spec and "tolerations" not in spec
        for c in containers(obj):
            assert "nvidia.com/gpu" not in str(c["resources"])


@pytest.mark.parametrize("name", WITH_TORCHSERVE)
def test_network_policy_admits_only_the_gateway_to_inference(
    renders: dict[str, Rendered], name: str
) -> None:
    r = renders[name]
    policy = r.get("NetworkPolicy", "-torchserve")
    ts_labels = pod_spec(torchserve(r)) and torchserve(r)["spec"]["template"]["metadata"]["labels"]
    gw_labels = gateway(r)["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= ts_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # no namespaceSelector or ipBlock: the gateway only
    assert peer["podSelector"]["matchLabels"].items() <= gw_labels.items()
    # the gateway's selector does not also pick TorchServe pods
    assert not peer["podSelector"]["matchLabels"].items() <= ts_labels.items()
    assert {p["port"] for p in rule["ports"]} == {"http", "grpc"}
    props = properties(r.configmap_data("-torchserve-config")["config.properties"])
    mgmt = {props["management_address"].rsplit(":", 1)[1], props["grpc_management_port"]}
    exposed = {str(p["containerPort"]) for p in pod_spec(torchserve(r))["containers"][0]["ports"]}
    assert not mgmt & exposed


@pytest.mark.parametrize("name", ALL)
def test_scaling_objects_point_at_the_deployments(renders: dict[str, Rendered], name: str) -> None:
    r = renders[name]
    deployments = {d["metadata"]["name"] for d in r.of_kind("Deployment")}
    for hpa in r.of_kind("HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        for m in hpa["spec"]["metrics"]:
            if m["type"] == "Pods":
                assert m["pods"]["metric"]["name"] == "sepvit_in_flight_requests"
    for so in r.of_kind("ScaledObject"):
        assert so["spec"]["scaleTargetRef"]["name"] in deployments
        (trigger,) = so["spec"]["triggers"]
        assert "sepvit_in_flight_requests" in trigger["metadata"]["query"]
        # KEDA makes its own HPA: the chart's TorchServe HPA is then left out
        names = {h["spec"]["scaleTargetRef"]["name"] for h in r.of_kind("HorizontalPodAutoscaler")}
        assert so["spec"]["scaleTargetRef"]["name"] not in names
    for pdb in r.of_kind("PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert any(
            sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()
            for d in r.of_kind("Deployment")
        )


def test_metric_names_exist_in_the_gateway() -> None:
    text = (ROOT / "service" / "metrics.py").read_text()
    assert '"sepvit_in_flight_requests"' in text or "sepvit_in_flight_requests" in text


def test_service_monitor_and_auth(renders: dict[str, Rendered]) -> None:
    r = renders["helm-auth-keda"]
    (sm,) = r.of_kind("ServiceMonitor")
    svc = r.get("Service", "-gateway")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert ep["path"] == "/metrics"
    assert ep["authorization"]["credentials"]["name"] == "sepvit-tokens"
    c = pod_spec(gateway(r))["containers"][0]
    token_file = env_of(c)["SEPVIT_AUTH_TOKEN_FILE"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert Path(token_file).parent == Path(mounts["auth"])
    assert "httpGet" not in c["readinessProbe"]


@pytest.mark.parametrize("name", ["helm-default", "helm-auth-keda"])
def test_helm_test_hook_calls_the_gateway(renders: dict[str, Rendered], name: str) -> None:
    r = renders[name]
    (pod,) = r.of_kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = pod["spec"]["containers"][0]
    compile(c["command"][2], "helm-test", "exec")
    env = env_of(c)
    svc = r.get("Service", "-gateway")
    http = {p["name"]: p["port"] for p in svc["spec"]["ports"]}["http"]
    assert env["GATEWAY_URL"] == f"http://{svc['metadata']['name']}:{http}"
    models = yaml.safe_load(r.configmap_data("-models")["models.yaml"])["models"]
    assert env["MODELS"].split(",") == [m["name"] for m in models]


def test_compose_matches_the_gateway_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    gw = compose["services"]["gateway"]
    fields = set(Settings.model_fields)
    for var in gw["environment"]:
        assert var.removeprefix("SEPVIT_").lower() in fields, var
    assert gw["environment"]["SEPVIT_BACKEND"] == "torchserve"
    host, port = gw["environment"]["SEPVIT_TORCHSERVE_ADDRESS"].split(":")
    assert host in compose["services"]
    props = properties((ROOT / "docker" / "config.properties").read_text())
    assert port == props["grpc_inference_port"]
    assert port in compose["services"]["torchserve"]["expose"]
    # only the gateway is published, and only on loopback
    assert "ports" not in compose["services"]["torchserve"]
    assert all(p.startswith("127.0.0.1:") for p in gw["ports"])


def test_gateway_image_env_names_are_settings() -> None:
    text = (ROOT / "docker" / "gateway.Dockerfile").read_text()
    names = set(re.findall(r"^\s*(SEPVIT_[A-Z0-9_]+)=", text, flags=re.MULTILINE))
    assert names, "the gateway image sets its listen address by SEPVIT_* variables"
    runtime_src = (ROOT / "handlers" / "runtime.py").read_text()
    for n in names:
        if n in HANDLER_VARS:
            assert f'"{n}"' in runtime_src, n
            continue
        assert n.removeprefix("SEPVIT_").lower() in Settings.model_fields, n
