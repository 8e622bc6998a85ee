#!/usr/bin/env bash
# Issue 23: hecnn's Python package beside TenSEAL on the same MNIST network and images, in
# one run on this machine. The network is TenSEAL's encrypted-CNN tutorial model (one
# convolution: what TenSEAL's im2col encoding can run), trained by tutorial_train.py;
# hecnn compiles its ONNX file, TenSEAL runs the same weights (tenseal_cnn.py --weights).
# Per tool and thread count: compile / key time, latency per image, agreement with the
# plaintext network.
#
# Needs: a venv with torch (training/requirements.txt; $TORCH_PY, default .venv/bin/python),
# a venv with the hecnn wheel ($HECNN_PY, default python/.venv-ci/bin/python, which
# python/ci.sh makes), TenSEAL (setup.sh tenseal). COUNT (default 20), THREADS ("1 2").
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
peers_dir="${HECNN_PEERS_DIR:-$HOME/.cache/hecnn/peers}"
out_dir="${OUT:-$here/out}"
count="${COUNT:-20}"
threads="${THREADS:-1 2}"
torch_py="${TORCH_PY:-$repo_root/.venv/bin/python}"
hecnn_py="${HECNN_PY:-$repo_root/python/.venv-ci/bin/python}"
cd "$repo_root"
bash "$here/setup.sh" tenseal >&2
mkdir -p "$out_dir"
log="$out_dir/python-tools-$(date -u +%Y%m%dT%H%M%SZ).log"
{
    echo "# $(lscpu | grep 'Model name' | sed 's/ \+/ /g'); $(nproc) CPUs; build $(git rev-parse --short HEAD)"
    "$torch_py" "$here/tutorial_train.py" --out-dir "$out_dir" 2>&1
    images=data/sample/mnist-test-images.idx3-ubyte
    labels=data/sample/mnist-test-labels.idx1-ubyte
    for t in $threads; do
        "$hecnn_py" "$here/hecnn_python_cnn.py" --model "$out_dir/tutorial.onnx" \
            --images "$images" --labels "$labels" --count "$count" --threads "$t" 2>&1 >/dev/null
        "$peers_dir/tenseal/bin/python" "$here/tenseal_cnn.py" --images "$images" \
            --count "$count" --threads "$t" --weights "$out_dir/tutorial.npz" 2>&1 >/dev/null
    done
} | tee "$log"
echo "log: $log" >&2
