#!/usr/bin/env python3
"""Trains the networks of Gomez et al.'s protected-model evaluation and exports them as ONNX.

The architecture is Keras' `cifar10_cnn` example, as in the paper:
  Conv 3×3 same (32) → ReLU → Conv 3×3 valid (32) → ReLU → MaxPool 2 → Dropout →
  Conv 3×3 same (64) → ReLU → Conv 3×3 valid (64) → ReLU → MaxPool 2 → Dropout →
  Flatten → Dense 512 → <activation> → Dropout → Dense 10
The convolutional part is the *feature extractor*; it runs in cleartext on the edge node (its
own data), so it keeps ReLU and max pooling. The *classifier* (Dense 512 → activation →
Dense 10) is what `hecnn protect` encrypts. Three classifier variants, one per row of the
paper's tables:
  relu    Dense 512 → ReLU → Dense 10: only the last dense layer is encrypted
  linear  Dense 512 → Dense 10: the whole classifier is encrypted, no activation
  poly    Dense 512 → x²+2x → Dense 10: the whole classifier is encrypted, with the
          polynomial activation of the paper (exported as x·(x+2))

Training: the whole `relu` network end to end (AdamW, one-cycle, random shifts, and
horizontal flips for CIFAR-10); then, with that feature extractor frozen, the `linear` and
`poly` classifiers on the extracted features. All three share the feature extractor, as a
model owner who offers the variants would.

Data as in train.py (run scripts/fetch-data.sh first; CIFAR-10 also needs
`hecnn data export`). Writes models/protect-<dataset>-<variant>.onnx.

Usage:  python training/train_protected.py mnist|cifar10 [--epochs 10] [--head-epochs 20]
"""
import argparse
import os
import random
import sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import evaluate, fit, load_cifar10, load_mnist  # noqa: E402


class XSquarePlus2X(nn.Module):
    """x² + 2x, written x·(x + 2) so that ONNX carries it as one polynomial."""

    def forward(self, x):
        return x * (x + 2.0)


def features(channels):
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(),
    )


def classifier(width, variant):
    act = {"relu": [nn.ReLU()], "linear": [], "poly": [XSquarePlus2X()]}[variant]
    return nn.Sequential(nn.Linear(width, 512), *act, nn.Dropout(0.5), nn.Linear(512, 10))


def extract(feat, x, device, batch=500):
    feat.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(feat(torch.from_numpy(x[i:i + batch]).to(device)).cpu().numpy())
    return np.concatenate(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=["mnist", "cifar10"])
    ap.add_argument("--epochs", type=int, default=10, help="epochs of the whole relu network")
    ap.add_argument("--head-epochs", type=int, default=20, help="epochs of each frozen-feature classifier")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all)")
    ap.add_argument("--out-dir", default="models")
    args = ap.parse_args()

    random.seed(args.seed); np.random.seed(args.seed); torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dataset == "mnist":
        (xtr, ytr), (xte, yte) = load_mnist()
        augment = (2, False)
    else:
        (xtr, ytr), (xte, yte) = load_cifar10()
        augment = (4, True)
    channels, side = xtr.shape[1], xtr.shape[2]
    feat = features(channels)
    width = feat(torch.zeros(1, channels, side, side)).shape[1]
    print(f"{args.dataset}: {len(xtr)} training / {len(xte)} test images, {width} features, device {device}",
          flush=True)

    relu = nn.Sequential(feat, classifier(width, "relu")).to(device)
    fit(relu, xtr, ytr, xte, yte, args.epochs, args.lr, args.batch, augment, device, "relu")

    for p in feat.parameters():
        p.requires_grad_(False)
    ftr, fte = extract(feat, xtr, device), extract(feat, xte, device)
    models = {"relu": relu}
    for variant in ("linear", "poly"):
        head = classifier(width, variant).to(device)
        # The polynomial head trains at a lower rate: x²+2x grows fast away from its
        # minimum at -1, and the first steps can otherwise diverge.
        lr = args.lr if variant == "linear" else args.lr / 4
        fit(head, ftr, ytr, fte, yte, args.head_epochs, lr, 256, None, device, variant)
        models[variant] = nn.Sequential(feat, head)

    dummy = torch.zeros(1, channels, side, side)
    for variant, model in models.items():
        model.eval().cpu()
        acc = evaluate(model, xte, yte, "cpu")
        out = os.path.join(args.out_dir, f"protect-{args.dataset}-{variant}.onnx")
        torch.onnx.export(model, dummy, out, opset_version=13, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
        print(f"{variant}: final test accuracy {acc:.4f} ({int(round(acc * len(xte)))}/{len(xte)}); wrote {out}",
              flush=True)


if __name__ == "__main__":
    main()
