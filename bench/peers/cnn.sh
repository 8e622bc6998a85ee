#!/usr/bin/env bash
# Single-image MNIST CNN latency, side by side in one run: hecnn's single-image mode on
# HCNN's MNIST network and TenSEAL's encrypted-CNN tutorial network (tenseal_cnn.py),
# on the same test images, at 1 and 2 threads.
#
# Output: ${OUT:-bench/peers/out}/cnn-<UTC timestamp>.log (both tools' summaries and
# TenSEAL's JSON lines).
#
# Environment (all optional):
#   COUNT    images per run (default 30)
#   THREADS  thread counts (default "1 2")
#   HECNN    the hecnn binary (default: target/release/hecnn, built if missing)
#   HECNN_PEERS_DIR, OUT  as for run.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
peers_dir="${HECNN_PEERS_DIR:-$HOME/.cache/hecnn/peers}"
out_dir="${OUT:-$here/out}"
count="${COUNT:-30}"
threads="${THREADS:-1 2}"
hecnn="${HECNN:-$repo_root/target/release/hecnn}"

cd "$repo_root"
bash "$here/setup.sh" tenseal >&2
bash scripts/fetch-data.sh mnist >&2
if [[ ! -x "$hecnn" ]]; then
    cargo build --release -p hecnn >&2
fi
mkdir -p "$out_dir"
log="$out_dir/cnn-$(date -u +%Y%m%dT%H%M%SZ).log"
idx="$(mktemp -d)"
trap 'rm -rf "$idx"' EXIT
"$hecnn" data export --dataset mnist --split test --out "$idx" >&2
images="$(find "$idx" -name '*images*' | head -n 1)"

{
    echo "# $(date -u +%FT%TZ), $(nproc) cores, $count MNIST test images per run"
    for t in $threads; do
        echo "## hecnn eval --mode single, $t thread(s), HCNN's MNIST network"
        "$hecnn" eval models/hcnn-mnist.onnx --mode single --data mnist --count "$count" \
            --threads "$t" 2>&1
        echo "## TenSEAL, $t thread(s), the tutorial CNN"
        "$peers_dir/tenseal/bin/python" "$here/tenseal_cnn.py" --images "$images" \
            --count "$count" --threads "$t" 2>&1
    done
} | tee "$log"
echo "written: $log" >&2
