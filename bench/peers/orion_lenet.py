"""Orion's LeNet-5 (`orion.models.LeNet`, Lattigo backend) on MNIST, one encrypted image at
a time, and the same network with the same weights exported to ONNX for hecnn.

The network (conv 1->32 5x5/2 pad 2, BN, x^2, conv 32->64 5x5/2 pad 2, BN, x^2, dense
3136->512, BN, x^2, dense 512->10) is trained briefly on the MNIST training split (pixels
/ 255, as hecnn reads them), so both tools classify real digits with real weights. Orion
runs with the CKKS parameters of its own `configs/lenet.yaml` (log N 14, log Q
45+7x35, log P 45+45, scale 2^35, conjugate-invariant ring; orion-fhe 1.0.2's own
secret distribution, Hamming weight 192).

Needs the orion venv with its declared dependencies (`ORION_FULL_DEPS=1 setup.sh orion`:
torch, torchvision, scipy <= 1.14.1, ...) and `onnx` for the export.

Usage (images and labels in IDX, e.g. from `hecnn data export --dataset mnist --split ...`):
  orion_lenet.py --train-images F --train-labels F --test-images F --test-labels F \
      --count 30 --threads 1 --onnx lenet.onnx

Prints one JSON line: per-image encrypt / evaluate / decrypt medians (ms), agreement
with the cleartext network, accuracy, peak memory. Threads: GOMAXPROCS, set by
re-executing this script before the Go library loads (peerlib.reexec_with_env).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
import tempfile
import time

import peerlib

_REEXEC_MARK = "HECNN_ORION_LENET_REEXEC"

CONFIG = """\
ckks_params:
  LogN: 14
  LogQ: [45, 35, 35, 35, 35, 35, 35, 35]
  LogP: [45, 45]
  LogScale: 35
  RingType: ConjugateInvariant
orion:
  margin: 2
  embedding_method: hybrid
  backend: lattigo
  fuse_modules: true
  debug: false
  io_mode: none
  diags_path: ""
  keys_path: ""
"""

def read_idx(path: str, magic_want: int):
    import numpy as np

    with open(path, "rb") as f:
        head = f.read(4)
        (magic,) = struct.unpack(">I", head)
        if magic != magic_want:
            sys.exit(f"{path}: not an IDX file of the expected kind (magic {magic:#x})")
        dims = struct.unpack(">" + "I" * (magic & 0xFF), f.read(4 * (magic & 0xFF)))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(dims)):
        sys.exit(f"{path}: {data.size} bytes for dimensions {dims}")
    return data.reshape(dims)


def load(images: str, labels: str):
    import torch

    x = read_idx(images, 0x00000803).astype("float32") / 255.0
    y = read_idx(labels, 0x00000801).astype("int64")
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


def plain_lenet():
    """The same layers as orion.models.LeNet in plain PyTorch (same parameter names)."""
    import torch
    from torch import nn

    class Square(nn.Module):
        def forward(self, x):
            return x * x

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, kernel_size=5, padding=2, stride=2)
            self.bn1 = nn.BatchNorm2d(32)
            self.act1 = Square()
            self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2, stride=2)
            self.bn2 = nn.BatchNorm2d(64)
            self.act2 = Square()
            self.flatten = nn.Flatten()
            self.fc1 = nn.Linear(7 * 7 * 64, 512)
            self.bn3 = nn.BatchNorm1d(512)
            self.act3 = Square()
            self.fc2 = nn.Linear(512, 10)

        def forward(self, x):
            x = self.act1(self.bn1(self.conv1(x)))
            x = self.act2(self.bn2(self.conv2(x)))
            x = self.flatten(x)
            x = self.act3(self.bn3(self.fc1(x)))
            return self.fc2(x)

    torch.manual_seed(0)
    return LeNet()


def train(net, x, y, epochs: int):
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
    net.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("train-images", "train-labels", "test-images", "test-labels"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--count", type=int, default=30, help="test images to classify")
    p.add_argument("--threads", type=int, default=1, help="GOMAXPROCS (default 1)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs (default 1)")
    p.add_argument("--onnx", required=True, help="where to write the network for hecnn")
    args = p.parse_args()
    if args.count < 1 or args.threads < 1 or args.epochs < 0:
        sys.exit("--count and --threads must be >= 1, --epochs >= 0")
    peerlib.reexec_with_env(__file__, {"GOMAXPROCS": str(args.threads)}, _REEXEC_MARK)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    torch.set_num_threads(args.threads)
    import orion
    import orion.models

    xtr, ytr = load(args.train_images, args.train_labels)
    xte, yte = load(args.test_images, args.test_labels)
    xte, yte = xte[: args.count], yte[: args.count]

    plain = plain_lenet()
    t = time.time()
    train(plain, xtr, ytr, args.epochs)
    train_s = time.time() - t
    torch.onnx.export(
        plain, xte[:1], args.onnx, input_names=["input"], output_names=["logits"],
        opset_version=17, dynamo=False,
    )

    net = orion.models.LeNet()
    missing = net.load_state_dict(plain.state_dict(), strict=True)
    if missing.missing_keys or missing.unexpected_keys:
        sys.exit(f"state dicts differ: {missing}")
    net.eval()
    with torch.no_grad():
        clear = net(xte)
        clear_plain = plain(xte)
    if (clear - clear_plain).abs().max().item() > 1e-3:
        sys.exit("orion's LeNet and the exported one disagree in the clear")

    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write(CONFIG)
        config = f.name
    scheme_t = time.time()
    orion.init_scheme(config)
    orion.fit(net, xtr[:512], batch_size=128)
    input_level = orion.compile(net)
    setup_s = time.time() - scheme_t

    enc, run, dec, agree, correct = [], [], [], 0, 0
    for i in range(len(xte)):
        net.eval()
        t = time.time()
        ct = orion.encrypt(orion.encode(xte[i : i + 1], input_level))
        enc.append(time.time() - t)
        net.he()
        t = time.time()
        out = net(ct)
        run.append(time.time() - t)
        t = time.time()
        got = out.decrypt().decode().flatten()[:10]
        dec.append(time.time() - t)
        pred = int(got.argmax())
        agree += int(pred == int(clear[i].argmax()))
        correct += int(pred == int(yte[i]))
        print(f"image {i}: {pred} (clear {int(clear[i].argmax())}), {run[-1]:.2f} s",
              file=sys.stderr, flush=True)

    med = lambda v: round(statistics.median(v) * 1e3, 1)  # noqa: E731
    print(json.dumps({
        "library": "orion-fhe", "network": "LeNet-5 (orion.models.LeNet)",
        "threads": args.threads, "images": len(xte),
        "encrypt_ms": med(enc), "evaluate_ms": med(run), "decrypt_ms": med(dec),
        "end_to_end_ms": med([a + b + c for a, b, c in zip(enc, run, dec)]),
        "same_prediction": agree, "correct": correct,
        "cleartext_correct": int((clear.argmax(1) == yte).sum()),
        "train_s": round(train_s, 1), "setup_s": round(setup_s, 1),
        "peak_rss_mib": peerlib.peak_rss_mib(),
    }), flush=True)


if __name__ == "__main__":
    main()
