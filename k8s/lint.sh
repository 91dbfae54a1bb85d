#!/usr/bin/env bash
# `make lint-deploy`: static checks of everything that deploys (no Docker engine or cluster).
#   hadolint       every Dockerfile in docker/
#   yamllint       compose file, kustomize tree, chart values (.yamllint.yaml)
#   helm lint      --strict, with the default, cpu, gpu and ci/ values
#   helm template  the same values sets, each validated by kubernetes-validate --strict
#   kustomize      base and overlays (kubectl kustomize), each validated the same way
# Manifests are validated against Kubernetes 1.30 (the chart's kubeVersion floor) and 1.37.
# Rendered manifests are kept in .cache/deploy-render/ for tests/deploy and for reading.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TOOLS=$(bash k8s/tools.sh)
HELM=$TOOLS/helm
KUBECTL=$TOOLS/kubectl
CHART=k8s/helm/sepvit-serving
OUT=.cache/deploy-render
export HELM_CACHE_HOME=$PWD/.cache/helm/cache HELM_CONFIG_HOME=$PWD/.cache/helm/config \
    HELM_DATA_HOME=$PWD/.cache/helm/data
rm -rf "$OUT" && mkdir -p "$OUT"

echo "hadolint:" docker/*Dockerfile
"$VENV/bin/hadolint" docker/*Dockerfile

echo "yamllint"
"$VENV/bin/yamllint" --strict .yamllint.yaml docker/compose.yaml k8s

validate() {
    "$VENV/bin/kubernetes-validate" --strict --quiet -k 1.30.0 -k 1.37.0 "$1"
}

declare -A VALUES=([default]="" [cpu]="-f $CHART/values-cpu.yaml" [gpu]="-f $CHART/values-gpu.yaml")
for f in "$CHART"/ci/*-values.yaml; do
    name=$(basename "$f" -values.yaml)
    VALUES[$name]="-f $f"
done
for name in $(printf '%s\n' "${!VALUES[@]}" | sort); do
    # shellcheck disable=SC2086  # the values flags are meant to split
    "$HELM" lint --strict --quiet $CHART ${VALUES[$name]}
    # shellcheck disable=SC2086
    "$HELM" template sepvit "$CHART" --namespace sepvit ${VALUES[$name]} >"$OUT/helm-$name.yaml"
    echo "helm $name: lint ok, $(grep -c '^kind:' "$OUT/helm-$name.yaml") objects"
    validate "$OUT/helm-$name.yaml"
done

for dir in k8s/base k8s/overlays/*/; do
    name=kustomize-$(basename "$dir")
    "$KUBECTL" kustomize "$dir" >"$OUT/$name.yaml"
    echo "$name: $(grep -c '^kind:' "$OUT/$name.yaml") objects"
    validate "$OUT/$name.yaml"
done
echo "lint-deploy: ok"
